"""Calibration of the FPD error bars on null replicas: is (value − reference) / error a unit-width pull?

Usage: python benchmarks/bench_fpd_pull.py [--replicas 100] [--n 2000] [--dims 5] [--shift 0] [--json FILE]
       python benchmarks/bench_fpd_pull.py --time 50000 --dims 20     (seconds per call of each convention)
       python benchmarks/bench_fpd_pull.py --simulated 15 --n 1200 --scale 1.3   (the evaluator's FPD, simulator)

Each replica draws three independent samples of n events from one correlated Gaussian in ``--dims``
dimensions (``--shift`` moves the generated one by shift·k/dims in feature k): generated, real A and real B.

- ``calogan``: :func:`calogan.metrics.distances.fpd_with_reference` (generated vs B, reference A vs B). Pulls
  ``value`` / ``error`` about 0 (the N → ∞ value is 0 for a perfect generator; with ``--shift``, about the
  replicas' mean) and (``value`` − ``ref``) / ``diff_error`` about 0.
- ``jetnet``: :func:`calogan.metrics.distances.fpd_jetnet` (B vs generated; batches from n/4 to n). Its value
  is not extrapolated away from the samples' own finite size, so its expectation under the null is positive;
  the pull is taken about the replicas' mean, for ``error`` and for jetnet's own ``fit_error``.

A calibrated error gives a pull standard deviation of 1 (target 0.8–1.25) and about 0.3 % of |pull| > 3.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np

from calogan.core.runtime import atomic_write_json, run_cli
from calogan.ecal.physics import physical_statistics
from calogan.ecal.simulate import simulate_dataset
from calogan.metrics import distances as dist
from calogan.metrics import two_sample as xm


def correlated_gaussian(dims: int, seed: int) -> np.ndarray:
    """A fixed (dims, dims) Cholesky factor of a covariance with unequal variances and correlations."""
    a = np.random.default_rng(seed).normal(size=(dims, dims))
    return np.linalg.cholesky(a @ a.T / dims + np.eye(dims))


def draw(chol: np.ndarray, n: int, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    """n rows of the Gaussian with Cholesky factor ``chol``, moved by shift·k/dims in feature k."""
    dims = len(chol)
    return rng.normal(size=(n, dims)) @ chol.T + shift * np.arange(1, dims + 1) / dims


def pull_summary(values: np.ndarray, errors: np.ndarray, reference: float | np.ndarray) -> dict[str, float]:
    """Pull sd and mean, fraction |pull| > 3, median error against the values' spread."""
    pull = (values - reference) / errors
    spread = float(np.std(values - reference, ddof=1))
    return {"pull_sd": float(np.std(pull, ddof=1)), "pull_mean": float(pull.mean()),
            "frac_abs_pull_gt_3": float((np.abs(pull) > 3).mean()), "median_error": float(np.median(errors)),
            "spread": spread, "median_error_over_spread": float(np.median(errors)) / spread}  # fmt: skip


def pull_replicas(
    replicas: int = 100,
    n: int = 2000,
    dims: int = 5,
    shift: float = 0.0,
    conventions: Sequence[str] = ("calogan", "jetnet"),
    seed: int = 0,
    jetnet_batches: int = 5,
    jetnet_points: int = 4,
    repeats: int = 10,
) -> dict:
    """Values and errors of each convention on ``replicas`` independent replicas, and their pull summaries."""
    chol = correlated_gaussian(dims, seed)
    rows: dict[str, list] = {c: [] for c in conventions}
    for r in range(replicas):
        rng = np.random.default_rng([seed, r])
        gen, real_a, real_b = draw(chol, n, rng, shift), draw(chol, n, rng), draw(chol, n, rng)
        if "calogan" in rows:
            c = dist.fpd_with_reference(gen, real_a, real_b, seed=r, repeats=repeats)
            rows["calogan"].append([c["value"], c["error"], c["ref"], c["diff_error"]])
        if "jetnet" in rows:
            j = dist.fpd_jetnet(real_b, gen, min_samples=n // 4, max_samples=n, num_batches=jetnet_batches,
                                num_points=jetnet_points, seed=r)  # fmt: skip
            rows["jetnet"].append([j["value"], j["error"], j.get("fit_error", j["error"])])
    out: dict = {"replicas": replicas, "n": n, "dims": dims, "shift": shift, "seed": seed, "calogan_repeats": repeats,
                 "conventions": {}}  # fmt: skip
    if "calogan" in rows:
        v, e, ref, de = np.array(rows["calogan"]).T
        centre = 0.0 if shift == 0 else float(v.mean())
        out["conventions"]["calogan"] = {
            "value_pull": {"reference": "0 (the N -> inf FPD of equal distributions)" if shift == 0
                           else "mean of the replicas' values", **pull_summary(v, e, centre)},
            "diff_pull": {"reference": "fpd_ref (real A vs real B, same real B)", **pull_summary(v - ref, de, 0.0)},
        }  # fmt: skip
    if "jetnet" in rows:
        v, e, fe = np.array(rows["jetnet"]).T
        out["conventions"]["jetnet"] = {
            "reference": "mean of the replicas' values (the value keeps the finite-sample bias)",
            "mean_value": float(v.mean()), "error": pull_summary(v, e, float(v.mean())),
            "fit_error": pull_summary(v, fe, float(v.mean())),
            "options": {"min_samples": n // 4, "max_samples": n, "num_batches": jetnet_batches,
                        "num_points": jetnet_points},
        }  # fmt: skip
    return out


def simulated_replicas(
    datasets: int = 15, n: int = 1200, scale: float = 1.3, seed: int = 100, convention: str = "calogan"
) -> dict:
    """The evaluator's FPD (``fpd_metric``) of the true images × ``scale`` on independent simulated datasets.

    Scale 1.3 is a strongly wrong generator, scale 1 a perfect one (generated[A] is then true[A], independent of
    true[B]): the spread of the value over the datasets against the median of its errors, and the pull about
    the datasets' mean.
    """
    rows = []
    for s in range(datasets):
        true = simulate_dataset(n, seed=seed + s)
        gen = true.energy * scale
        res = xm.fpd_metric(gen, true, physical_statistics(gen, true.point, true.momentum),
                            physical_statistics(true.energy, true.point, true.momentum), seed=seed + s,
                            convention=convention)  # fmt: skip
        rows.append([res["fpd"], res["fpd_err"], res.get("fpd_fit_err", np.nan)])
    v, e, fe = np.array(rows).T
    return {"datasets": datasets, "n": n, "scale": scale, "seed": seed, "convention": convention,
            "mean_value": float(v.mean()),
            "pull": pull_summary(v, e, float(v.mean())),
            **({"fit_error_pull": pull_summary(v, fe, float(v.mean()))} if convention == "jetnet" else {})}  # fmt: skip


def time_calls(n: int, dims: int, seed: int = 0) -> dict[str, float]:
    """Seconds of one call of each convention on n × dims (calogan: value and reference; jetnet: defaults)."""
    chol = correlated_gaussian(dims, seed)
    rng = np.random.default_rng(seed)
    gen, real_a, real_b = draw(chol, n, rng), draw(chol, n, rng), draw(chol, n, rng)
    t0 = time.perf_counter()
    dist.fpd_with_reference(gen, real_a, real_b, seed=1)
    t1 = time.perf_counter()
    dist.fpd_jetnet(real_b, gen, seed=1)
    t2 = time.perf_counter()
    return {"n": n, "dims": dims, "calogan_fpd_with_reference_s": t1 - t0, "jetnet_fpd_s": t2 - t1}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the replicas (or time one call), print the pull summaries and optionally write them as JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--dims", type=int, default=5)
    ap.add_argument("--shift", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--conventions", default="calogan,jetnet", help="with --simulated: the first one only")
    ap.add_argument("--jetnet-batches", type=int, default=5)
    ap.add_argument("--jetnet-points", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=10, help="calogan: subsamples per size")
    ap.add_argument(
        "--time", type=int, default=0, help="instead: time one call of each convention on N events"
    )
    ap.add_argument(
        "--simulated", type=int, default=0, help="instead: FPD of images x --scale on this many datasets"
    )
    ap.add_argument(
        "--scale", type=float, default=1.3, help="--simulated: energy scale of the generated images"
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.time:
        res = time_calls(args.time, args.dims, args.seed)
    elif args.simulated:
        res = simulated_replicas(
            args.simulated, args.n, args.scale, 100 + args.seed, args.conventions.split(",")[0]
        )
        res["seconds"] = time.perf_counter() - t0
    else:
        res = pull_replicas(args.replicas, args.n, args.dims, args.shift, args.conventions.split(","), args.seed,
                            args.jetnet_batches, args.jetnet_points, args.repeats)  # fmt: skip
        res["seconds"] = time.perf_counter() - t0
    print(json.dumps(res, indent=1))
    if args.json:
        atomic_write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
