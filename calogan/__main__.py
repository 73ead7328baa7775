"""``calogan <command> [options]`` (or ``python -m calogan``): one entry point for every command.

A command runs its module's ``main`` through :func:`calogan.core.runtime.run_cli`, exactly as
``python -m <module>`` does, so options, output and exit statuses are the same (docs/cli.md).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from calogan.core.runtime import run_cli

#: command -> (module whose ``main`` it runs, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("calogan.ecal.simulate", "simulate the competition data set (train/val/test files and solutions)"),
    "train": ("calogan.ecal.train", "train the conditional WGAN-GP and write a run directory"),
    "predict": ("calogan.ecal.predict", "write data_{val,test}_prediction.npz with a trained generator"),
    "evaluate": ("calogan.metrics.evaluate", "score predictions as the competition did (plus stricter metrics)"),
    "package": ("calogan.submission.package", "build or check a Codalab submission zip"),
    "export": ("calogan.ecal.export", "export a generator to TorchScript or ONNX"),
    "finetune": ("calogan.studies.finetune", "fine-tune a generator on chosen physical statistics"),
    "transfer": ("calogan.studies.transfer", "transfer study: train on one event selection, test on another"),
    "embedder": ("calogan.metrics.embedder", "train the image embedder that AUC_img uses"),
    "codalab-score": ("calogan.codalab.score", "the Codalab scoring program (scores.txt, scores.html)"),
    "codalab-bundle": ("calogan.codalab.bundle", "build the Codalab scoring-program zip"),
    "rich-simulate": ("calogan.rich.simulate", "simulate RICH calibration samples with sWeights"),
    "rich-train": ("calogan.rich.train", "train one RICH PID GAN"),
    "rich-evaluate": ("calogan.rich.evaluate", "evaluate a RICH GAN against a calibration sample"),
    "rich-transfer": ("calogan.rich.transfer", "RICH transfer test: calibration test sample vs transfer sample"),
    "rich-export": ("calogan.rich.export", "export a RICH generator with its transforms to TorchScript or ONNX"),
    "rich-generate": ("calogan.rich.generate", "add generated RICH DLLs to a file of tracks (npz or ROOT)"),
}  # fmt: skip


def usage() -> str:
    """The command list that ``calogan --help`` prints."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: calogan <command> [options]    (calogan <command> --help shows its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default: the command line) to a command; returns its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not args:  # the usage goes to stdout (it is what was asked for), the status says no command ran
        print(usage())
        return 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}' (run `calogan --help` for the list)", file=sys.stderr)
        return 2
    # only the chosen command's module is imported: `calogan --help` need not load every dependency
    module = importlib.import_module(COMMANDS[name][0])
    return run_cli(module.main, rest)


if __name__ == "__main__":
    raise SystemExit(main())
