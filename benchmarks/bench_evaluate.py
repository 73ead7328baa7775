"""Benchmark: scoring one split (N generated vs N true, both metrics) against a per-run sklearn baseline.

Times each stage of calogan.metrics.scoring.score_arrays (24 statistics, embeddings, PRD over embeddings, PRD over
statistics; ceiling and standardised variant off, as the competition score needs neither) and the same two
PRDs with calogan.metrics.prd.compute_prd_sklearn (one MiniBatchKMeans(n_init=10) per run, the 2019 approach),
timed on --baseline-runs runs and scaled linearly to --runs. Speed is reported as a ratio in the same run.

    python benchmarks/bench_evaluate.py --n 50000 --runs 100 --clusters 100 --baseline-runs 5
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from calogan.core.runtime import choose_freed_memory_policy
from calogan.ecal.physics import physical_statistics
from calogan.ecal.simulate import simulate_dataset, simulate_showers
from calogan.metrics.embedder import Embedder
from calogan.metrics.prd import compute_prd, compute_prd_sklearn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--baseline-runs", type=int, default=5, help="sklearn runs timed, scaled to --runs")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--allocator",
        choices=("keep", "default"),
        default="keep",
        help="keep: calogan.core.runtime.keep_freed_memory() as calogan.metrics.scoring does (for both sides); default: glibc as is",
    )
    args = parser.parse_args()

    choose_freed_memory_policy(args.allocator == "keep")

    true = simulate_dataset(args.n, seed=11)
    gen = simulate_showers(true.point, true.momentum, true.pdg, np.random.default_rng(12))
    torch.manual_seed(0)
    embedder = Embedder().eval()  # timing only: an untrained embedder costs the same as a trained one
    t = {}
    t0 = time.perf_counter()
    s_gen = physical_statistics(gen, true.point, true.momentum)
    s_true = physical_statistics(true.energy, true.point, true.momentum)
    t["statistics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    e_gen, e_true = embedder.embed(gen), embedder.embed(true.energy)
    t["embedding"] = time.perf_counter() - t0
    kw = dict(num_clusters=args.clusters, seed=args.seed)
    t0 = time.perf_counter()
    r_img = compute_prd(e_gen, e_true, num_runs=args.runs, **kw)
    t["prd_img"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    r_phys = compute_prd(s_gen, s_true, num_runs=args.runs, **kw)
    t["prd_phys"] = time.perf_counter() - t0
    total = sum(t.values())
    t0 = time.perf_counter()
    b_img = compute_prd_sklearn(e_gen, e_true, num_runs=args.baseline_runs, **kw)
    b_phys = compute_prd_sklearn(s_gen, s_true, num_runs=args.baseline_runs, **kw)
    base_prd = (time.perf_counter() - t0) * args.runs / args.baseline_runs
    baseline_total = t["statistics"] + t["embedding"] + base_prd
    out = {
        "n": args.n, "clusters": args.clusters, "runs": args.runs, "baseline_runs": args.baseline_runs,
        "threads": torch.get_num_threads(), "allocator": args.allocator, "stage_s": t, "total_s": total,
        "baseline_prd_s_scaled": base_prd, "baseline_total_s": baseline_total,
        "speedup_prd": base_prd / (t["prd_img"] + t["prd_phys"]), "speedup_total": baseline_total / total,
        "auc_img": r_img.auc, "auc_phys": r_phys.auc, "baseline_auc_img": b_img.auc, "baseline_auc_phys": b_phys.auc,
    }  # fmt: skip
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2)


if __name__ == "__main__":
    main()
