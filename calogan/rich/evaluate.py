"""Evaluate a RICH PID GAN against a calibration sample: python -m calogan.rich.evaluate --checkpoint CKPT --data DIR --out DIR.

``--particle all --run-dir RUNS`` (instead of ``--checkpoint``) evaluates every RUNS/{particle}/checkpoints/best.pt,
or last.pt where the run kept no best.pt (the layout of ``python -m calogan.rich.train --particle all --run-dir
RUNS``), and writes one table, OUT/summary.{md,json}, with each particle's report and plots in OUT/{particle}/.

Everything is sWeighted (real events carry their sWeight; generated events are produced on the real
events' conditions and inherit those weights, so both samples describe the signal's kinematics):
* weighted DLL histograms real vs generated in bins of P and of eta (tracks with RICH information);
* a classifier two-sample test: sklearn HistGradientBoostingClassifier on (P, eta, nTracks, 5 DLLs), trained
  with sample weights on one half of the events and scored on the other half by a weighted ROC AUC
  (Mann-Whitney form, valid with negative weights) overall and per (P, eta) bin; 0.5 = indistinguishable;
  and a stricter form of it, on the tracks with RICH information weighted by E[sWeight | x] (less noise);
* PID efficiencies of DLLk > 0, DLLk - DLLp > 5, DLLmu > 2 vs P and eta, generated/real ratio with errors
  (weighted binomial variance sum w^2 (pass - eff)^2 / (sum w)^2, the two samples treated as independent).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.locks import lock_directory
from calogan.core.runtime import (
    atomic_write_json,
    atomic_write_text,
    publish,
    run_cli,
    select_device,
    temp_dir_for,
    torch_load_safe,
)
from calogan.metrics.plots import save_png, subplots
from calogan.metrics.two_sample import binned_efficiency, classifier_scores, weighted_auc
from calogan.rich import DLL_COLUMNS, PARTICLES, SAMPLES
from calogan.rich.data import RichSample, model_inputs
from calogan.rich.io import SampleSource, add_source_options, as_source, require_per, source_from_args
from calogan.rich.models import RichModel, check_rich_checkpoint, load_rich_model
from calogan.rich.weights import expected_sweights, n_effective

P_EDGES = np.array([3.0, 6.0, 10.0, 20.0, 40.0, 200.0])
ETA_EDGES = np.array([1.5, 2.5, 3.0, 3.5, 4.0, 5.5])
AUC_P_EDGES = np.array([3.0, 10.0, 25.0, 200.0])
AUC_ETA_EDGES = np.array([1.5, 3.0, 4.0, 5.5])
CUTS = {
    "DLLk>0": lambda d: d[:, 2] > 0,
    "DLLk-DLLp>5": lambda d: d[:, 2] - d[:, 3] > 5,
    "DLLmu>2": lambda d: d[:, 1] > 2,
}
AUC_TARGET = 0.60
RATIO_TOLERANCE = 0.05
MIN_NEFF = (
    300.0  # a bin is "well populated" when the real sample's effective size (sum w)^2/sum w^2 is above this
)
MIN_EFF = 0.05  # ... and the real efficiency is above this (ratios of tiny efficiencies are not meaningful)


def classifier_test(real: RichSample, gen_dlls: np.ndarray, seed: int = 0, max_iter: int = 200) -> dict:
    """Weighted gradient-boosting two-sample test; ROC AUC overall and per (P, eta) bin on held-out events.

    Real (label 1) and generated (label 0) rows of the same event share its conditions and sWeight and go
    to the same half: one half of the events trains :func:`calogan.metrics.two_sample.classifier_scores`,
    the other is scored.
    """
    n = len(real)
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(n, bool)
    test_mask[rng.permutation(n)[: n // 2]] = True
    is_test = np.concatenate([test_mask, test_mask])  # stacked rows: generated, then real (same events)
    w = np.concatenate([real.weights, real.weights]).astype(np.float64)
    y, scores = classifier_scores(
        np.column_stack([real.inputs, real.dlls]),
        np.column_stack([real.inputs, gen_dlls]),
        np.flatnonzero(~is_test),
        "high",
        seed,
        weights=w,
        hgb_iter=max_iter,
        early_stopping="auto",
    )
    s, yt, wt = scores[is_test], y[is_test], w[is_test]
    inputs = np.concatenate([real.inputs, real.inputs])[is_test]
    out = {"auc": weighted_auc(yt, s, wt), "n_test_events": int(test_mask.sum()), "per_bin": []}
    ip = np.digitize(inputs[:, 0], AUC_P_EDGES) - 1
    ie = np.digitize(inputs[:, 1], AUC_ETA_EDGES) - 1
    for i in range(len(AUC_P_EDGES) - 1):
        for j in range(len(AUC_ETA_EDGES) - 1):
            m = (ip == i) & (ie == j)
            neff = n_effective(wt[m & (yt == 1)])
            auc = weighted_auc(yt[m], s[m], wt[m]) if neff >= 50 else None
            out["per_bin"].append(
                {"p": [float(AUC_P_EDGES[i]), float(AUC_P_EDGES[i + 1])]}
                | {"eta": [float(AUC_ETA_EDGES[j]), float(AUC_ETA_EDGES[j + 1])], "auc": auc, "n_eff": neff}
            )
    return out


def strict_classifier_auc(
    model: RichModel, real: RichSample, seed: int = 0, max_iter: int = 200
) -> float | None:
    """The classifier test on the tracks with RICH information, weighted by E[sWeight | x] instead of sWeights.

    Both weightings describe the signal, but the cross-fitted expectation (calogan.rich.weights) has no negative
    weights and far less noise, so the classifier learns more from the same events: a stricter test, whose
    AUC is higher than the sWeighted one for the same model. None when too few tracks have RICH information.
    """
    rich = real.subset(real.has_rich)
    if len(rich) < 100:
        return None
    weights = expected_sweights(
        np.column_stack([model_inputs(rich.inputs), rich.dlls]), rich.weights, seed=seed
    )
    if not weights.sum() > 0:
        return None
    generated = model.generate(rich.inputs, seed=seed + 2, no_rich=False)
    strict = RichSample(rich.inputs, rich.dlls, weights, rich.path)
    return classifier_test(strict, generated, seed=seed, max_iter=max_iter)["auc"]


def efficiency_table(
    real: RichSample, gen_dlls: np.ndarray, gen_inputs: np.ndarray, gen_w: np.ndarray
) -> dict:
    """Per cut and per variable (P, ETA): real and generated efficiencies, ratio and ratio error."""
    table: dict = {}
    for name, cut in CUTS.items():
        table[name] = {}
        for var, col, edges in (("P", 0, P_EDGES), ("ETA", 1, ETA_EDGES)):
            r = binned_efficiency(cut(real.dlls), real.inputs[:, col], real.weights, edges)
            g = binned_efficiency(cut(gen_dlls), gen_inputs[:, col], gen_w, edges)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = g["eff"] / r["eff"]
                ratio_err = np.abs(ratio) * np.sqrt((g["err"] / g["eff"]) ** 2 + (r["err"] / r["eff"]) ** 2)
            good = (r["n_eff"] >= MIN_NEFF) & (r["eff"] >= MIN_EFF)
            table[name][var] = {
                "edges": edges.tolist(),
                "real": r["eff"].tolist(),
                "real_err": r["err"].tolist(),
                "gen": g["eff"].tolist(),
                "gen_err": g["err"].tolist(),
                "ratio": ratio.tolist(),
                "ratio_err": ratio_err.tolist(),
                "n_eff": r["n_eff"].tolist(),
                "well_populated": good.tolist(),
            }
    return table


def _summarise_efficiencies(table: dict) -> dict:
    ratios, errs = [], []
    for per_var in table.values():
        for t in per_var.values():
            good = np.array(t["well_populated"])
            ratios += list(np.array(t["ratio"])[good])
            errs += list(np.array(t["ratio_err"])[good])
    ratios, errs = np.array(ratios), np.array(errs)
    dev = np.abs(ratios - 1)
    return {
        "bins_checked": len(ratios),
        "bins_within_5pct": int((dev <= RATIO_TOLERANCE).sum()),
        "bins_within_2sigma": int((dev <= 2 * errs).sum()),
        # the targets' rule: within 5 %, or within 2 sigma where the statistics are thinner
        "bins_within_tolerance": int((dev <= np.maximum(RATIO_TOLERANCE, 2 * errs)).sum()),
        "max_abs_ratio_deviation": float(dev.max()) if len(dev) else None,
        "median_ratio_error": float(np.median(errs)) if len(errs) else None,
    }


def evaluate_model(
    model: RichModel, real: RichSample, seed: int = 0, oversample: int = 4, classifier_iters: int = 200
) -> dict:
    """Full comparison of one model with one sample; returns a JSON-ready report (plots not included)."""
    gen_dlls = model.generate(real.inputs, seed=seed)
    clf = classifier_test(real, gen_dlls, seed=seed, max_iter=classifier_iters)
    big_inputs = np.tile(real.inputs, (oversample, 1))
    big_dlls = model.generate(big_inputs, seed=seed + 1)
    big_w = np.tile(real.weights, oversample) / oversample
    eff = efficiency_table(real, big_dlls, big_inputs, big_w)
    summary = {"auc": clf["auc"], "auc_target": AUC_TARGET, "auc_pass": bool(clf["auc"] <= AUC_TARGET)}
    summary["auc_strict"] = strict_classifier_auc(model, real, seed=seed, max_iter=classifier_iters)
    summary |= _summarise_efficiencies(eff)
    no_rich_real = float((real.weights * ~real.has_rich).sum() / real.weights.sum())
    no_rich_gen = float((big_w * (big_dlls[:, 0] <= -998)).sum() / big_w.sum())
    summary |= {"no_rich_fraction_real": no_rich_real, "no_rich_fraction_gen": no_rich_gen}
    return {
        "particle": model.particle,
        "sample": str(real.path) if real.path else None,
        "n_events": len(real),
        "sum_sweights": float(real.weights.sum()),
        "negative_weight_fraction": float((real.weights < 0).mean()),
        "summary": summary,
        "classifier": clf,
        "efficiencies": eff,
        "_gen": gen_dlls,
    }


def make_plots(report: dict, real: RichSample, gen_dlls: np.ndarray, out_dir: Path) -> list[Path]:
    """Weighted DLL histograms in P and eta bins and efficiency curves with ratios; returns the PNG paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    ok_r, ok_g = real.has_rich, (gen_dlls > -998).all(1)
    for var, col, edges in (("P", 0, P_EDGES), ("ETA", 1, ETA_EDGES)):
        fig, axes = subplots(len(edges) - 1, 5, figsize=(17, 2.6 * (len(edges) - 1)), squeeze=False)
        for i in range(len(edges) - 1):
            m = (real.inputs[:, col] >= edges[i]) & (real.inputs[:, col] < edges[i + 1])
            for k, name in enumerate(DLL_COLUMNS):
                ax = axes[i, k]
                rr, gg = real.dlls[m & ok_r, k], gen_dlls[m & ok_g, k]
                if len(rr) == 0:
                    continue
                lo, hi = np.percentile(rr, [0.5, 99.5])
                bins = np.linspace(lo, hi + 1e-6, 41)
                ax.hist(
                    rr, bins, weights=real.weights[m & ok_r], histtype="step", label="real (sW)", color="k"
                )
                ax.hist(
                    gg, bins, weights=real.weights[m & ok_g], histtype="step", label="generated", color="C1"
                )
                ax.set_title(f"{name}, {var} in [{edges[i]:g}, {edges[i + 1]:g})", fontsize=8)
        axes[0, 0].legend(fontsize=7)
        paths.append(save_png(fig, out_dir / f"dll_hist_{var}.png", dpi=70))
    for name, per_var in report["efficiencies"].items():
        fig, axes = subplots(2, 2, figsize=(9, 6), sharex="col", gridspec_kw={"height_ratios": [2, 1]})
        for j, (var, t) in enumerate(per_var.items()):
            e = np.array(t["edges"])
            c = 0.5 * (e[1:] + e[:-1])
            xerr = 0.5 * (e[1:] - e[:-1])
            axes[0, j].errorbar(c, t["real"], t["real_err"], xerr, fmt="o", color="k", label="real (sW)")
            axes[0, j].errorbar(c, t["gen"], t["gen_err"], xerr, fmt="s", color="C1", label="generated")
            axes[1, j].errorbar(c, t["ratio"], t["ratio_err"], xerr, fmt="o", color="C1")
            axes[1, j].axhspan(1 - RATIO_TOLERANCE, 1 + RATIO_TOLERANCE, color="0.85")
            axes[1, j].set_xlabel(var + (" [GeV]" if var == "P" else ""))
            if var == "P":
                axes[0, j].set_xscale("log")
        axes[0, 0].set_ylabel(f"eff({name})")
        axes[1, 0].set_ylabel("gen / real")
        axes[0, 0].legend(fontsize=8)
        paths.append(save_png(fig, out_dir / f"eff_{name.replace('>', 'gt').replace('-', 'm')}.png", dpi=70))
    return paths


def report_markdown(report: dict, title: str) -> str:
    """A short human-readable report."""
    s = report["summary"]
    lines = [
        f"# {title}",
        "",
        f"particle: {report['particle']}; sample: {report['sample']}; events: {report['n_events']};"
        f" sum sW: {report['sum_sweights']:.0f}; negative-weight fraction: {report['negative_weight_fraction']:.2f}",
        "",
        f"- weighted classifier ROC AUC (real vs generated): **{s['auc']:.3f}** (target <= {AUC_TARGET})",
        f"- stricter: the same test on tracks with RICH information weighted by E[sWeight | x]:"
        f" {_fmt(s.get('auc_strict'))}",
        f"- efficiency ratios gen/real in well-populated bins: {s['bins_within_5pct']}/{s['bins_checked']} within 5 %,"
        f" {s['bins_within_2sigma']}/{s['bins_checked']} within 2 sigma,"
        f" {s['bins_within_tolerance']}/{s['bins_checked']} within max(5 %, 2 sigma);"
        f" max |ratio-1| = {s['max_abs_ratio_deviation']}",
        f"- no-RICH (-999) fraction: real {s['no_rich_fraction_real']:.4f}, generated {s['no_rich_fraction_gen']:.4f}",
        "",
        "| P bin | eta bin | AUC | n_eff |",
        "|---|---|---|---|",
    ]
    for b in report["classifier"]["per_bin"]:
        auc = "—" if b["auc"] is None else f"{b['auc']:.3f}"
        lines.append(
            f"| {b['p'][0]:g}–{b['p'][1]:g} | {b['eta'][0]:g}–{b['eta'][1]:g} | {auc} | {b['n_eff']:.0f} |"
        )
    lines += ["", "| cut | var | bin | real | gen | ratio |", "|---|---|---|---|---|---|"]
    for name, per_var in report["efficiencies"].items():
        for var, t in per_var.items():
            for i in range(len(t["real"])):
                if t["well_populated"][i]:
                    e = t["edges"]
                    lines.append(
                        f"| {name} | {var} | {e[i]:g}–{e[i + 1]:g} | {t['real'][i]:.3f}±{t['real_err'][i]:.3f}"
                        f" | {t['gen'][i]:.3f}±{t['gen_err'][i]:.3f} | {t['ratio'][i]:.3f}±{t['ratio_err'][i]:.3f} |"
                    )
    return "\n".join(lines) + "\n"


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_dir: str | Path | SampleSource,
    out_dir: str | Path,
    sample: str = "test",
    seed: int = 0,
    device: str = "auto",
    plots: bool = True,
    classifier_iters: int = 200,
) -> dict:
    """Load a checkpoint, evaluate it on DIR/rich_{particle}_{sample}.npz, write report.json/.md and plots."""
    model = load_rich_model(checkpoint, device=select_device(device))
    real = as_source(data_dir).load(model.particle, sample)
    report = evaluate_model(model, real, seed=seed, classifier_iters=classifier_iters)
    gen = report.pop("_gen")
    out_dir = Path(out_dir)
    if plots:
        # relative to the report, so that a report staged elsewhere and moved keeps valid paths
        report["plots"] = [
            str(p.relative_to(out_dir)) for p in make_plots(report, real, gen, out_dir / "plots")
        ]
    report["checkpoint"] = str(checkpoint)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(
        out_dir / "report.md", report_markdown(report, f"RICH {model.particle} GAN vs {sample} sample")
    )
    return report


#: what an evaluation writes into --out (existing ones are replaced only with --overwrite)
EVALUATION_OUTPUTS = ("report.json", "report.md", "plots")
#: what --particle writes into --out besides one folder per particle
SUMMARY_OUTPUTS = ("summary.json", "summary.md")
NOT_TRAINED = "not trained"


def run_checkpoints(run_dir: str | Path, particle: str = "all") -> dict[str, Path | None]:
    """RUN_DIR/{particle}/checkpoints/best.pt (else last.pt) of each particle (``all``: the five), None where there is none.

    best.pt exists when the run scored held-out tracks during training (``--holdout``, standard and full presets).

    InputError when none exists, or when a checkpoint belongs to another particle than its folder.
    """
    particles = PARTICLES if particle == "all" else (particle,)
    found: dict[str, Path | None] = {}
    for name in particles:
        folder = Path(run_dir) / name / "checkpoints"
        path = folder / "best.pt" if (folder / "best.pt").is_file() else folder / "last.pt"
        found[name] = path if path.is_file() else None
        if found[name] is not None:
            stored = torch_load_safe(path)
            if isinstance(stored, dict) and stored.get("particle", name) != name:
                raise InputError(f"{path}: a {stored['particle']} checkpoint in the {name} folder")
    if not any(found.values()):
        raise InputError(
            f"--run-dir {run_dir}: no {{particle}}/checkpoints/best.pt or last.pt for {', '.join(particles)}"
            f" (write them with `python -m calogan.rich.train --particle all --run-dir {run_dir}`)"
        )
    return found


def require_samples(data_dir: str | Path | SampleSource, particles, samples: Sequence[str]) -> None:
    """Every DIR/rich_{particle}_{sample}.npz exists (InputError naming the first missing one)."""
    for particle in particles:
        for sample in samples:
            as_source(data_dir).require(particle, sample)


def _fmt(value, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def write_summary(out_dir: Path, summary: dict, title: str, columns: Sequence[tuple[str, object]]) -> None:
    """OUT/summary.json and OUT/summary.md: one table row per particle (``columns``: header, row -> cell)."""
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {summary[key]}" for key in ("run_dir", "data", "samples") if key in summary]
    lines += [
        "",
        "| particle | " + " | ".join(h for h, _ in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for particle, row in summary["particles"].items():
        if row["status"] == NOT_TRAINED:
            cells = [NOT_TRAINED] + ["—"] * (len(columns) - 1)
        else:
            cells = [str(cell(row)) for _, cell in columns]
        lines.append(f"| {particle} | " + " | ".join(cells) + " |")
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")


def evaluate_trained(
    run_dir: str | Path,
    data_dir: str | Path | SampleSource,
    particle: str,
    samples: Sequence[str],
    evaluate_one: Callable[[str, Path], dict],
) -> dict[str, dict]:
    """``evaluate_one(name, checkpoint)`` for each trained particle of a run directory, by particle name.

    Every sample file a trained particle needs is checked first; a particle without a checkpoint is listed as
    not trained.
    """
    checkpoints = run_checkpoints(run_dir, particle)
    require_samples(data_dir, [p for p, c in checkpoints.items() if c], samples)
    for checkpoint in filter(None, checkpoints.values()):  # every checkpoint's fields before any evaluation
        check_rich_checkpoint(torch_load_safe(checkpoint), checkpoint)
    return {
        name: {"status": NOT_TRAINED} if checkpoint is None
        else {"status": "evaluated", "checkpoint": str(checkpoint), **evaluate_one(name, checkpoint)}
        for name, checkpoint in checkpoints.items()
    }  # fmt: skip


#: The files that mark a report folder complete: moved into place after everything else.
REPORT_MARKERS = ("report.json", "report.md", "transfer.json", "transfer.md", "summary.json", "summary.md")


def publish_report(staging: Path, out_dir: Path) -> None:
    """Move a staged report folder's entries into ``out_dir`` (replacing earlier ones), the markers last."""
    names = sorted(p.name for p in staging.iterdir())
    rest = [n for n in names if n not in REPORT_MARKERS]
    publish(staging, out_dir, rest + [n for n in REPORT_MARKERS if n in names])


def evaluate_all(
    run_dir: str | Path,
    data_dir: str | Path | SampleSource,
    out_dir: str | Path,
    particle: str = "all",
    sample: str = "test",
    seed: int = 0,
    device: str = "auto",
    plots: bool = True,
    classifier_iters: int = 200,
) -> dict:
    """Evaluate each trained particle of a ``--particle all`` run directory; write OUT/{particle}/ and the summary."""
    out_dir = Path(out_dir)
    with temp_dir_for(out_dir / "summary.md") as staging:  # the folder appears whole, or not at all

        def evaluate_one(name: str, checkpoint: Path) -> dict:
            rep = evaluate_checkpoint(
                checkpoint, data_dir, staging / name, sample, seed, device, plots, classifier_iters
            )
            return {"report": str(out_dir / name / "report.md"), **rep["summary"]}

        summary: dict = {"run_dir": str(run_dir), "data": str(data_dir), "samples": sample,
                         "particles": evaluate_trained(run_dir, data_dir, particle, [sample], evaluate_one)}  # fmt: skip

        def ratio(key: str):
            return lambda r: f"{r[key]}/{r['bins_checked']}"

        columns = [
            ("classifier AUC", lambda r: _fmt(r["auc"])),
            ("stricter AUC", lambda r: _fmt(r.get("auc_strict"))),
            ("eff. ratios within 5 %", ratio("bins_within_5pct")),
            ("within 2σ", ratio("bins_within_2sigma")),
            ("within max(5 %, 2σ)", ratio("bins_within_tolerance")),
            (
                "no-RICH fraction real / gen",
                lambda r: f"{r['no_rich_fraction_real']:.3f} / {r['no_rich_fraction_gen']:.3f}",
            ),
            ("report", lambda r: f"{Path(r['report']).relative_to(out_dir)}"),
        ]
        write_summary(staging, summary, f"RICH GANs vs the {sample} sample, all particles", columns)
        publish_report(staging, out_dir)
    return summary


#: --data of the evaluation commands (calogan.rich.io.SampleSource)
DATA_HELP = "folder with rich_{particle}_{sample}.npz (or .root), or a .npz/.root file (may hold {particle}, {sample})"


def evaluation_parser(prog: str, description: str, data_help: str | None = None) -> argparse.ArgumentParser:
    """The options shared by the RICH evaluation commands (checkpoint, data, output, seed, device, plots)."""
    ap = options.ArgumentParser(prog=prog, description=description)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="one RICH checkpoint")
    source.add_argument(
        "--particle",
        type=options.choice("all", *PARTICLES),
        help="all (or one particle): RUN_DIR/{particle}/checkpoints/best.pt or last.pt, one table in OUT/summary.md",
    )
    ap.add_argument(
        "--run-dir",
        help="with --particle: the folder of `python -m calogan.rich.train --particle all --run-dir`",
    )
    ap.add_argument("--data", required=True, help=data_help or DATA_HELP)
    add_source_options(ap)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=options.seed, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument(
        "--classifier-iters",
        type=options.count(1),
        default=200,
        help="boosting iterations of the two-sample test",
    )
    ap.add_argument("--overwrite", action="store_true", help="replace the reports of an earlier run in --out")
    return ap


def parse_evaluation_args(
    ap: argparse.ArgumentParser, argv: Sequence[str] | None, outputs: Sequence[str] = EVALUATION_OUTPUTS
) -> argparse.Namespace:
    """Parse ``argv`` with a parser of :func:`evaluation_parser`; check --out for ``outputs`` before any work.

    With ``--particle`` the outputs are OUT/summary.{json,md} and one folder per particle. ``args.data``
    becomes the SampleSource of --data, --tree, --columns and --p-unit.
    """
    args = ap.parse_args(argv)
    args.data = source_from_args(args)
    if args.particle == "all":
        require_per(args.data, "{particle}", "--particle all reads each particle's own sample")
    if args.particle and not args.run_dir:
        raise InputError(
            "--particle: needs --run-dir DIR (the folder holding DIR/{particle}/checkpoints/best.pt or last.pt)"
        )
    if args.checkpoint and args.run_dir:
        raise InputError("--run-dir: goes with --particle, not with --checkpoint")
    if args.particle:
        outputs = (*SUMMARY_OUTPUTS, *(PARTICLES if args.particle == "all" else (args.particle,)))
    found = [Path(args.run_dir) / p / "checkpoints" for p in PARTICLES] if args.run_dir else []
    inputs = [args.checkpoint, *found]  # never replaced by a report, even with --overwrite
    options.check_output_dir(args.out, args.overwrite, "--out", contents=outputs, inputs=inputs)
    # one writer of --out at a time: the lock lives with ``args`` (until the command returns)
    args.lock = lock_directory(args.out, "report folder")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI wrapper of evaluate_checkpoint()."""
    ap = evaluation_parser("python -m calogan.rich.evaluate", __doc__.splitlines()[0])
    ap.add_argument("--sample", default="test", choices=SAMPLES)
    args = parse_evaluation_args(ap, argv)
    if args.particle:
        summary = evaluate_all(
            args.run_dir,
            args.data,
            args.out,
            args.particle,
            args.sample,
            args.seed,
            args.device,
            not args.no_plots,
            args.classifier_iters,
        )
        for name, row in summary["particles"].items():
            if row["status"] == NOT_TRAINED:
                print(f"{name}: {NOT_TRAINED}")
            else:
                print(
                    f"{name} [{args.sample}]: AUC {row['auc']:.3f};"
                    f" eff ratios within 5%: {row['bins_within_5pct']}/{row['bins_checked']}"
                )
        print(f"summary: {Path(args.out) / 'summary.md'}")
        return 0
    rep = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.out,
        args.sample,
        args.seed,
        args.device,
        not args.no_plots,
        args.classifier_iters,
    )
    s = rep["summary"]
    print(
        f"{rep['particle']} [{args.sample}]: AUC {s['auc']:.3f} (target <= {AUC_TARGET}),"
        f" stricter AUC {_fmt(s.get('auc_strict'))}; eff ratios within 5%: {s['bins_within_5pct']}/{s['bins_checked']},"
        f" within max(5%, 2 sigma): {s['bins_within_tolerance']}/{s['bins_checked']}; report: {Path(args.out) / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
