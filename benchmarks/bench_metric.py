"""Benchmark the numerical core of the metric: physical statistics and PRD (batched torch vs sklearn baseline).

Usage: .venv/bin/python benchmarks/bench_metric.py [--n 50000] [--runs 100] [--baseline-runs 2] [--threads T]
Data: simulated showers (calogan.ecal.simulate, seed 0 vs seed 1). Features: the 24 physical statistics and a
64-d stand-in for the image embedding (a fixed random projection of log1p(image), then tanh) — the PRD
cost depends on n, d, K and R, not on what the features mean. The sklearn baseline (one MiniBatchKMeans(n_init=10)
fit per run) is timed on --baseline-runs runs and scaled linearly to --runs; the script says so in its output.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from calogan.ecal.data import N_CELLS
from calogan.ecal.physics import _reference_statistics_one, physical_statistics
from calogan.ecal.simulate import simulate_dataset
from calogan.metrics.prd import compute_prd, compute_prd_sklearn


def embed_stand_in(images: np.ndarray, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Fixed random 64-d projection of log1p(images) through tanh (an embedding-shaped feature set)."""
    proj = np.random.default_rng(seed).normal(0, 1 / np.sqrt(N_CELLS), (N_CELLS, dim)).astype(np.float32)
    return np.tanh(np.log1p(images.reshape(len(images), -1)) @ proj)


def timed(fn, *args, **kwargs):
    """(result, wall seconds) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    """Runs the benchmark and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000, help="events per sample (generated and true)")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=100)
    ap.add_argument(
        "--baseline-runs", type=int, default=2, help="sklearn runs actually timed (scaled to --runs)"
    )
    ap.add_argument("--loop-events", type=int, default=200, help="events for the per-event loop reference")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    real = simulate_dataset(args.n, seed=0)
    fake = simulate_dataset(args.n, seed=1)
    rows = []
    stats_real, t_stats = timed(physical_statistics, real.energy, real.point, real.momentum)
    k = args.loop_events
    _, t_loop = timed(
        lambda: [_reference_statistics_one(real.energy[i], real.point[i], real.momentum[i]) for i in range(k)]
    )
    rows.append(
        (f"physical_statistics, {args.n} images", t_stats, f"loop reference: {t_loop / k * args.n:.0f} s")
    )
    stats_fake = physical_statistics(fake.energy, real.point, real.momentum)
    emb_real, emb_fake = embed_stand_in(real.energy), embed_stand_in(fake.energy)
    width_var = stats_real.var(axis=0)
    share = width_var[2] / width_var.sum()

    total_fast = t_stats * 2
    for name, ev, rf in (("phys 24-d", stats_fake, stats_real), ("img 64-d", emb_fake, emb_real)):
        fast, t_fast = timed(compute_prd, ev, rf, num_clusters=args.clusters, num_runs=args.runs)
        total_fast += t_fast
        base, t_base = timed(
            compute_prd_sklearn, ev, rf, num_clusters=args.clusters, num_runs=args.baseline_runs
        )
        t_base_scaled = t_base / args.baseline_runs * args.runs
        rows.append(
            (
                f"PRD {name}, {args.n} vs {args.n}, K={args.clusters}, R={args.runs}",
                t_fast,
                f"sklearn baseline {t_base_scaled:.0f} s (timed {args.baseline_runs} runs, scaled) → "
                f"{t_base_scaled / t_fast:.1f}× faster; AUC fast {fast.auc:.3f}±{fast.auc_std:.3f}, "
                f"sklearn {base.auc:.3f}±{base.auc_std:.3f}",
            )
        )
    rows.append(("full split: stats ×2 + both PRDs", total_fast, ""))
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"load average at end {os.getloadavg()[0]:.1f}"
    )
    print(f"longitudinal-width share of the total variance of the raw 24 statistics: {share:.4f}")
    print("\n| task | seconds | notes |\n|---|---|---|")
    for task, sec, note in rows:
        print(f"| {task} | {sec:.2f} | {note} |")


if __name__ == "__main__":
    main()
