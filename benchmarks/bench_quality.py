"""Quality of trained checkpoints on the validation solution (against the quality targets of calogan.metrics.response), one row per checkpoint.

For each checkpoint: generate the validation split with the EMA generator (``calogan.ecal.predict.generate``,
seed 0), split the events into two random halves A and B, and report
- the score of generated[A] against true[A] and the real-vs-real ceiling true[B] against true[A], both at
  N/2 vs N/2 (the same sample size, so the fraction of the ceiling is fair), K and R as given;
- the conditional physics checks of ``calogan.metrics.response`` (6 log-spaced |p| bins, barycentre bias) on all
  validation events, and the particle-type switch on ``--switch-events`` of them;
- the stricter two-sample tests on all validation events (``calogan.metrics.two_sample``, each with its
  real-vs-real reference): classifier AUC on high-level features and on cells, FPD, worst separation power,
  PRDC coverage;
- a one-line summary per model against the fidelity targets (``TARGETS``), with the ratios per |p| bin.

    python benchmarks/bench_quality.py --data data quick=runs/quick/checkpoints/best.pt \\
        starterkit=runs/starterkit/checkpoints/best.pt --json benchmarks/quality.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from calogan.ecal.data import load_npz, split_path
from calogan.ecal.models import count_parameters, load_generator
from calogan.ecal.physics import physical_statistics
from calogan.ecal.predict import generate
from calogan.metrics.embedder import load_or_train_embedder
from calogan.metrics.response import particle_type_switch, physics_checks
from calogan.metrics.scoring import real_vs_real, score_arrays
from calogan.metrics.tables import format_physics_table
from calogan.metrics.two_sample import cls_cc_metric, cls_metric, fpd_metric, prdc_metric, sep_metric


def fidelity_summary(fraction: float, strict: dict, physics: dict) -> dict:
    """The numbers of the fidelity target table, one dict per model (ratios per |p| bin, generated / real)."""
    bins = [r for r in physics["energy_bins"] if r["response_ratio"] is not None]
    core = [r for r in physics["core"] if r.get("max_cell_real")]
    return {
        "fraction_of_ceiling": round(fraction, 4),
        "auc_high": round(strict["cls"]["auc_high"], 4), "auc_high_ref": round(strict["cls"]["auc_high_ref"], 4),
        "auc_low": round(strict["cls"]["auc_low"], 4), "auc_low_ref": round(strict["cls"]["auc_low_ref"], 4),
        "auc_cc_high": round(strict["cls_cc"]["auc_high"], 4),
        "auc_cc_high_ref": round(strict["cls_cc"]["auc_high_ref"], 4),
        "sep_max": round(strict["sep"]["sep_max"], 4), "sep_max_observable": strict["sep"]["sep_max_observable"],
        "fpd": round(strict["fpd"]["fpd"], 3), "fpd_ref": round(strict["fpd"]["fpd_ref"], 3),
        "coverage": round(strict["prdc"]["coverage"], 3), "coverage_ref": round(strict["prdc"]["coverage_ref"], 3),
        "resolution_ratio": [round(r["resolution_ratio"], 3) for r in bins],
        "hottest_cell_ratio": [round(r["max_cell_gen"] / r["max_cell_real"], 3) for r in core],
        "core_3x3_ratio": [round(r["e3x3_gen"] / r["e3x3_real"], 3) for r in core],
        "response_ratio": [round(r["response_ratio"], 4) for r in bins],
        "barycentre_bias_cm": [round(physics["barycentre"]["bias_x"], 3), round(physics["barycentre"]["bias_y"], 3)],
    }  # fmt: skip


def evaluate_checkpoints(
    data: str,
    checkpoints: dict[str, str],
    clusters: int = 100,
    runs: int = 100,
    seed: int = 1337,
    switch_events: int = 10000,
    verbose: bool = True,
) -> dict:
    """Score each NAME -> checkpoint path on DATA's validation solution; the dict written by ``--json``."""
    true = load_npz(split_path(data, "val", "solution"), require_energy=True)
    embedder = load_or_train_embedder(data)
    perm = np.random.default_rng(seed).permutation(len(true))
    half = len(true) // 2
    a, b = np.sort(perm[:half]), np.sort(perm[half : 2 * half])
    true_a, true_b = true.subset(a), true.subset(b)
    kw = dict(clusters=clusters, runs=runs, seed=seed)
    ceiling = real_vs_real(
        physical_statistics(true_b.energy, true_b.point, true_b.momentum),
        physical_statistics(true_a.energy, true_a.point, true_a.momentum),
        embedder.embed(true_b.energy),
        embedder.embed(true_a.energy),
        **kw,
    )
    stats_true = physical_statistics(true.energy, true.point, true.momentum)
    emb_true = embedder.embed(true.energy)
    out = {"data": str(data), "n_val": len(true), "n_half": half, **kw, "ceiling": ceiling, "models": {}}
    if verbose:
        print(
            f"ceiling (true B vs true A, {half} vs {half}): {ceiling['score']:.4f} ± {ceiling['score_std']:.4f}"
        )
    for name, path in checkpoints.items():
        gen_model, _ = load_generator(path)
        t0 = time.perf_counter()
        images = generate(gen_model, true, seed=0, backend="torchscript")
        gen_s = time.perf_counter() - t0
        score = score_arrays(images[a], true_a, embedder, ceiling=False, **kw)
        physics = physics_checks(images, true)
        sub = true.subset(slice(0, switch_events))
        switch = particle_type_switch(gen_model, sub, seed=0)
        stats_gen = physical_statistics(images, true.point, true.momentum)
        strict = {
            "cls": cls_metric(images, true, stats_gen, stats_true),
            "fpd": fpd_metric(images, true, stats_gen, stats_true),
            "sep": sep_metric(images, true, stats_gen, stats_true),
            "prdc": prdc_metric(images, true, emb_gen=embedder.embed(images), emb_true=emb_true),
            "cls_cc": cls_cc_metric(images, true, kinds=("high",)),
        }  # fmt: skip
        summary = fidelity_summary(score["score"] / ceiling["score"], strict, physics)
        out["models"][name] = {
            "summary": summary,
            "strict": {
                k: (
                    {kk: vv for kk, vv in v.items() if kk not in ("table", "high", "high_ref")}
                    if k in ("sep", "cls_cc")
                    else v
                )
                for k, v in strict.items()
            },
            "checkpoint": path,
            "parameters": count_parameters(gen_model),
            "generate_val_s": gen_s,
            "score": score,
            "fraction_of_ceiling": score["score"] / ceiling["score"],
            "physics": physics,
            "particle_type_switch": {k: v for k, v in switch.items() if k != "statistics"},
        }
        if verbose:
            print(
                f"\n{name}: score {score['score']:.4f} ± {score['score_std']:.4f} (AUC_img {score['auc_img']:.4f}, "
                f"AUC_phys {score['auc_phys']:.4f}, standardised {score['standardised']['score']:.4f}) = "
                f"{score['score'] / ceiling['score']:.3f} of the ceiling; type switch: sign agreement "
                f"{switch['sign_agreement']}, correlation {switch['correlation']}"
            )
            print(format_physics_table(physics))
            print(json.dumps(summary))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="NAME=PATH of each checkpoint")
    parser.add_argument("--data", default="data")
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--switch-events", type=int, default=10000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    checkpoints = dict(item.partition("=")[::2] for item in args.checkpoints)
    out = evaluate_checkpoints(
        args.data, checkpoints, args.clusters, args.runs, args.seed, args.switch_events
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2, default=float)


if __name__ == "__main__":
    main()
