"""Benchmark the shower simulator: full-size CLI run (wall time, peak RSS) and vectorised vs per-event speed.

Usage: .venv/bin/python benchmarks/bench_simulate.py [--n-train N --n-val N --n-test N] [--loop-events N]
Prints a Markdown table; the issue 3 targets are <= 60 s and <= 4 GB for the default 150,000 events.
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

from calogan.simulate import DEFAULT_SIZES, sample_conditions, simulate_showers


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


if __name__ == "__main__":
    main()
