"""Score generated showers as the competition did (docs/scoring.md), with the 2019 embedding bug fixed.

score = min(AUC_img, AUC_phys): PRD-AUC of the generated against the true images over 64-d embeddings
(calogan.metrics.embedder) and over the 24 physical statistics (calogan.ecal.physics). Unlike the 2019 scoring program,
which embedded the *true* images twice (so AUC_img was always ~1), the generated images are embedded here.
Every score comes with F_8/F_1/8, the spread over the R clusterings and a real-vs-real ceiling.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.runtime import atomic_write_json, keep_freed_memory, scratch_dir, select_device
from calogan.core.safezip import check_npz, extract_upload
from calogan.ecal.data import (
    KEY_PDG,
    PREDICTION_MANIFEST,
    CaloData,
    check_prediction_manifest,
    load_npz,
    load_prediction,
    npz_shape,
    prediction_bytes_limit,
    split_path,
)
from calogan.ecal.physics import physical_statistics, standardise_statistics
from calogan.metrics.embedder import load_or_train_embedder
from calogan.metrics.prd import compute_prd

SPLITS = ("val", "test")
PREDICTION_NAMES = {s: f"data_{s}_prediction.npz" for s in SPLITS}


# ---------------------------------------------------------------- scoring arrays


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
    return_details: bool = False,
):
    """Score (N,30,30) generated images against ``true`` (same conditions, same order); returns a dict.

    Keys: score = min(auc_img, auc_phys), auc_img, auc_phys, f8_/f1_8_ for each, score_std (std over the R
    runs of the per-run min of the two AUCs), ceiling (the same score of one random half of the true set
    against the other half, N/2 vs N/2) with its parts under ``ceiling_detail``, and ``standardised`` (the
    score with each statistic rank-scaled on the true sample). ``embedder=None`` scores AUC_phys only.
    """
    keep_freed_memory()
    if true.energy is None:
        raise InputError(f"{true.path}: solution has no EnergyDeposit to compare with")
    gen = np.asarray(gen_images, dtype=np.float32).reshape(-1, 30, 30)
    if len(gen) != len(true):
        raise InputError(f"{true.path}: {len(gen)} generated images but {len(true)} true events")
    options.check_clusters(clusters, len(gen))  # before any statistics, embedding or clustering
    options.check_int("--runs", runs, 1)
    dev = torch.device(device) if device is not None else torch.device("cpu")
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
    details = {"prd_img": img if embedder is not None else None, "prd_phys": phys}
    details.update(stats_gen=stats_gen, stats_true=stats_true, gen_images=gen, true=true)

    if standardised:
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
        details["prd_phys_standardised"] = s_phys
    if ceiling:
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
    extra = [m for m in metrics if m != "prd"]
    if extra:
        registry = extra_metrics_registry()
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
            )
    return (out, details) if return_details else out


# ---------------------------------------------------------------- stricter metrics (docs/metrics.md)


def _extra_module():
    """calogan.metrics.two_sample, or None where it is not shipped (the Codalab scoring bundle)."""
    try:
        return importlib.import_module("calogan.metrics.two_sample")
    except ModuleNotFoundError as exc:
        if exc.name == "calogan.metrics.two_sample":
            return None
        raise


def extra_metrics_registry() -> dict:
    """calogan.metrics.two_sample.EXTRA_METRICS, or {} when that module is absent."""
    mod = _extra_module()
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


# ---------------------------------------------------------------- reading predictions


def read_upload_zip(
    zpath: Path, splits: Sequence[str], dest: Path, n_events: dict[str, int | None] | None = None
) -> dict[str, Path]:
    """Check a submission zip as an untrusted upload and stream the wanted prediction files into ``dest``.

    The zip must hold exactly the two prediction files at its root (calogan.core.safezip.check_upload: no
    duplicates, paths, links or zip bombs); each may declare and yield at most
    ``prediction_bytes_limit(N)`` bytes, N from ``n_events`` (1 GiB where unknown). Returns {split: path}.
    """
    n_events = n_events or {}
    limits = {PREDICTION_NAMES[s]: prediction_bytes_limit(n_events.get(s)) for s in SPLITS}
    files = extract_upload(
        zpath, [PREDICTION_NAMES[s] for s in splits], dest, PREDICTION_NAMES.values(), limits
    )
    return {s: files[PREDICTION_NAMES[s]] for s in splits}


def check_prediction_file(path: Path, n: int | None, shown: str) -> None:
    """An uploaded prediction npz is a zip too: its members get the upload's size and ratio limits and their
    npy headers are checked before numpy allocates (calogan.core.safezip.check_npz).

    Files that are no zip at all are left to the npz reader, which names the problem.
    """
    limit = prediction_bytes_limit(n)
    check_npz(path, limit, limit, label=shown)


def _load_pred(path: Path, n: int, shown: str) -> np.ndarray:
    """load_prediction with errors naming ``shown`` (e.g. zip:member) instead of a temp path."""
    check_prediction_file(path, n, shown)
    try:
        return load_prediction(path, n_expected=n)
    except InputError as exc:
        raise InputError(str(exc).replace(str(path), shown)) from None


def resolve_predictions(pred: str | Path, split: str) -> tuple[list[str], Path | None]:
    """Which splits to score for ``pred`` and, for a single npz, its split name."""
    pred = Path(pred)
    if split not in ("val", "test", "both"):
        raise InputError(f"--split: must be val, test or both, not {split!r}")
    splits = list(SPLITS) if split == "both" else [split]
    if pred.is_file() and pred.suffix == ".npz":
        guess = next((s for s, n in PREDICTION_NAMES.items() if pred.name == n), None)
        if split == "both":
            if guess is None:
                raise InputError(f"{pred}: a single prediction file needs --split val or test")
            splits = [guess]
    return splits, pred


def evaluate_predictions(
    pred: str | Path,
    solution_dir: str | Path = "data",
    split: str = "both",
    embedder=None,
    embedder_path: str | Path | None = None,
    allow_embedder_mismatch: bool = False,
    clusters: int = 100,
    runs: int = 100,
    seed: int = 1337,
    sample_size: int | None = None,
    device: torch.device | str | None = None,
    metrics: Sequence[str] = ("prd",),
    ceiling: bool = True,
    standardised: bool = True,
    plots_dir: str | Path | None = None,
    progress: bool = True,
    embedder_loader=None,
) -> dict:
    """Score a submission zip, a folder with data_{val,test}_prediction.npz, or one prediction npz.

    Returns {split: score dict}. The embedder is ``embedder``, else ``embedder_loader()`` (called once the
    inputs and options are checked), else loaded from ``embedder_path`` (default
    SOLUTION_DIR/embedder.safetensors, trained and cached there if absent).
    """
    pred = Path(pred)
    if not pred.exists():
        raise InputError(f"{pred}: prediction not found")
    splits, _ = resolve_predictions(pred, split)
    solution_dir = Path(solution_dir)
    sol_paths = {s: split_path(solution_dir, s, "solution") for s in splits}
    for p in sol_paths.values():
        if not p.is_file():
            raise InputError(f"{p}: solution file not found")
    # N from the solutions' headers: the upload is checked and read before the solutions take memory
    n_events = {s: npz_shape(p, KEY_PDG)[0] for s, p in sol_paths.items()}
    for s in splits:  # the cluster count fits the events scored: checked before any embedding or scoring
        options.check_clusters(clusters, min(n_events[s], sample_size or n_events[s]))
    options.check_int("--runs", runs, 1)
    dev = select_device("auto") if device is None else torch.device(device)
    results: dict = {}
    with scratch_dir("evaluate") as tmpdir:
        if pred.is_file() and (
            pred.suffix.lower() == ".zip" or (pred.suffix != ".npz" and zipfile.is_zipfile(pred))
        ):
            files = read_upload_zip(pred, splits, tmpdir, n_events)
            shown = {s: f"{pred}:{PREDICTION_NAMES[s]}" for s in splits}
        elif pred.is_dir():
            files = {s: pred / PREDICTION_NAMES[s] for s in splits}
            for p in files.values():
                if not p.is_file():
                    raise InputError(f"{p}: prediction file not found")
            shown = {s: str(f) for s, f in files.items()}
            check_prediction_manifest(pred, [f.name for f in files.values()])  # a mixed pair is refused
        elif pred.suffix == ".npz":
            files, shown = {splits[0]: pred}, {splits[0]: str(pred)}
            check_prediction_manifest(pred.parent, [pred.name])
        else:
            raise InputError(f"{pred}: expected a submission .zip, a folder or a prediction .npz")
        images = {s: _load_pred(files[s], n_events[s], shown[s]) for s in splits}
    truths = {s: load_npz(p, require_energy=True) for s, p in sol_paths.items()}
    if embedder is None and embedder_loader is not None:
        embedder = embedder_loader()
    if embedder is None:
        embedder = load_or_train_embedder(
            solution_dir, embedder_path, allow_mismatch=allow_embedder_mismatch, device=dev, progress=progress
        )
    details = {}
    for s in splits:
        true, gen = truths[s], images[s]
        if sample_size is not None and sample_size < len(true):
            idx = np.sort(np.random.default_rng(seed).choice(len(true), sample_size, replace=False))
            true, gen = true.subset(idx), gen[idx]
        results[s], details[s] = score_arrays(
            gen,
            true,
            embedder,
            clusters,
            runs,
            seed,
            ceiling,
            standardised,
            dev,
            metrics,
            return_details=True,
        )
    if plots_dir is not None:
        from calogan.metrics.plots import (
            make_all_plots,  # local: the Codalab bundle ships no plots/matplotlib
        )

        make_all_plots(details, Path(plots_dir))
        mod = _extra_module() if any(m != "prd" for m in metrics) else None
        if mod is not None and hasattr(mod, "make_plots"):
            for s in splits:  # make_plots reads one split's result dict; one folder per split
                mod.make_plots(results[s], Path(plots_dir) / f"extra_{s}")
    return results


# ---------------------------------------------------------------- CLI


def format_table(results: dict) -> str:
    """A plain-text table of the per-split results."""
    rows = [
        ("score = min(img, phys)", "score", "score_std"),
        ("AUC_img", "auc_img", "auc_img_std"),
        ("AUC_phys", "auc_phys", "auc_phys_std"),
        ("F_8 img / F_1/8 img", "f8_img", "f1_8_img"),
        ("F_8 phys / F_1/8 phys", "f8_phys", "f1_8_phys"),
        ("ceiling (real vs real)", "ceiling", None),
    ]

    def fmt(v) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    lines = [f"{'':26s}" + "".join(f"{s:>22s}" for s in results)]
    for label, key, key2 in rows:
        cells = []
        for r in results.values():
            sep = " ± " if key2 and key2.endswith("_std") else " / "
            cells.append(fmt(r.get(key)) + (sep + fmt(r.get(key2)) if key2 else ""))
        lines.append(f"{label:26s}" + "".join(f"{c:>22s}" for c in cells))
    std = [fmt(r["standardised"]["score"]) if "standardised" in r else "n/a" for r in results.values()]
    lines.append(f"{'standardised-stats score':26s}" + "".join(f"{c:>22s}" for c in std))
    first = next(iter(results.values()))
    lines.append(
        f"(N = {first['n']}, K = {first['clusters']}, R = {first['runs']}, seed {first['seed']}; "
        "± = std over runs; ceiling = half vs half of the true set at N/2)"
    )
    if all("fidelity" in r for r in results.values()):
        lines += ["", "stricter tests: generated vs real (real vs real), half samples"]
        for label, key in (
            ("classifier AUC, high-level", "auc_high"),
            ("FPD", "fpd"),
            ("worst separation", "sep_max"),
        ):
            cells = [
                f"{r['fidelity'][key]:.3f} ({r['fidelity'][key + '_ref']:.3f})" for r in results.values()
            ]
            lines.append(f"{label:26s}" + "".join(f"{c:>22s}" for c in cells))
        worst = [r["fidelity"]["sep_max_observable"] for r in results.values()]
        lines.append(f"{'  worst-separated':26s}" + "".join(f"{w:>22s}" for w in worst))
        lines.append("(AUC 0.5 and FPD 0 mean indistinguishable from real; docs/metrics.md)")
    return "\n".join(lines)


def format_physics_table(physics: dict) -> str:
    """Plain-text table of calogan.metrics.response.physics_checks: per-bin response and resolution ratios, barycentre."""
    tol = physics["tolerances"]
    lines = [
        f"{'|p| bin [GeV]':>16s} {'n':>7s} {'response ratio':>18s} {'resolution ratio':>18s} {'core res. ratio':>16s}"
    ]
    for row in physics["energy_bins"]:
        label = f"{row['p_lo']:.1f}-{row['p_hi']:.1f}"
        if row["response_ratio"] is None:
            lines.append(f"{label:>16s} {row['n']:7d} {'(too few)':>18s} {'':>18s}")
            continue
        resp = f"{row['response_ratio']:.3f} ± {row['response_ratio_err']:.3f}"
        res = f"{row['resolution_ratio']:.3f} ± {row['resolution_ratio_err']:.3f}"
        core = row.get("core_resolution_ratio")
        core = "" if core is None else f"{core:.3f}"
        lines.append(f"{label:>16s} {row['n']:7d} {resp:>18s} {res:>18s} {core:>16s}")
    bary = physics["barycentre"]
    if bary.get("bias_x") is not None:
        lines.append(
            f"barycentre bias (generated - real, contained showers, n = {bary['n']}): "
            f"x {bary['bias_x']:+.3f} cm, y {bary['bias_y']:+.3f} cm"
        )
    core = [r for r in physics.get("core", []) if "max_cell_real" in r]
    if core:
        lines.append("shower core, mean energy fraction real / generated (hottest cell; 3x3 around it):")
        for r in core:
            lines.append(
                f"{r['p_lo']:.1f}-{r['p_hi']:.1f}".rjust(16)
                + f" {r['max_cell_real']:.3f} / {r['max_cell_gen']:.3f};  {r['e3x3_real']:.3f} / {r['e3x3_gen']:.3f}"
            )
    lines.append(
        "(core res. = half the 16-84 % range / median of E/|p|: the Gaussian core, no tails; no target)"
    )
    lines.append(
        f"targets: response within ±{tol['response']:.0%}, resolution within ±{tol['resolution']:.0%}, "
        f"|barycentre bias| < {tol['barycentre_cm']} cm"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = options.ArgumentParser(prog="python -m calogan.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("pred", help="submission zip, folder with data_{val,test}_prediction.npz, or one npz")
    parser.add_argument("--solution-dir", default="data", help="folder with data_{split}_solution.npz")
    parser.add_argument("--split", default="both", choices=["val", "test", "both"])
    parser.add_argument(
        "--clusters", type=options.count(2), default=100, help="PRD clusters K, 2 <= K <= events (100)"
    )
    parser.add_argument("--runs", type=options.count(1), default=100)
    parser.add_argument("--seed", type=options.seed, default=1337)
    parser.add_argument(
        "--sample-size", type=options.count(2), default=None, help="score a random subset of N events"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--embedder", default=None, help="embedder file (default SOLUTION_DIR/embedder.safetensors)"
    )
    parser.add_argument("--allow-embedder-mismatch", action="store_true")
    parser.add_argument(
        "--metrics",
        default="prd,fidelity",
        help="comma list: prd (always) plus extra metric names, or all (default prd,fidelity: the competition "
        "score with the high-level classifier AUC, FPD and the worst-separated observable)",
    )
    parser.add_argument("--no-ceiling", action="store_true", help="skip the real-vs-real ceiling (faster)")
    parser.add_argument("--json", default=None, help="write {split: results} here")
    parser.add_argument("--plots", default=None, help="write PNG plots into this folder")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --json file or --plots folder"
    )
    args = parser.parse_args(argv)
    if args.sample_size is not None and args.sample_size < 2 * args.clusters:
        raise InputError(
            f"--sample-size: must be at least 2 × --clusters ({2 * args.clusters}), got {args.sample_size}"
        )
    metrics = parse_metrics(args.metrics)
    # the prediction (file, folder or zip), the solutions and the embedder are never overwritten
    sol = Path(args.solution_dir)
    inputs = [args.pred, args.embedder, sol / "embedder.safetensors"]
    inputs += [split_path(sol, s, "solution") for s in SPLITS]
    if args.json:
        options.check_output_file(args.json, args.overwrite, "--json", inputs=inputs)
    if args.plots:
        options.check_output_dir(args.plots, args.overwrite, "--plots", inputs=inputs)
    results = evaluate_predictions(
        args.pred,
        args.solution_dir,
        args.split,
        embedder_path=args.embedder,
        allow_embedder_mismatch=args.allow_embedder_mismatch,
        clusters=args.clusters,
        runs=args.runs,
        seed=args.seed,
        sample_size=args.sample_size,
        device=select_device(args.device),
        metrics=metrics,
        ceiling=not args.no_ceiling,
        plots_dir=args.plots,
    )
    print(format_table(results))
    for split_name, result in results.items():
        if "physics" in result:
            print(f"\n{split_name}: conditional physics (generated / real, same conditions)")
            print(format_physics_table(result["physics"]))
    stopped = training_stop(args.pred)
    if stopped:  # imported here: the Codalab bundle does not ship the training engine
        from calogan.core.engine import budget_stop_message

        print(f"note: these predictions come from a training that {budget_stop_message(stopped)}")
    if args.json:
        atomic_write_json(args.json, {**results, "training_stop": stopped} if stopped else results)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def training_stop(pred: str | os.PathLike) -> dict | None:
    """The budget stop of the training behind a prediction folder (from its manifest), or None."""
    folder = Path(pred)
    manifest = folder / PREDICTION_MANIFEST if folder.is_dir() else None
    if manifest is None or not manifest.is_file():
        return None
    try:
        stop = json.loads(manifest.read_text()).get("training_stop")
    except (OSError, ValueError, AttributeError):
        return None
    return stop if isinstance(stop, dict) and stop.get("reason") == "budget" else None
