"""Training speed of the real trainer: generator steps per second of each recipe variant, against the first.

Each variant runs ``calogan.ecal.train.train`` (the engine's own critic and generator steps, losses and EMA)
for ``--steps`` steps of a preset on a small simulated data set, and the steps per second come from the
engine's own throughput log (``images_per_s`` of ``metrics.jsonl``, which excludes the final evaluation),
averaged over the second half of the run (after the warm-up). Ratios are to the first variant of the same run.

    python benchmarks/bench_train.py --preset quick --steps 200 \\
        base= lazy4=gp_every=4 lazy4_nosummary=gp_every=4,critic_summary=false --json FILE
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from calogan.ecal.simulate import write_dataset
from calogan.ecal.train import make_config, parse_set, train


def steps_per_second(run_dir: Path, batch_size: int, n_critic: int) -> float:
    """Mean generator steps/s over the second half of a run's log (each step passes (n_critic + 1) batches)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in rows[len(rows) // 2 :] if "images_per_s" in r]
    return sum(rates) / len(rates) / (batch_size * (n_critic + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "variants", nargs="+", help="NAME=KEY=VALUE,KEY=VALUE (config overrides; NAME= for none)"
    )
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    out = {"preset": args.preset, "steps": args.steps, "threads": args.threads or torch.get_num_threads()}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, n_train=6000, n_val=10, n_test=10, seed=0, progress=False)
        for item in args.variants:
            name, _, spec = item.partition("=")
            overrides = parse_set([kv for kv in spec.split(",") if kv])
            cfg = make_config(
                args.preset, data=str(data), run_dir=str(Path(tmp) / name), steps=args.steps, holdout=500,
                eval_every=10**9, eval_clusters=5, eval_runs=1, plots=False, tensorboard=False, eval_embedder=False,
                max_minutes=0.0, threads=args.threads, log_every=10, **overrides,
            )  # fmt: skip
            t0 = time.perf_counter()
            run_dir = train(cfg, progress=False)
            wall = time.perf_counter() - t0
            rate = steps_per_second(run_dir, cfg.batch_size, cfg.n_critic)
            rows[name] = {"overrides": overrides, "steps_per_s": round(rate, 3), "wall_s": round(wall, 1)}
    base = next(iter(rows.values()))["steps_per_s"]
    for name, row in rows.items():
        row["speed_vs_first"] = round(row["steps_per_s"] / base, 3)
        print(
            f"{name:24s} {row['steps_per_s']:7.2f} steps/s  x{row['speed_vs_first']:.2f}  {row['overrides']}"
        )
    out["variants"] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
