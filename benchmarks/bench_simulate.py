"""Benchmark the shower simulator: full-size CLI run (wall time, peak RSS) and vectorised vs per-event speed.

Usage: .venv/bin/python benchmarks/bench_simulate.py [--n-train N --n-val N --n-test N] [--loop-events N]
Prints a Markdown table; the targets are <= 60 s and <= 4 GB for the default 150,000 events.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import QuantileTransformer

from calogan.ecal.physics import barycentre_residual, physical_statistics
from calogan.ecal.simulate import DEFAULT_SIZES, sample_conditions, simulate_dataset, simulate_showers


def run_cli(n_train: int, n_val: int, n_test: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one `python -m calogan.simulate` run in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "calogan.simulate", "--out", tmp, "--seed", "0"]
        cmd += ["--n-train", str(n_train), "--n-val", str(n_val), "--n-test", str(n_test)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "TQDM_DISABLE": "1"}, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    return wall, peak_kib / 2**20


def events_per_second(n: int, chunk: int, seed: int = 0) -> float:
    """Showers per second of simulate_showers with the given chunk size (chunk=1 is a per-event loop)."""
    rng = np.random.default_rng(seed)
    point, momentum, pdg = sample_conditions(n, rng)
    simulate_showers(point[:chunk], momentum[:chunk], pdg[:chunk], rng, chunk=chunk)  # warm-up
    t0 = time.perf_counter()
    simulate_showers(point, momentum, pdg, rng, chunk=chunk)
    return n / (time.perf_counter() - t0)


def physics_table(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """The simulator physics checks (docs/data.md) on n simulated events, as (quantity, value) rows."""
    data = simulate_dataset(n, seed=seed)
    e = data.energy.reshape(n, -1).astype(np.float64)
    total, p = e.sum(axis=1), data.p_abs
    ratio = total / p
    centre = data.point[:, :2] + 25.0 * data.momentum[:, :2] / data.momentum[:, 2:3]
    contained = (np.abs(centre) < 6.0).all(axis=1)
    rows = [("median image sum / abs(p) [units/GeV]", f"{np.median(ratio):.1f}")]
    for lo, hi in [(2, 6), (6, 20), (20, 100)]:
        sel = contained & (p >= lo) & (p < hi)
        q16, q50, q84 = np.percentile(ratio[sel], [16, 50, 84])
        expect = np.hypot(0.10 / np.sqrt(np.sqrt(lo * hi)), 0.01)
        rows.append(
            (
                f"relative spread, contained, {lo}-{hi} GeV (a/sqrt(E) (+) b gives {expect:.3f})",
                f"{(q84 - q16) / 2 / q50:.3f}",
            )
        )
    res = barycentre_residual(data.energy, data.point, data.momentum)[contained]
    rows.append(
        (
            "barycentre - expected centre, RMS x / y, contained [cm]",
            "{:.2f} / {:.2f}".format(*np.sqrt((res**2).mean(0))),
        )
    )
    frac = (e >= 1e-5 * total[:, None]).mean(axis=1)
    rows.append(("mean fraction of cells >= 1e-5 of the sum", f"{frac.mean():.2f}"))
    feats = np.column_stack([physical_statistics(data.energy, data.point, data.momentum), np.log(p)])
    y = data.pdg == 22
    half = n // 2
    scaler = QuantileTransformer(n_quantiles=200, output_distribution="normal")
    clf = make_pipeline(scaler, LogisticRegression(max_iter=2000)).fit(feats[:half], y[:half])
    auc = roc_auc_score(y[half:], clf.predict_proba(feats[half:])[:, 1])
    rows.append(("e/gamma ROC AUC, logistic regression on the 24 statistics + log abs(p)", f"{auc:.3f}"))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the results as a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=DEFAULT_SIZES["train"])
    parser.add_argument("--n-val", type=int, default=DEFAULT_SIZES["val"])
    parser.add_argument("--n-test", type=int, default=DEFAULT_SIZES["test"])
    parser.add_argument(
        "--vector-events", type=int, default=20000, help="events for the in-process vectorised rate"
    )
    parser.add_argument(
        "--loop-events", type=int, default=1000, help="events for the per-event-loop baseline"
    )
    parser.add_argument(
        "--physics", type=int, default=0, help="also print the physics checks on this many events"
    )
    args = parser.parse_args(argv)

    total = args.n_train + args.n_val + args.n_test
    wall, peak = run_cli(args.n_train, args.n_val, args.n_test)
    vec = events_per_second(args.vector_events, chunk=4096)
    loop = events_per_second(args.loop_events, chunk=1)
    print("| measurement | value |")
    print("|---|---|")
    print(
        f"| `python -m calogan.simulate`, {total:,} events: wall time (incl. start-up, writing, sha256) | {wall:.1f} s |"
    )
    print(f"| same run: events/s end to end | {total / wall:,.0f} |")
    print(f"| same run: peak RSS | {peak:.2f} GiB |")
    print(f"| simulate_showers vectorised (chunks of 4096), events/s | {vec:,.0f} |")
    print(f"| baseline: same code one event at a time, events/s | {loop:,.0f} |")
    print(f"| speed-up of the vectorised path over the per-event loop | {vec / loop:.0f}x |")
    if args.physics:
        print(f"\n| physics check ({args.physics:,} events, seed 0) | value |\n|---|---|")
        for name, value in physics_table(args.physics):
            print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
