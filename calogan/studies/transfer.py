"""Generative-model transfer study: ``python -m calogan.transfer``.

Trains (or takes) a generator on one selection of the training file and evaluates it on that selection and on
another one of the validation solution, against the simulator's truth: score and ceiling, per-|p|-bin response
and resolution ratios generated/real, and the efficiency of physics cuts generated vs real with binomial errors.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.locks import lock_directory
from calogan.core.runtime import (
    atomic_write_json,
    atomic_write_text,
    select_device,
    temp_dir_for,
)
from calogan.ecal.data import ENERGY_UNITS_PER_GEV, CaloData, load_npz, require_file, save_npz, split_path
from calogan.ecal.models import load_checked_checkpoint, load_generator
from calogan.ecal.physics import cluster_3x3, energy_response, momentum_quantile_bins
from calogan.ecal.predict import generate
from calogan.ecal.train import PRESETS as TRAIN_PRESETS
from calogan.ecal.train import make_config, train
from calogan.metrics.embedder import load_data_embedder
from calogan.metrics.plots import save_png, subplots
from calogan.metrics.response import response_rows
from calogan.metrics.scoring import headline_scores
from calogan.metrics.two_sample import binned_efficiency
from calogan.studies.selection import Selection, apply_selection, overlap_fraction, parse_selection

#: Evaluation settings per preset: events per selection, PRD clusters and runs, |p| bins.
PRESETS = {
    "tiny": dict(eval_events=300, clusters=5, runs=2, n_bins=3),
    "quick": dict(eval_events=5000, clusters=20, runs=10, n_bins=4),
    "full": dict(eval_events=0, clusters=100, runs=20, n_bins=5),
}
CLUSTER_CUT_GEV = 2.0


@dataclass(frozen=True)
class EvaluationSettings:
    """How a study evaluates its generator: events per selection (0: all), PRD clusters and runs, |p| bins, seed."""

    eval_events: int = 5000
    clusters: int = 20
    runs: int = 10
    n_bins: int = 4
    seed: int = 0


def _efficiency(passed: np.ndarray) -> tuple[float, float]:
    """Fraction of events passing and its binomial error sqrt(e(1-e)/n)."""
    res = binned_efficiency(passed)
    return float(res["eff"][0]), float(res["err"][0])


def efficiencies(gen: np.ndarray, real: np.ndarray) -> dict[str, dict]:
    """Fractions of events passing each cut, generated and real, with binomial errors.

    Cuts: E(3×3) > 2 GeV-equivalent (2 × ENERGY_UNITS_PER_GEV units); containment E(3×3)/E_total above the real sample's median.
    Errors are binomial sqrt(e(1-e)/n); the pull (gen - real)/error uses Laplace-smoothed (k+1)/(n+2) errors.
    """
    out = {}
    e3g, e3r = cluster_3x3(gen), cluster_3x3(real)
    tot_g = np.asarray(gen, np.float64).reshape(len(gen), -1).sum(1)
    tot_r = np.asarray(real, np.float64).reshape(len(real), -1).sum(1)
    frac_g, frac_r = e3g / np.maximum(tot_g, 1e-12), e3r / np.maximum(tot_r, 1e-12)
    median = float(np.median(frac_r))
    cuts = {
        f"E3x3 > {CLUSTER_CUT_GEV:g} GeV": (
            e3g > CLUSTER_CUT_GEV * ENERGY_UNITS_PER_GEV,
            e3r > CLUSTER_CUT_GEV * ENERGY_UNITS_PER_GEV,
        ),
        f"E3x3/E > {median:.3f} (real median)": (frac_g > median, frac_r > median),
    }
    for name, (pg, pr) in cuts.items():
        (eg, sg), (er, sr) = _efficiency(pg), _efficiency(pr)
        # the pull uses Laplace-smoothed errors, so efficiencies of exactly 0 or 1 still give a finite pull
        lg, lr = (pg.sum() + 1) / (len(pg) + 2), (pr.sum() + 1) / (len(pr) + 2)
        spull = np.hypot(np.sqrt(lg * (1 - lg) / len(pg)), np.sqrt(lr * (1 - lr) / len(pr)))
        out[name] = {"gen": eg, "gen_err": float(sg), "real": er, "real_err": float(sr),
                     "pull": float((eg - er) / spull)}  # fmt: skip
    return out


def response_ratios(gen: np.ndarray, data: CaloData, n_bins: int) -> dict:
    """Per-|p|-bin ratios generated/real of the mean energy response and of the resolution (std/mean).

    Equally populated |p| bins; the numbers come from :func:`calogan.metrics.response.response_rows`.
    """
    rg, rr = energy_response(gen, data.momentum), energy_response(data.energy, data.momentum)
    which, p_edges = momentum_quantile_bins(data.p_abs, n_bins)
    rows = []
    for row in response_rows(rg, rr, which, p_edges, min_events=2):
        out = {"p_lo": row["p_lo"], "p_hi": row["p_hi"], "n": row["n"], "response": row["response_ratio"]}
        if row["response_ratio"] is not None:
            out["response_err"] = row["response_ratio_err"]
        out["resolution"] = row["resolution_ratio"]
        rows.append(out)
    return {"bins": rows}


def _evaluate_selection(
    generator, val: CaloData, sel: Selection, option: str, cfg: EvaluationSettings, embedder, dev
) -> dict:
    data = apply_selection(val, sel, option)
    if cfg.eval_events and len(data) > cfg.eval_events:
        data = data.subset(np.random.default_rng(cfg.seed).choice(len(data), cfg.eval_events, replace=False))
    if len(data) < 20:
        raise InputError(f"{option}: '{sel.text}' selects only {len(data)} validation events (need >= 20)")
    gen = generate(generator, data, seed=cfg.seed + 1, device=dev)
    return {
        "selection": str(sel),
        "n_events": len(data),
        "score": headline_scores(gen, data, embedder, cfg.clusters, cfg.runs, dev),
        "response": response_ratios(gen, data, cfg.n_bins),
        "efficiency": efficiencies(gen, data.energy),
    }


def _train_on_selection(
    data_dir, train_sel: Selection, out_dir: Path, preset: str, seed: int, device, progress
) -> Path:
    """Write the selected training events to OUT/train_data and train a model there; returns its best.pt."""
    full = load_npz(require_file(split_path(data_dir, "train")), require_energy=True)
    subset = apply_selection(full, train_sel, "--train-selection")
    sub_dir = out_dir / "train_data"
    save_npz(split_path(sub_dir, "train"), subset.to_arrays())
    holdout = max(10, min(int(TRAIN_PRESETS[preset].get("holdout", 2000)), len(subset) // 5))
    cfg = make_config(
        preset, data=str(sub_dir), run_dir=str(out_dir / "run"), seed=seed, device=device, holdout=holdout
    )
    run_dir = train(cfg, overwrite=True, progress=progress)
    return Path(run_dir) / "checkpoints" / "best.pt"


#: what a study writes into its --out folder
TRANSFER_OUTPUTS = ("report.md", "results.json", "transfer.png", "run", "train_data")


def transfer_study(
    data_dir: str | os.PathLike,
    train_selection: str,
    test_selection: str,
    out_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    preset: str = "quick",
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Run the study and write OUT/{report.md, results.json, transfer.png}; returns the numbers."""
    options.check_output_dir(out_dir, True, "--out", contents=())
    sel_train = parse_selection(train_selection, "--train-selection")
    sel_test = parse_selection(test_selection, "--test-selection")
    if preset not in PRESETS:
        raise InputError(f"--preset: unknown preset '{preset}' (use {', '.join(PRESETS)})")
    val = load_npz(require_file(split_path(data_dir, "val", "solution")), require_energy=True)
    for sel, opt in ((sel_train, "--train-selection"), (sel_test, "--test-selection")):
        apply_selection(val, sel, opt)  # fail on empty selections before any training
    out_dir = Path(out_dir)
    dev = select_device(device)
    if checkpoint is not None:
        load_checked_checkpoint(checkpoint, data_dir)
    else:
        for name in REPORT_FILES:  # the reports of an earlier study describe the run replaced here
            (out_dir / name).unlink(missing_ok=True)
        checkpoint = _train_on_selection(data_dir, sel_train, out_dir, preset, seed, device, progress)
    generator, _ = load_generator(checkpoint, device=dev, ema=True)
    cfg = EvaluationSettings(**PRESETS[preset], seed=seed)
    embedder = load_data_embedder(data_dir, dev)
    result = {
        "checkpoint": str(checkpoint),
        "preset": preset,
        "overlap_fraction_val": overlap_fraction(val, sel_train, sel_test),
        "score_uses_embedder": embedder is not None,
        "train_selection": _evaluate_selection(
            generator, val, sel_train, "--train-selection", cfg, embedder, dev
        ),
        "test_selection": _evaluate_selection(
            generator, val, sel_test, "--test-selection", cfg, embedder, dev
        ),
    }
    write_reports(out_dir, result)
    return result


#: The report files of a study, in the order they are moved into place (report.md last).
REPORT_FILES = ("transfer.png", "results.json", "report.md")


def write_reports(out_dir: Path, result: dict) -> None:
    """Write the three reports into a temp folder in ``out_dir``, then move them into place together.

    A failure (or a kill) while they are written leaves no partial report set: the earlier reports, if any,
    stay as they were, and the temp folder is removed on exit or by the next study writing there.
    """
    with temp_dir_for(out_dir / "report.md") as staging:
        plot_transfer(staging / "transfer.png", result)
        atomic_write_json(staging / "results.json", result)
        atomic_write_text(staging / "report.md", render_report(result))
        for name in REPORT_FILES:
            os.replace(staging / name, out_dir / name)


def plot_transfer(path: Path, result: dict) -> Path:
    """PNG: response ratio per |p| bin and cut efficiencies, for both selections."""
    fig, (ax1, ax2) = subplots(1, 2, figsize=(10, 3.8))
    for key, marker in (("train_selection", "o"), ("test_selection", "s")):
        part = result[key]
        rows = [r for r in part["response"]["bins"] if r["response"] is not None]
        mid = [np.sqrt(r["p_lo"] * r["p_hi"]) for r in rows]
        ax1.errorbar(mid, [r["response"] for r in rows], [r["response_err"] for r in rows], marker=marker,
                     ls="", label=f"{key.split('_')[0]}: {part['selection']}")  # fmt: skip
        effs = part["efficiency"]
        x = np.arange(len(effs)) + (0.0 if key == "train_selection" else 0.4)
        ax2.bar(x, [e["gen"] - e["real"] for e in effs.values()], 0.35, yerr=[np.hypot(e["gen_err"], e["real_err"]) for e in effs.values()],
                label=part["selection"])  # fmt: skip
        ax2.set_xticks(np.arange(len(effs)) + 0.2, list(effs), fontsize=7)
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.set_xscale("log")
    ax1.set_xlabel("|p| (GeV)")
    ax1.set_ylabel("mean response gen / real")
    ax1.legend(fontsize=7)
    ax2.axhline(0.0, color="k", lw=0.8)
    ax2.set_ylabel("efficiency gen − real")
    ax2.legend(fontsize=7)
    return save_png(fig, path, dpi=90)


def render_report(result: dict) -> str:
    """Markdown report of a transfer study."""

    def fmt(v, spec=".3f") -> str:
        return "n/a" if v is None else format(v, spec)

    lines = ["# Transfer study", "", f"Model: `{result['checkpoint']}` (preset {result['preset']}). "
             f"Fraction of validation events in both selections: {result['overlap_fraction_val']:.3f}.", ""]  # fmt: skip
    lines += [
        "## Score (min of the PRD AUCs)",
        "",
        "| selection | events | score | ± std | ceiling |",
        "|---|---|---|---|---|",
    ]
    for key in ("train_selection", "test_selection"):
        p = result[key]
        s = p["score"]
        lines.append(f"| {key.split('_')[0]}: `{p['selection']}` | {p['n_events']} | {fmt(s.get('score'))} | "
                     f"{fmt(s.get('score_std'))} | {fmt(s.get('ceiling'))} |")  # fmt: skip
    if not result.get("score_uses_embedder"):
        lines += ["", "No DATA/embedder.safetensors: scores are AUC_phys only."]
    lines += ["", "## Energy response and resolution, generated / real", "",
              "| selection | |p| bin (GeV) | events | response ratio | resolution ratio |", "|---|---|---|---|---|"]  # fmt: skip
    for key in ("train_selection", "test_selection"):
        for r in result[key]["response"]["bins"]:
            lines.append(f"| `{result[key]['selection']}` | {r['p_lo']:.1f}–{r['p_hi']:.1f} | {r['n']} | "
                         f"{fmt(r['response'])} ± {fmt(r.get('response_err'))} | {fmt(r['resolution'])} |")  # fmt: skip
    lines += [
        "",
        "## Cut efficiencies (binomial errors)",
        "",
        "| selection | cut | generated | real | pull |",
        "|---|---|---|---|---|",
    ]
    for key in ("train_selection", "test_selection"):
        for cut, e in result[key]["efficiency"].items():
            lines.append(f"| `{result[key]['selection']}` | {cut} | {e['gen']:.3f} ± {e['gen_err']:.3f} | "
                         f"{e['real']:.3f} ± {e['real_err']:.3f} | {e['pull']:+.1f} |")  # fmt: skip
    lines += ["", "![transfer](transfer.png)", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = options.ArgumentParser(prog="python -m calogan.transfer", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data")
    p.add_argument("--train-selection", required=True, help="e.g. 'p<20', 'pdg==11', 'r<5 & p>=5'")
    p.add_argument("--test-selection", required=True, help="e.g. 'p>=20'")
    p.add_argument(
        "--checkpoint", default=None, help="use this model instead of training one on --train-selection"
    )
    p.add_argument("--preset", choices=tuple(PRESETS), default="quick")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=options.seed, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of an earlier study in --out"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run :func:`transfer_study` and print the two scores."""
    a = build_parser().parse_args(argv)
    inputs = [a.checkpoint, *(split_path(a.data, *s) for s in (("train",), ("val", "solution")))]
    options.check_output_dir(a.out, a.overwrite, "--out", contents=TRANSFER_OUTPUTS, inputs=inputs)
    with lock_directory(a.out, "report folder"):  # one writer of --out at a time
        r = transfer_study(
            a.data, a.train_selection, a.test_selection, a.out, a.checkpoint, a.preset, a.seed, a.device
        )
    for key in ("train_selection", "test_selection"):
        s = r[key]["score"]
        print(f"{key}: {r[key]['selection']}: score {s.get('score')} (ceiling {s.get('ceiling')})")
    print(f"report: {Path(a.out) / 'report.md'}")
    return 0
