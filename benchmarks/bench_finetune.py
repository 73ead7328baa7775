"""Speed of the fine-tuning physics losses relative to the exact (hard) competition statistics, same run.

Times, per batch of simulated showers: calogan.ecal.physics.physical_statistics (exact, non-differentiable, the
baseline), the surrogate regressor forward+backward, and the differentiable soft statistics forward+backward.
Usage: python benchmarks/bench_finetune.py [--batch 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from calogan.ecal.physics import physical_statistics
from calogan.ecal.simulate import simulate_dataset
from calogan.ecal.soft_stats import energy_response_t, soft_asymmetries, soft_widths
from calogan.studies.surrogate import SurrogateRegressor


def best_time(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    data = simulate_dataset(a.batch, seed=0)
    img = torch.from_numpy(data.energy)
    cond = torch.from_numpy(data.conditions())
    model = SurrogateRegressor(1)

    def hard() -> None:
        physical_statistics(data.energy, data.point, data.momentum)

    def surrogate() -> None:
        x = img.clone().requires_grad_(True)
        model(x, cond).sum().backward()

    def soft() -> None:
        x = img.clone().requires_grad_(True)
        (
            energy_response_t(x, cond).sum() + soft_asymmetries(x, cond).sum() + soft_widths(x, cond).sum()
        ).backward()

    base = best_time(hard, a.repeats)
    print(f"batch {a.batch}, torch threads {torch.get_num_threads()}")
    print(f"exact physical_statistics (24, no grad): {1e3 * base:8.2f} ms  ratio 1.00")
    for name, fn in (("surrogate fwd+bwd", surrogate), ("soft stats fwd+bwd", soft)):
        t = best_time(fn, a.repeats)
        print(f"{name:40s}: {1e3 * t:8.2f} ms  ratio {t / base:.2f}")


if __name__ == "__main__":
    main()
