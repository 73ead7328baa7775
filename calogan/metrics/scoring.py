"""Score generated showers as the competition did (docs/scoring.md), with the 2019 embedding bug fixed.

score = min(AUC_img, AUC_phys): PRD-AUC of the generated against the true images over 64-d embeddings
(calogan.metrics.embedder) and over the 24 physical statistics (calogan.ecal.physics). Unlike the 2019 scoring program,
which embedded the *true* images twice (so AUC_img was always ~1), the generated images are embedded here.
Every score comes with F_8/F_1/8, the spread over the R clusterings and a real-vs-real ceiling; the stricter
metrics of calogan.metrics.two_sample are added by name (``EvalSettings.metrics``).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.runtime import keep_freed_memory, select_device
from calogan.ecal.data import CaloData, load_npz
from calogan.ecal.physics import physical_statistics, standardise_statistics
from calogan.metrics.embedder import load_or_train_embedder
from calogan.metrics.inputs import read_predictions, resolve_predictions, solution_sizes
from calogan.metrics.prd import PRDResult, compute_prd


@dataclass(frozen=True)
class EvalSettings:
    """How to score: PRD clusters K and runs R, seed, subsample, extra metrics, ceiling, FPD convention, device."""

    clusters: int = 100
    runs: int = 100
    seed: int = 1337
    sample_size: int | None = None  # score a random subset of this many events (None: all)
    metrics: tuple[str, ...] = ("prd",)  # "prd" plus names of calogan.metrics.two_sample.EXTRA_METRICS
    ceiling: bool = True  # the real-vs-real ceiling: half of the true set against the other half
    standardised: bool = True  # also score the rank-scaled statistics
    fpd_convention: str = "calogan"  # FPD/KPD convention, "calogan" or "jetnet" (calogan.metrics.distances)
    device: torch.device | str | None = None  # None: CPU for arrays, "auto" for evaluate_predictions

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))  # a list given is kept immutable


@dataclass
class ScoreResult:
    """One split's score: the JSON-safe ``summary`` and the arrays behind it (for plots and reports)."""

    summary: dict[str, Any]
    gen_images: np.ndarray
    true: CaloData
    stats_gen: np.ndarray
    stats_true: np.ndarray
    prd_phys: PRDResult
    prd_img: PRDResult | None = None
    prd_phys_standardised: PRDResult | None = None


# ---------------------------------------------------------------- PRD summaries


def _prd(eval_f: np.ndarray, ref_f: np.ndarray, clusters: int, runs: int, seed: int, device):
    return compute_prd(eval_f, ref_f, num_clusters=clusters, num_runs=runs, seed=seed, device=device)


def _pair_summary(img, phys) -> dict:
    """score, both AUCs, F-scores and spreads from the two PRD results of one comparison."""
    per_run = np.minimum(np.asarray(img.aucs), np.asarray(phys.aucs))
    return {
        "score": float(min(img.auc, phys.auc)),
        "auc_img": float(img.auc),
        "auc_phys": float(phys.auc),
        "f8_img": float(img.f8),
        "f1_8_img": float(img.f1_8),
        "f8_phys": float(phys.f8),
        "f1_8_phys": float(phys.f1_8),
        "auc_img_std": float(img.auc_std),
        "auc_phys_std": float(phys.auc_std),
        "score_std": float(per_run.std()),
        "score_sem": float(per_run.std() / np.sqrt(max(len(per_run), 1))),
    }


def _physics_only(summary: dict) -> dict:
    """A pair summary scored without embeddings: no image metric, the spread is AUC_phys's."""
    return {
        **summary,
        "auc_img": None, "f8_img": None, "f1_8_img": None, "auc_img_std": None,
        "score_std": summary["auc_phys_std"],
    }  # fmt: skip


def real_vs_real(
    stats_a: np.ndarray,
    stats_b: np.ndarray,
    emb_a: np.ndarray | None,
    emb_b: np.ndarray | None,
    clusters: int = 100,
    runs: int = 100,
    seed: int = 1337,
    device: torch.device | str | None = None,
) -> dict:
    """The score of one true sample against another (the ceiling): statistics and embeddings of each.

    Same keys as a score; auc_img is None (and the score is AUC_phys) when no embeddings are given.
    """
    options.check_clusters(clusters, len(stats_a) + len(stats_b))
    dev = torch.device(device) if device is not None else torch.device("cpu")
    phys = _prd(stats_a, stats_b, clusters, runs, seed, dev)
    img = _prd(emb_a, emb_b, clusters, runs, seed, dev) if emb_a is not None else phys
    out = _pair_summary(img, phys)
    return out if emb_a is not None else _physics_only(out)


# ---------------------------------------------------------------- scoring arrays


def score_images(
    gen_images: np.ndarray, true: CaloData, embedder=None, settings: EvalSettings | None = None
) -> ScoreResult:
    """Score (N,30,30) generated images against ``true`` (same conditions, same order).

    ``summary`` keys: score = min(auc_img, auc_phys), auc_img, auc_phys, f8_/f1_8_ for each, score_std (std
    over the R runs of the per-run min of the two AUCs), ceiling (the same score of one random half of the true
    set against the other half, N/2 vs N/2) with its parts under ``ceiling_detail``, ``standardised`` (the
    score with each statistic rank-scaled on the true sample) and one key per extra metric. ``embedder=None``
    scores AUC_phys only. ``settings.sample_size`` is not applied here (see :func:`evaluate_predictions`).
    """
    s = settings or EvalSettings()
    keep_freed_memory()
    if true.energy is None:
        raise InputError(f"{true.path}: solution has no EnergyDeposit to compare with")
    gen = np.asarray(gen_images, dtype=np.float32).reshape(-1, 30, 30)
    if len(gen) != len(true):
        raise InputError(f"{true.path}: {len(gen)} generated images but {len(true)} true events")
    options.check_clusters(s.clusters, len(gen))  # before any statistics, embedding or clustering
    options.check_int("--runs", s.runs, 1)
    dev = torch.device(s.device) if s.device is not None else torch.device("cpu")
    clusters, runs, seed = s.clusters, s.runs, s.seed
    stats_gen = physical_statistics(gen, true.point, true.momentum)
    stats_true = physical_statistics(true.energy, true.point, true.momentum)
    phys = _prd(stats_gen, stats_true, clusters, runs, seed, dev)
    if embedder is not None:
        emb_gen = embedder.embed(
            gen, device=dev
        )  # the generated images (the 2019 program used the true ones)
        emb_true = embedder.embed(true.energy, device=dev)
        img = _prd(emb_gen, emb_true, clusters, runs, seed, dev)
    else:
        emb_gen = emb_true = None
        img = phys
    out = _pair_summary(img, phys)
    if embedder is None:  # physics-only scoring: no image metric to report
        out = _physics_only(out)
    out.update({"n": len(gen), "clusters": clusters, "runs": runs, "seed": seed})
    result = ScoreResult(out, gen, true, stats_gen, stats_true, phys, img if embedder is not None else None)

    if s.standardised:
        s_phys = _prd(
            standardise_statistics(stats_gen, stats_true),
            standardise_statistics(stats_true, stats_true),
            clusters,
            runs,
            seed,
            dev,
        )
        out["standardised"] = {
            "score": float(min(img.auc, s_phys.auc)) if embedder is not None else float(s_phys.auc),
            "auc_phys": float(s_phys.auc),
            "auc_phys_std": float(s_phys.auc_std),
            "f8_phys": float(s_phys.f8),
            "f1_8_phys": float(s_phys.f1_8),
        }
        result.prd_phys_standardised = s_phys
    if s.ceiling:
        half = len(gen) // 2
        perm = np.random.default_rng(seed).permutation(len(gen))
        a, b = perm[:half], perm[half : 2 * half]
        c = real_vs_real(
            stats_true[a],
            stats_true[b],
            None if emb_true is None else emb_true[a],
            None if emb_true is None else emb_true[b],
            clusters,
            runs,
            seed,
            dev,
        )
        out["ceiling"] = c["score"]
        out["ceiling_detail"] = {
            "method": f"true half vs disjoint true half, {half} vs {half} events (random split, seed {seed})",
            **{k: c[k] for k in ("auc_img", "auc_phys", "score_std")},
        }
    extra = [m for m in s.metrics if m != "prd"]
    if extra:
        registry = extra_metrics_registry()
        xm = extra_metrics_module()  # the high-level features, once for every metric that reads them
        uses = getattr(xm, "USES_HIGH_LEVEL", frozenset()) & set(extra)
        shared = xm.high_level_pair(gen, true, stats_gen, stats_true) if uses else None
        for name in extra:
            out[name] = registry[name](
                gen_images=gen,
                true_images=true.energy,
                true=true,
                stats_gen=stats_gen,
                stats_true=stats_true,
                emb_gen=emb_gen,
                emb_true=emb_true,
                seed=seed,
                device=dev,
                convention=s.fpd_convention,
                hl=shared,
            )
    return result


def score_arrays(
    gen_images: np.ndarray,
    true: CaloData,
    embedder=None,
    clusters: int = 100,
    runs: int = 100,
    seed: int = 1337,
    ceiling: bool = True,
    standardised: bool = True,
    device: torch.device | str | None = None,
    metrics: Sequence[str] = ("prd",),
) -> dict:
    """The JSON-safe summary of :func:`score_images` with the settings given one by one (a dict, always)."""
    settings = EvalSettings(clusters, runs, seed, None, tuple(metrics), ceiling, standardised, device=device)
    return score_images(gen_images, true, embedder, settings).summary


def headline_scores(images: np.ndarray, data: CaloData, embedder, clusters: int, runs: int, device) -> dict:
    """Score, its two AUCs, spread and ceiling of images against data (seed 1337), as plain floats for JSON."""
    res = score_arrays(images, data, embedder=embedder, clusters=clusters, runs=runs, seed=1337, ceiling=True,
                       device=device)  # fmt: skip
    keep = ("score", "auc_img", "auc_phys", "score_std", "ceiling")
    return {k: (None if res.get(k) is None else float(res[k])) for k in keep if k in res}


# ---------------------------------------------------------------- stricter metrics (docs/metrics.md)


def extra_metrics_module():
    """calogan.metrics.two_sample, or None where it is not shipped (the Codalab scoring bundle)."""
    try:
        return importlib.import_module("calogan.metrics.two_sample")
    except ModuleNotFoundError as exc:
        if exc.name == "calogan.metrics.two_sample":
            return None
        raise


def extra_metrics_registry() -> dict:
    """calogan.metrics.two_sample.EXTRA_METRICS, or {} when that module is absent."""
    mod = extra_metrics_module()
    return dict(getattr(mod, "EXTRA_METRICS", {})) if mod is not None else {}


def parse_metrics(spec: str) -> list[str]:
    """'prd,name,...' or 'all' → validated list, always starting with 'prd'; unknown names → InputError."""
    valid = ["prd", *extra_metrics_registry()]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if "all" in names:
        return valid
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise InputError(
            f"--metrics: unknown metric(s) {', '.join(unknown)} (valid: {', '.join(valid)}, all)"
        )
    return ["prd", *[n for n in dict.fromkeys(names) if n != "prd"]]


# ---------------------------------------------------------------- scoring prediction files


def evaluate_predictions(
    pred: str | Path,
    solution_dir: str | Path = "data",
    split: str = "both",
    settings: EvalSettings | None = None,
    embedder=None,
    embedder_path: str | Path | None = None,
    allow_embedder_mismatch: bool = False,
    progress: bool = True,
    embedder_loader=None,
) -> dict[str, ScoreResult]:
    """Score a submission zip, a folder with data_{val,test}_prediction.npz, or one prediction npz.

    Returns {split: ScoreResult}. The embedder is ``embedder``, else ``embedder_loader()`` (called once the
    inputs and options are checked), else loaded from ``embedder_path`` (default
    SOLUTION_DIR/embedder.safetensors, trained and cached there if absent). ``settings.device`` None picks
    the best available device.
    """
    s = settings or EvalSettings()
    pred = Path(pred)
    if not pred.exists():
        raise InputError(f"{pred}: prediction not found")
    splits, _ = resolve_predictions(pred, split)
    solution_dir = Path(solution_dir)
    # N from the solutions' headers: the upload is checked and read before the solutions take memory
    solutions = solution_sizes(solution_dir, splits)
    n_events = {sp: n for sp, (_, n) in solutions.items()}
    for sp in splits:  # the cluster count fits the events scored: checked before any embedding or scoring
        options.check_clusters(s.clusters, min(n_events[sp], s.sample_size or n_events[sp]))
    options.check_int("--runs", s.runs, 1)
    dev = select_device("auto") if s.device is None else torch.device(s.device)
    s = dataclasses.replace(s, device=dev)
    images = read_predictions(pred, n_events)
    truths = {sp: load_npz(p, require_energy=True) for sp, (p, _) in solutions.items()}
    if embedder is None and embedder_loader is not None:
        embedder = embedder_loader()
    if embedder is None:
        embedder = load_or_train_embedder(
            solution_dir, embedder_path, allow_mismatch=allow_embedder_mismatch, device=dev, progress=progress
        )
    results: dict[str, ScoreResult] = {}
    for sp in splits:
        true, gen = truths[sp], images[sp]
        if s.sample_size is not None and s.sample_size < len(true):
            idx = np.sort(np.random.default_rng(s.seed).choice(len(true), s.sample_size, replace=False))
            true, gen = true.subset(idx), gen[idx]
        results[sp] = score_images(gen, true, embedder, s)
    return results
