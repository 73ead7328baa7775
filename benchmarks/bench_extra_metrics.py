"""Time each extra metric on simulator data, as ratios to the 24-statistics computation in the same run.

Usage: python benchmarks/bench_extra_metrics.py [--n 50000] [--metrics cls,fpd,kpd,sep,prdc] [--seed 0] [--fpd-convention calogan|jetnet] [--json FILE]

``--cc-check`` instead runs the CaloChallenge classifier protocol at several settings (``--cc-configs``, width x
epochs : seeds; the published ones are 2048x50) on a re-simulation scaled by ``--scale``: a reduction is
acceptable when the AUCs differ by no more than their seed-to-seed spread.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np

from calogan.core.runtime import atomic_write_json, run_cli, select_device
from calogan.ecal.physics import physical_statistics
from calogan.ecal.simulate import simulate_dataset, simulate_showers
from calogan.metrics import calochallenge as cc
from calogan.metrics import two_sample as xm


def cc_check(n: int, seed: int, scale: float, configs: str, kinds: Sequence[str], device) -> dict:
    """Field-protocol AUCs per classifier settings and seed; ``configs`` like "256x20:3,512x40:2" (width x epochs:seeds)."""
    true = simulate_dataset(n, seed=seed)
    gen = simulate_showers(true.point, true.momentum, true.pdg, np.random.default_rng(seed + 1)) * scale
    out: dict = {"n": n, "scale": scale, "runs": []}
    for item in configs.split(","):
        shape, count = item.split(":")
        width, epochs = (int(v) for v in shape.split("x"))
        settings = cc.CCSettings(width=width, epochs=epochs)
        for s in range(int(count)):
            t0 = time.perf_counter()
            res = xm.cls_cc_metric(gen, true, seed=100 + s, device=device, settings=settings, kinds=kinds,
                                   reference=False)  # fmt: skip
            row = {**settings.describe(), "seed": 100 + s, "seconds": time.perf_counter() - t0}
            for kind in kinds:
                row.update({f"auc_{kind}": res[f"auc_{kind}"], f"best_epoch_{kind}": res[kind]["best_epoch"]})
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Simulate n events and a re-simulation of the same conditions, then time every selected metric."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--metrics", default=",".join(xm.EXTRA_METRICS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--fpd-convention", default="calogan", choices=("calogan", "jetnet"), help="FPD/KPD convention"
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--cc-check", action="store_true", help="default vs published CaloChallenge classifier")
    ap.add_argument("--scale", type=float, default=1.08, help="--cc-check: energy scale of the re-simulation")
    ap.add_argument("--cc-configs", default="256x20:3,2048x50:2", help="--cc-check: WIDTHxEPOCHS:SEEDS list")
    ap.add_argument("--cc-kinds", default="high,low", help="--cc-check: feature sets")
    args = ap.parse_args(argv)
    device = select_device("auto")
    if args.cc_check:
        rows = cc_check(args.n, args.seed, args.scale, args.cc_configs, args.cc_kinds.split(","), device)
        if args.json:
            atomic_write_json(args.json, rows)
        return 0
    true = simulate_dataset(args.n, seed=args.seed)
    gen = simulate_showers(true.point, true.momentum, true.pdg, np.random.default_rng(args.seed + 1))
    t0 = time.perf_counter()
    stats_true = physical_statistics(true.energy, true.point, true.momentum)
    stats_gen = physical_statistics(gen, true.point, true.momentum)
    base = time.perf_counter() - t0
    rows = {"n": args.n, "device": str(device), "fpd_convention": args.fpd_convention, "baseline_stats_s": base,
            "metrics": {}}  # fmt: skip
    print(f"baseline: 24 statistics of both samples, {args.n} + {args.n} events: {base:.1f} s")
    for name in args.metrics.split(","):
        t0 = time.perf_counter()
        res = xm.EXTRA_METRICS[name](
            gen_images=gen, true_images=true.energy, true=true, stats_gen=stats_gen, stats_true=stats_true,
            emb_gen=None, emb_true=None, seed=args.seed, device=device, convention=args.fpd_convention,
        )  # fmt: skip
        dt = time.perf_counter() - t0
        summary = {k: v for k, v in res.items() if isinstance(v, float)}
        rows["metrics"][name] = {"seconds": dt, "ratio_to_baseline": dt / base, "summary": summary}
        print(
            f"{name:5s} {dt:7.1f} s  ({dt / base:5.1f}x baseline)  {json.dumps({k: round(v, 4) for k, v in summary.items()})}"
        )
    total = sum(r["seconds"] for r in rows["metrics"].values())
    print(f"total extra metrics: {total:.1f} s")
    if args.json:
        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
