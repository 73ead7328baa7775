"""Score generated showers as the competition did, with the 2019 embedding bug fixed, and the stricter tests.

The command line of calogan.metrics.scoring: reads a submission zip, a prediction folder or one prediction
file (calogan.metrics.inputs), prints the tables (calogan.metrics.tables) and writes the JSON, the plots
folder and the HTML report (calogan.metrics.report), each atomically.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from calogan.core import options
from calogan.core.engine import budget_stop_message
from calogan.core.errors import InputError
from calogan.core.locks import lock_directory
from calogan.core.runtime import (
    atomic_write_json,
    atomic_write_text,
    publish,
    scratch_dir,
    select_device,
    temp_dir_for,
)
from calogan.ecal.data import split_path
from calogan.metrics.distances import CONVENTIONS
from calogan.metrics.inputs import SPLITS, training_stop
from calogan.metrics.report import render_report
from calogan.metrics.scoring import (
    EvalSettings,
    ScoreResult,
    evaluate_predictions,
    extra_metrics_module,
    parse_metrics,
)
from calogan.metrics.tables import format_physics_table, format_table


def build_parser() -> options.ArgumentParser:
    """The evaluator's options."""
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
    parser.add_argument(
        "--fpd-convention",
        default="calogan",
        choices=list(CONVENTIONS),
        help="how FPD and KPD are computed: calogan (Gaussianised features, default) or jetnet (jetnet 0.2.5, "
        "as CaloChallenge); the JSON names the convention used",
    )
    parser.add_argument("--no-ceiling", action="store_true", help="skip the real-vs-real ceiling (faster)")
    parser.add_argument("--json", default=None, help="write {split: results} here")
    parser.add_argument("--plots", default=None, help="write PNG plots into this folder")
    parser.add_argument(
        "--report", default=None, help="write one self-contained HTML page (scores, tables, plots) here"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --json or --report file or --plots folder",
    )
    return parser


def write_plots(results: dict[str, ScoreResult], folder: Path) -> list[str]:
    """Every evaluation plot of ``results`` into ``folder``; returns the names of the entries written there.

    The stricter tests' plots (ROC curves, separation power) go to ``extra_{split}/``, one folder per split.
    """
    from calogan.metrics.plots import make_all_plots  # local: the Codalab bundle ships no plots/matplotlib

    make_all_plots(results, folder)
    mod = extra_metrics_module()
    if mod is not None and hasattr(mod, "make_plots"):
        for split, result in results.items():  # make_plots reads one split's result dict
            if any(key in result.summary for key in ("cls", "sep")):
                mod.make_plots(result.summary, folder / f"extra_{split}")
    return sorted(p.name for p in folder.iterdir())


def main(argv: Sequence[str] | None = None) -> int:
    """Score, print the tables, then write --plots, --report and --json (each whole or not at all)."""
    args = build_parser().parse_args(argv)
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
    if args.report:
        options.check_output_file(args.report, args.overwrite, "--report", inputs=[*inputs, args.json])
    if args.plots:
        options.check_output_dir(args.plots, args.overwrite, "--plots", inputs=inputs)
    settings = EvalSettings(
        clusters=args.clusters,
        runs=args.runs,
        seed=args.seed,
        sample_size=args.sample_size,
        metrics=tuple(metrics),
        ceiling=not args.no_ceiling,
        fpd_convention=args.fpd_convention,
        device=select_device(args.device),
    )
    with ExitStack() as stack:
        if args.plots:  # one writer of the plots folder, from before scoring until it is published
            stack.enter_context(lock_directory(args.plots, "plots folder"))
        results = evaluate_predictions(
            args.pred,
            args.solution_dir,
            args.split,
            settings,
            embedder_path=args.embedder,
            allow_embedder_mismatch=args.allow_embedder_mismatch,
        )
        summaries = {s: r.summary for s, r in results.items()}
        print(format_table(summaries))
        for split_name, summary in summaries.items():
            if "physics" in summary:
                print(f"\n{split_name}: conditional physics (generated / real, same conditions)")
                print(format_physics_table(summary["physics"]))
        stopped = training_stop(args.pred)
        if stopped:
            print(f"note: these predictions come from a training that {budget_stop_message(stopped)}")
        output = {**summaries, "training_stop": stopped} if stopped else summaries
        if args.plots or args.report:
            # staged beside the plots folder (published whole) or in a scratch folder for the report alone
            staging = stack.enter_context(
                temp_dir_for(Path(args.plots) / "plots") if args.plots else scratch_dir("evaluate-plots")
            )
            names = write_plots(results, staging)
            if args.report:
                atomic_write_text(args.report, render_report(output, staging, title=str(args.pred)))
                print(f"wrote {args.report}", file=sys.stderr)
            if args.plots:
                publish(staging, args.plots, names)
    if args.json:
        atomic_write_json(args.json, output)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
