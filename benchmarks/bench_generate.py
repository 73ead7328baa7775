"""Generation throughput: showers/s of the default generator (eager, TorchScript, ONNX Runtime) and baseline2019.

Run from the repository root:  python benchmarks/bench_generate.py [--repeats R] [--predict-events N] [--json FILE]

All numbers come from one run on one machine; ratios are taken against baseline2019 (eager) in the same run.
Also timed: the built-in parametric simulator (calogan.ecal.simulate) per shower, and predicting both competition
splits (50,250 + 49,500 = 99,750 events) end to end with calogan.ecal.predict (files written to a temp folder).
Weights are random (untrained): throughput does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from calogan.ecal.models import build_generator
from calogan.ecal.predict import predict_with_generator
from calogan.ecal.simulate import sample_conditions, simulate_showers
from calogan.ecal.train import ARCHITECTURE_FIELDS, PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calogan.core.runtime import choose_freed_memory_policy  # noqa: E402
from calogan.ecal.data import CaloData, save_npz, split_path  # noqa: E402
from calogan.ecal.export import (  # noqa: E402
    INPUT_NAMES,
    ParallelOnnxSession,
    RawInputGenerator,
    example_inputs,
    onnx_session,
    save_onnx,
    to_torchscript,
)

BATCHES = (1, 64, 1024)


def build_models() -> dict[str, torch.nn.Module]:
    """The generator of the quick (and long) preset, the class-default generator and the 2019 baseline (random weights)."""
    torch.manual_seed(0)
    quick = {"model": "shower", **{k: v for k, v in PRESETS["quick"].items() if k in ARCHITECTURE_FIELDS}}
    return {
        "quick": build_generator(quick).eval(),
        "quick_no_gates": build_generator({**quick, "cell_gates": False}).eval(),  # the cost of the gates
        "default": build_generator({"model": "shower"}).eval(),
        "baseline2019": build_generator({"model": "baseline2019"}).eval(),
    }


def macs_per_shower(generator) -> float:
    """Multiply-accumulates per shower (machine-independent cost), counted by torch's FlopCounterMode.

    It counts the matrix products and convolutions at the operator level, so functional layers count too.
    """
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        RawInputGenerator(generator)(*example_inputs(4, generator.noise_dim))
    return counter.get_total_flops() / 2 / 4


def time_call(fn, n_events: int, min_time: float = 0.5, repeats: int = 3) -> float:
    """Best-of-``repeats`` showers/s of fn() producing n_events showers (each repeat runs >= min_time)."""
    fn()  # warm-up
    best = 0.0
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = max(best, calls * n_events / elapsed)
    return best


def bench_backends(name: str, generator, tmp: Path, repeats: int) -> dict[str, dict[int, float]]:
    """showers/s per backend and batch size for one generator."""
    wrapped = RawInputGenerator(generator).eval()
    backends = {"eager": wrapped, "torchscript": to_torchscript(generator)}
    out: dict[str, dict[int, float]] = {}
    session = parallel = None
    try:
        onnx_path = save_onnx(generator, tmp / f"{name}.onnx")
        session = onnx_session(onnx_path, threads=torch.get_num_threads())
        parallel = ParallelOnnxSession(onnx_path, workers=torch.get_num_threads())
    except Exception as exc:  # noqa: BLE001 - report and go on with the torch backends
        print(f"  onnx export of {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    for backend, module in backends.items():
        out[backend] = {}
        for b in BATCHES:
            inputs = example_inputs(b, wrapped.noise_dim)

            def run(module=module, inputs=inputs):
                with torch.inference_mode():
                    module(*inputs)

            out[backend][b] = time_call(run, b, repeats=repeats)
            print(f"  {name:13s} {backend:12s} batch {b:5d}: {out[backend][b]:12,.0f} showers/s", flush=True)
    if session is not None and parallel is not None:
        # "onnxruntime": the library's runner (ParallelOnnxSession: one single-threaded session driven by one
        # thread per core on 32-shower chunks); "onnxruntime_1session": one session, intra-op threads = cores
        runners = {"onnxruntime": parallel.run, "onnxruntime_1session": session.run}
        for backend, run_onnx in runners.items():
            out[backend] = {}
            for b in BATCHES:
                feeds = {k: t.numpy() for k, t in zip(INPUT_NAMES, example_inputs(b, wrapped.noise_dim))}
                out[backend][b] = time_call(
                    lambda feeds=feeds, run_onnx=run_onnx: run_onnx(None, feeds), b, repeats=repeats
                )
                print(
                    f"  {name:13s} {backend:20s} batch {b:5d}: {out[backend][b]:12,.0f} showers/s", flush=True
                )
        parallel.close()
    return out


def bench_simulator(n: int = 2000) -> float:
    """Seconds per shower of calogan.ecal.simulate (conditions drawn once, showers timed)."""
    rng = np.random.default_rng(0)
    point, momentum, pdg = sample_conditions(n, rng)
    simulate_showers(point[:100], momentum[:100], pdg[:100], rng)  # warm-up
    start = time.perf_counter()
    simulate_showers(point, momentum, pdg, rng)
    return (time.perf_counter() - start) / n


def bench_predict(generator, tmp: Path, n_val: int, n_test: int, backends: list[str]) -> dict[str, float]:
    """Wall seconds of calogan.ecal.predict writing both prediction files for n_val + n_test events, per backend."""
    rng = np.random.default_rng(1)
    data_dir = tmp / "data"
    for split, n in (("val", n_val), ("test", n_test)):
        point, momentum, pdg = sample_conditions(n, rng)
        save_npz(split_path(data_dir, split), CaloData(point, momentum, pdg).to_arrays())
    seconds = {}
    for backend in backends:
        start = time.perf_counter()
        predict_with_generator(
            generator,
            data_dir,
            tmp / "pred",
            seed=0,
            overwrite=True,
            device="cpu",
            progress=False,
            backend=backend,
        )
        seconds[backend] = time.perf_counter() - start
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of R timings per point (default 3)")
    parser.add_argument(
        "--predict-events", type=int, nargs=2, default=(50250, 49500), metavar=("N_VAL", "N_TEST")
    )
    parser.add_argument(
        "--predict-backends",
        nargs="+",
        default=["torchscript", "onnx", "eager"],
        help="calogan.ecal.predict backends",
    )
    parser.add_argument("--json", help="also write the results as JSON")
    parser.add_argument("--threads", type=int, help="torch/onnxruntime intra-op threads (default: torch's)")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["quick", "quick_no_gates", "default", "baseline2019"],
        help="subset of models",
    )
    parser.add_argument(
        "--allocator",
        choices=("keep", "default"),
        default="keep",
        help="keep: calogan.core.runtime.keep_freed_memory() as every calogan command does; default: glibc as is",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    choose_freed_memory_policy(args.allocator == "keep")  # also for calogan.ecal.predict inside this process
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"allocator {args.allocator}"
    )
    models = {k: v for k, v in build_models().items() if k in args.models}
    results: dict = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "allocator": args.allocator,
    }
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        tmp = Path(tmp)
        for name, gen in models.items():
            params = sum(p.numel() for p in gen.parameters())
            macs = macs_per_shower(gen)
            print(f"{name}: {params:,} parameters, noise_dim {gen.noise_dim}, {macs / 1e6:.1f} M MAC/shower")
            results[name] = {
                "parameters": params,
                "macs_per_shower": macs,
                **bench_backends(name, gen, tmp, args.repeats),
            }
        if "baseline2019" in results and "default" in results:
            base = results["baseline2019"]["eager"][1024]
            results["ratio_default_vs_baseline_b1024"] = {
                backend: results["default"][backend][1024] / base
                for backend in ("eager", "torchscript", "onnxruntime", "onnxruntime_1session")
                if backend in results["default"]
            }
        results["simulator_ms_per_shower"] = 1e3 * bench_simulator()
        results["predict_both_splits_s"] = bench_predict(
            next(iter(models.values())), tmp, *args.predict_events, args.predict_backends
        )
        results["predict_events"] = sum(args.predict_events)
    ratios = results.get("ratio_default_vs_baseline_b1024", {})
    print("ratio default / baseline2019 eager @1024:", {k: round(v, 2) for k, v in ratios.items()})
    print(f"simulator: {results['simulator_ms_per_shower']:.3f} ms/shower")
    for backend, sec in results["predict_both_splits_s"].items():
        print(f"predict {results['predict_events']:,} events (both splits), backend {backend}: {sec:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
