"""Robustness suite: one training recipe, the same commands, on simulator configurations it was not tuned on.

Real detectors and other generators differ from the built-in simulator in shower width, energy resolution,
readout noise and thresholds, energy scale and particle mix. Each configuration below changes some of these
(``python -m calogan.simulate --set``); for each one the script runs the documented commands with no
per-dataset setting:

    python -m calogan.simulate --out DIR --n-train 30000 --n-val 10000 --n-test 2000 --seed 1 --set ...
    python -m calogan.embedder --data DIR
    python -m calogan.train --preset PRESET --data DIR --run-dir RUN --seed S --overwrite --set max_minutes=0 [--set ...]

then scores ``best.pt`` on the validation solution (``bench_quality.evaluate_checkpoints``: score against the
real-vs-real ceiling, stricter tests, physics ratios per |p| bin) and prints one row per configuration, the
worst value of each column, and the targets of the quick recipe. Data and runs are cached under ``--root``.

    python benchmarks/bench_robustness.py --preset quick --json benchmarks/results/robustness_quick.json
    python benchmarks/bench_robustness.py --configs wide noisy --tag nogates --set cell_gates=false
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import evaluate_checkpoints  # noqa: E402

MOLIERE_CM = 3.5  # the built-in simulator's Moliere radius (ShowerParams.moliere_radius_cm)

#: name -> (what differs from the built-in simulator, ShowerParams overrides). "builtin" is the default data.
SUITE: dict[str, tuple[str, dict[str, float]]] = {
    "builtin": ("the built-in simulator's defaults", {}),
    "wide": (
        "broad showers (Moliere radius x1.6, more energy in the tail component), half the soft halo, "
        "a small constant term",
        dict(
            moliere_radius_cm=MOLIERE_CM * 1.6, core_fraction0=0.6, halo_fraction=0.0175, constant_term=0.003
        ),
    ),
    "narrow": (
        "compact showers (Moliere radius x0.6) with a worse resolution (stochastic 15 %, constant 2 %)",
        dict(moliere_radius_cm=MOLIERE_CM * 0.6, stochastic_term=0.15, constant_term=0.02),
    ),
    "readout": (
        "electronic noise (0.1 units per cell), zero suppression below 0.3 units, a noise term 0.3 GeV/E",
        dict(cell_noise_units=0.1, zero_suppression_units=0.3, noise_term_gev=0.3, stochastic_term=0.08),
    ),
    "scale": (
        "another energy scale (120 instead of 165 units per GeV) and 85 % photons",
        dict(response_per_gev=120.0, photon_fraction=0.85),
    ),
    "mix": (
        "10 % photons, a sharper resolution (stochastic 6 %, constant 0.5 %), Moliere radius x1.25",
        dict(
            photon_fraction=0.1,
            stochastic_term=0.06,
            constant_term=0.005,
            moliere_radius_cm=MOLIERE_CM * 1.25,
        ),
    ),
}

#: The quick recipe's targets: (summary key, how to reduce the per-bin list, comparison, bound).
TARGETS = {
    "fraction_of_ceiling": (">=", 0.85),
    "resolution_dev": ("<=", 0.15),
    "hottest_cell_dev": ("<=", 0.10),
    "core_3x3_dev": ("<=", 0.10),
    "coverage": (">=", 0.80),
    "auc_low": ("<=", 0.85),
    "fpd": ("<=", 3.0),
    "auc_cc_high": ("<=", 0.75),
}


def run(cmd: list[str], log: Path) -> None:
    """Run one documented command, its output appended to ``log``; a failure stops the suite loudly."""
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(cmd) + "\n")
        handle.flush()
        done = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}), see {log}: {' '.join(cmd)}")


def prepare_data(name: str, root: Path, builtin_data: str, log: Path) -> str:
    """The configuration's data folder with its embedder, simulated and trained once and cached."""
    if name == "builtin":
        data = Path(builtin_data)
        if not (data / "data_train.npz").is_file():
            run([sys.executable, "-m", "calogan.simulate", "--out", str(data)], log)
    else:
        data = root / "data" / name
        if not (data / "manifest.json").is_file():
            sets = [f"--set={k}={v}" for k, v in SUITE[name][1].items()]
            run([sys.executable, "-m", "calogan.simulate", "--out", str(data), "--n-train", "30000",
                 "--n-val", "10000", "--n-test", "2000", "--seed", "1", *sets], log)  # fmt: skip
    if not (data / "embedder.safetensors").is_file():
        run([sys.executable, "-m", "calogan.embedder", "--data", str(data)], log)
    return str(data)


def deviations(summary: dict) -> dict:
    """The summary with each per-bin ratio list reduced to its largest |ratio - 1|."""
    out = dict(summary)
    for key, dev in (("resolution_ratio", "resolution_dev"), ("hottest_cell_ratio", "hottest_cell_dev"),
                     ("core_3x3_ratio", "core_3x3_dev")):  # fmt: skip
        out[dev] = round(max(abs(r - 1) for r in summary[key]), 4)
    return out


def verdict(row: dict) -> list[str]:
    """The targets this row misses."""
    missed = []
    for key, (op, bound) in TARGETS.items():
        value = row.get(key)
        if value is None:
            continue
        if (op == ">=" and value < bound) or (op == "<=" and value > bound):
            missed.append(key)
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(SUITE), choices=list(SUITE))
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training override")
    parser.add_argument("--tag", default="", help="name of this recipe variant (default: the preset)")
    parser.add_argument("--root", default="runs/robustness", help="cache of data folders and runs")
    parser.add_argument("--builtin-data", default="data", help="the built-in configuration's data folder")
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--skip-train", action="store_true", help="score existing runs only")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    tag = args.tag or args.preset
    log = root / f"{tag}_s{args.seed}.log"
    rows: dict[str, dict] = {}
    for name in args.configs:
        t0 = time.perf_counter()
        data = prepare_data(name, root, args.builtin_data, log)
        run_dir = root / "runs" / f"{tag}_{name}_s{args.seed}"
        if not args.skip_train:
            sets = [
                f"--set={item}" for item in ["max_minutes=0", "plots=false", "tensorboard=false", *args.set]
            ]
            run([sys.executable, "-m", "calogan.train", "--preset", args.preset, "--data", data,
                 "--run-dir", str(run_dir), "--seed", str(args.seed), "--overwrite", *sets], log)  # fmt: skip
        train_s = time.perf_counter() - t0
        result = evaluate_checkpoints(
            data, {name: str(run_dir / "checkpoints" / "best.pt")}, args.clusters, args.runs, verbose=False
        )
        row = deviations(result["models"][name]["summary"])
        row["train_s"] = round(train_s, 1)
        row["missed"] = verdict(row)
        rows[name] = row
        print(f"{name:8s} {json.dumps({k: row[k] for k in ('fraction_of_ceiling', *TARGETS, 'missed') if k in row})}",
              flush=True)  # fmt: skip

    worst = {}
    for key, (op, _) in TARGETS.items():
        values = [r[key] for r in rows.values() if r.get(key) is not None]
        if values:
            worst[key] = min(values) if op == ">=" else max(values)
    print("\nworst over the configurations: " + json.dumps(worst))
    print("missed: " + (", ".join(verdict(worst)) or "none"))
    if args.json:
        out = {
            "preset": args.preset, "seed": args.seed, "set": args.set, "tag": tag,
            "suite": {k: {"what": SUITE[k][0], "params": SUITE[k][1]} for k in args.configs},
            "targets": TARGETS, "rows": rows, "worst": worst, "missed": verdict(worst),
        }  # fmt: skip
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
