"""Transfer test: python -m calogan.rich.transfer --checkpoint CKPT --data DIR --out DIR.

Evaluates a model trained on the calibration sample on (a) the held-out calibration ``test`` sample and
(b) the ``transfer`` sample, whose harder momentum spectrum mimics a signal channel (B -> J/psi K vs the
calibration channel). The detector response is the same in both, so a model that learned the conditional
p(DLL | P, eta, nTracks) must keep its generated/real efficiency ratios when the kinematics change.
Verdict: the per-bin ratios on the transfer sample agree with 1 within 5 % or 2 sigma in well-populated bins.
``--particle all --run-dir RUNS`` (instead of ``--checkpoint``) tests every RUNS/{particle}/checkpoints/best.pt (else
last.pt) and writes one table, OUT/summary.{md,json}, with each particle's reports in OUT/{particle}/.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from calogan.core.runtime import atomic_write_json, atomic_write_text, run_cli, temp_dir_for
from calogan.rich.evaluate import (
    NOT_TRAINED,
    evaluate_checkpoint,
    evaluate_trained,
    evaluation_parser,
    parse_evaluation_args,
    publish_report,
    write_summary,
)
from calogan.rich.io import SampleSource, require_per


def transfer_test(
    checkpoint: str | Path,
    data_dir: str | Path | SampleSource,
    out_dir: str | Path,
    seed: int = 0,
    device: str = "auto",
    plots: bool = True,
    classifier_iters: int = 200,
) -> dict:
    """Evaluate on test and transfer samples; write out_dir/{test,transfer}/ reports and transfer.json/.md."""
    out_dir = Path(out_dir)
    with temp_dir_for(out_dir / "transfer.md") as staging:  # every report made before any lands
        reports = {
            s: evaluate_checkpoint(
                checkpoint, data_dir, staging / s, s, seed, device, plots, classifier_iters
            )
            for s in ("test", "transfer")
        }
        result: dict = {"checkpoint": str(checkpoint), "samples": {}}
        for s, rep in reports.items():
            result["samples"][s] = rep["summary"]
        tr = reports["transfer"]["summary"]
        n = tr["bins_checked"]
        # consistent: each well-populated ratio within max(5 %, 2 sigma) of 1
        consistent = n > 0 and tr["bins_within_tolerance"] == n
        result["consistent"] = consistent
        atomic_write_json(staging / "transfer.json", result)
        lines = [
            "# RICH transfer test",
            "",
            "| sample | AUC | ratios within 5 % | within 2 sigma | max abs(ratio-1) |",
            "|---|---|---|---|---|",
        ]
        for s, m in result["samples"].items():
            lines.append(
                f"| {s} | {m['auc']:.3f} | {m['bins_within_5pct']}/{m['bins_checked']} | {m['bins_within_2sigma']}/{m['bins_checked']}"
                f" | {m['max_abs_ratio_deviation']} |"
            )
        lines += [
            "",
            f"efficiencies consistent on the transfer sample (each well-populated ratio within max(5 %, 2 sigma) of 1): **{consistent}**",
        ]
        atomic_write_text(staging / "transfer.md", "\n".join(lines) + "\n")
        publish_report(staging, out_dir)
    return result


def transfer_all(
    run_dir: str | Path,
    data_dir: str | Path | SampleSource,
    out_dir: str | Path,
    particle: str = "all",
    seed: int = 0,
    device: str = "auto",
    plots: bool = True,
    classifier_iters: int = 200,
) -> dict:
    """Transfer-test each trained particle of a ``--particle all`` run directory; OUT/{particle}/ and the summary."""
    out_dir = Path(out_dir)
    with temp_dir_for(out_dir / "summary.md") as staging:  # the folder appears whole, or not at all

        def transfer_one(name: str, checkpoint: Path) -> dict:
            res = transfer_test(checkpoint, data_dir, staging / name, seed, device, plots, classifier_iters)
            return {
                "report": str(out_dir / name / "transfer.md"),
                "consistent": res["consistent"],
                **res["samples"],
            }

        summary: dict = {"run_dir": str(run_dir), "data": str(data_dir), "samples": "test, transfer",
                         "particles": evaluate_trained(run_dir, data_dir, particle, ("test", "transfer"), transfer_one)}  # fmt: skip

        def ratio(sample: str, key: str):
            return lambda r: f"{r[sample][key]}/{r[sample]['bins_checked']}"

        columns = [
            ("classifier AUC, test", lambda r: f"{r['test']['auc']:.3f}"),
            ("AUC, transfer", lambda r: f"{r['transfer']['auc']:.3f}"),
            ("eff. ratios within 5 %, test", ratio("test", "bins_within_5pct")),
            ("within 2σ, test", ratio("test", "bins_within_2sigma")),
            ("within 5 %, transfer", ratio("transfer", "bins_within_5pct")),
            ("within 2σ, transfer", ratio("transfer", "bins_within_2sigma")),
            ("transfer verdict", lambda r: "consistent" if r["consistent"] else "not consistent"),
            ("report", lambda r: f"{Path(r['report']).relative_to(out_dir)}"),
        ]
        write_summary(staging, summary, "RICH transfer test, all particles", columns)
        publish_report(staging, out_dir)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """CLI wrapper of transfer_test()."""
    ap = evaluation_parser(
        "python -m calogan.rich.transfer",
        __doc__.splitlines()[0],
        data_help="folder with rich_{particle}_{test,transfer}.npz (or .root), or a .npz/.root file holding {sample}",
    )
    args = parse_evaluation_args(ap, argv, outputs=("test", "transfer", "transfer.json", "transfer.md"))
    require_per(args.data, "{sample}", "the transfer test reads two samples, test and transfer")
    if args.particle:
        summary = transfer_all(
            args.run_dir,
            args.data,
            args.out,
            args.particle,
            args.seed,
            args.device,
            not args.no_plots,
            args.classifier_iters,
        )
        for name, row in summary["particles"].items():
            if row["status"] == NOT_TRAINED:
                print(f"{name}: {NOT_TRAINED}")
            else:
                print(f"{name}: AUC test {row['test']['auc']:.3f}, transfer {row['transfer']['auc']:.3f};"
                      f" consistent: {row['consistent']}")  # fmt: skip
        print(f"summary: {Path(args.out) / 'summary.md'}")
        return 0
    res = transfer_test(
        args.checkpoint, args.data, args.out, args.seed, args.device, not args.no_plots, args.classifier_iters
    )
    for s, m in res["samples"].items():
        print(f"{s}: AUC {m['auc']:.3f}; eff ratios within 5%: {m['bins_within_5pct']}/{m['bins_checked']}")
    print(f"consistent: {res['consistent']}; report: {Path(args.out) / 'transfer.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
