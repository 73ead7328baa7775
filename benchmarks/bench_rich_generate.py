"""Benchmark `python -m calogan.rich.generate`: tracks per second (eager and ONNX) and peak memory vs file size.

Usage: .venv/bin/python benchmarks/bench_rich_generate.py [--checkpoint CK] [--tracks N] [--peak-tracks N ...]

Without --checkpoint a kaon model of the standard preset's architecture (3 x 128, noise 32, tie patterns,
momentum scaling) is trained for --train-steps steps on a small simulated sample: the architecture, not the
training, sets the speed. Track files hold P, ETA, NTRACKS drawn with the RICH simulator's kinematics.
Throughput (--repeats runs of each, the backends interleaved): the command's wall time (reading, generating,
writing) per track, in a fresh process each, so the first-call costs (model load, the in-memory ONNX export
and its parity check) are included; the generate_seconds column is the command's own timer (from the first
chunk to the renamed output).
Peak memory: the maximum resident set size of the command (``/usr/bin/time -v``-like, from getrusage) for
each size in --peak-tracks; bounded memory means the same peak for every size. Prints a Markdown table and
writes --json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from calogan.rich import simulate as rich_sim
from calogan.rich import train as rich_train
from calogan.rich.io import write_table


def write_tracks(path: Path, n: int, seed: int = 0, chunk: int = 1_000_000) -> Path:
    """n tracks (P [GeV], ETA, NTRACKS float32) with the kaon calibration kinematics, written chunk by chunk."""
    schema = {c: np.dtype(np.float32) for c in ("P", "ETA", "NTRACKS")}

    def chunks():
        rng = np.random.default_rng(seed)
        for start in range(0, n, chunk):
            kin = rich_sim.sample_kinematics(min(chunk, n - start), rich_sim.PT_MEDIAN_GEV["kaon"], rng)
            yield {c: kin[:, j].astype(np.float32) for j, c in enumerate(schema)}

    return write_table(path, chunks(), schema, n)


def train_model(folder: Path, steps: int) -> Path:
    """A kaon checkpoint of the standard architecture after ``steps`` steps (speed, not quality)."""
    rich_sim.write_samples(folder / "data", n=20_000, particles=("kaon",), progress=False)
    cfg = rich_train.TrainConfig.from_preset(
        "standard", particle="kaon", data=str(folder / "data"), run_dir=str(folder / "run"), steps=steps,
        holdout=0, eval_every=0, max_minutes=0.0, weights="sweights",
    )  # fmt: skip
    cfg.progress = False
    return rich_train.train(cfg) / "checkpoints" / "last.pt"


def run_generate(checkpoint: Path, tracks: Path, out: Path, backend: str, threads: int | None) -> dict:
    """Run the command in a fresh process under /usr/bin/time -v; wall seconds, its own timer and peak RSS."""
    cmd = [sys.executable, "-m", "calogan.rich.generate", "--checkpoint", str(checkpoint), "--tracks", str(tracks),
           "--out", str(out), "--backend", backend, "--overwrite"]  # fmt: skip
    if threads:
        cmd += ["--threads", str(threads)]
    timed = ["/usr/bin/time", "-v", *cmd] if Path("/usr/bin/time").exists() else cmd
    start = time.perf_counter()
    proc = subprocess.run(timed, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"generate failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rate = re.search(r"; (\d+) tracks/s", proc.stdout)
    n = int(re.search(r": (\d+) tracks", proc.stdout).group(1))
    own = n / float(rate.group(1)) if rate and float(rate.group(1)) > 0 else None
    return {
        "backend": backend,
        "threads": threads,
        "tracks": n,
        "wall_seconds": wall,
        "tracks_per_second_wall": n / wall,
        "generate_seconds": own,
        "tracks_per_second_generate": n / own if own else None,
        "peak_rss_gib": int(peak.group(1)) / 2**20 if peak else None,
        "output_bytes": out.stat().st_size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--checkpoint", help="a RICH checkpoint (default: train a standard-architecture kaon model)"
    )
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--tracks", type=int, default=2_000_000, help="tracks of the throughput runs")
    ap.add_argument("--peak-tracks", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--threads", type=int, nargs="*", default=[0, 1], help="0: the libraries' default")
    ap.add_argument(
        "--peak-runs",
        nargs="*",
        default=["onnx:npz", "onnx:root", "eager:npz"],
        help="BACKEND:FORMAT of the peak runs",
    )
    ap.add_argument("--repeats", type=int, default=1, help="throughput runs of each backend, interleaved")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-rich-generate-") as tmp:
        tmp = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else train_model(tmp, args.train_steps)
        files = {
            n: write_tracks(tmp / f"tracks_{n}.npz", n) for n in sorted({args.tracks, *args.peak_tracks})
        }
        for repeat in range(args.repeats):  # backends interleaved, so a change in the load hits both
            for backend in ("eager", "onnx"):
                for threads in args.threads:
                    row = run_generate(
                        checkpoint, files[args.tracks], tmp / "out.npz", backend, threads or None
                    )
                    rows.append({"kind": "throughput", "repeat": repeat, **row})
                    print(json.dumps(rows[-1]), flush=True)
        for n in args.peak_tracks:
            for backend, suffix in (run.split(":") for run in args.peak_runs):
                row = run_generate(checkpoint, files[n], tmp / f"out.{suffix}", backend, None)
                rows.append({"kind": "peak", "format": suffix, **row})
                print(json.dumps(rows[-1]), flush=True)
                (tmp / f"out.{suffix}").unlink()
    print(
        "\n| run | backend | threads | tracks | out | wall s | tracks/s (wall) | tracks/s (generate) | peak RSS GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gen = f"{r['tracks_per_second_generate']:,.0f}" if r["tracks_per_second_generate"] else "—"
        print(f"| {r['kind']} | {r['backend']} | {r['threads'] or 'default'} | {r['tracks']:,} | {r.get('format', 'npz')}"
              f" | {r['wall_seconds']:.1f} | {r['tracks_per_second_wall']:,.0f} | {gen} | {r['peak_rss_gib']:.2f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "load_average": os.getloadavg()}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
