"""Which field-protocol high-level feature gives a generator away: classifier AUC per feature.

For each checkpoint, the generator draws showers for the first N validation events (conditions A) and they are
compared with the real showers of the next N events (conditions B), on CaloChallenge's high-level features
(calogan.metrics.calochallenge). A gradient-boosting classifier, 3-fold cross-validated, gives the AUC on all
features, on the conditions alone (the reference: ≈ 0.5), and on each shower feature alone and with the
conditions. A feature whose AUC alone is near the AUC on all features is what a classifier test sees. The
radial profile (mean energy fraction in rings around the expected shower centre, and the fraction of the ring's
cells at or above CaloChallenge's 1 MeV readout threshold) shows where the widths and centres come from. The
FPD breakdown splits the Fréchet distance on the kit's 29 Gaussianised high-level features (the FPD metric's
features, at the full sample size, no extrapolation) into its mean and covariance parts, the 1-d distance of each
feature, and how much the distance falls when one feature is left out; real against real gives its floor.

    python benchmarks/diagnose_features.py NAME=DATA_DIR=CHECKPOINT [...] [--events 10000] [--fpd-only] [--json FILE]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from calogan.core.errors import InputError
from calogan.core.runtime import atomic_write_json, run_cli
from calogan.ecal.data import N_CELLS, load_npz, split_path
from calogan.ecal.models import load_generator
from calogan.ecal.predict import generate
from calogan.ecal.soft_stats import RING_EDGES_CM, distance_from_expected_centre, ring_index
from calogan.metrics import calochallenge as cc
from calogan.metrics import two_sample
from calogan.metrics.distances import frechet_distance


def radial_profile(images: np.ndarray, data) -> dict:
    """Per ring: mean energy fraction and mean fraction of the ring's cells at or above the 1 MeV readout threshold."""
    which = ring_index(distance_from_expected_centre(torch.from_numpy(data.conditions()).double())).numpy()
    e = images.astype(np.float64)
    total = np.maximum(e.sum(axis=(1, 2)), 1e-12)
    lit = e >= cc.THRESHOLD_MEV * cc.UNITS_PER_MEV  # the CaloChallenge features keep cells at the threshold
    fractions, above = [], []
    for k in range(len(RING_EDGES_CM) - 1):
        ring = which == k
        fractions.append(float(((e * ring).sum(axis=(1, 2)) / total).mean()))
        above.append(float(((lit & ring).sum(axis=(1, 2)) / np.maximum(ring.sum(axis=(1, 2)), 1)).mean()))
    return {
        "ring_edges_cm": list(RING_EDGES_CM),
        "energy_fraction": fractions,
        "cells_above_threshold": above,
    }


def cross_validated_auc(gen: np.ndarray, real: np.ndarray, seed: int = 0) -> float:
    """AUC of a 3-fold cross-validated gradient-boosting classifier, generated (0) against real (1)."""
    x, y = np.r_[gen, real], np.r_[np.zeros(len(gen)), np.ones(len(real))]
    model = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    return float(roc_auc_score(y, cross_val_predict(model, x, y, cv=3, method="predict_proba")[:, 1]))


def feature_aucs(gen_features: np.ndarray, real_features: np.ndarray) -> dict:
    """AUC on all features, on the conditions alone, and per shower feature alone and with the conditions."""
    n_shower = len(cc.HIGH_LEVEL_NAMES) - len(cc.CONDITION_NAMES)
    conditions = list(range(n_shower, len(cc.HIGH_LEVEL_NAMES)))
    out = {
        "all": cross_validated_auc(gen_features, real_features),
        "conditions": cross_validated_auc(gen_features[:, conditions], real_features[:, conditions]),
    }
    for j, name in enumerate(cc.HIGH_LEVEL_NAMES[:n_shower]):
        out[f"{name} alone"] = cross_validated_auc(gen_features[:, [j]], real_features[:, [j]])
        cols = [j, *conditions]
        out[f"{name} + conditions"] = cross_validated_auc(gen_features[:, cols], real_features[:, cols])
    means = {
        name: [float(gen_features[:, j].mean()), float(real_features[:, j].mean())]
        for j, name in enumerate(cc.HIGH_LEVEL_NAMES[:n_shower])
    }
    return {"auc": out, "mean_generated_real": means}


def fpd_breakdown(gen: np.ndarray, real: np.ndarray, floor: np.ndarray) -> dict:
    """Fréchet distance of Gaussianised features ``gen`` and ``real`` (``floor``: a second real sample): total, mean
    part |Δμ|², covariance part, per feature the 1-d distance Δμ² + Δσ² and the total without that feature."""
    total = frechet_distance(gen, real)
    mean_part = float(((gen.mean(axis=0) - real.mean(axis=0)) ** 2).sum())
    one_d = (gen.mean(axis=0) - real.mean(axis=0)) ** 2 + (gen.std(axis=0) - real.std(axis=0)) ** 2
    keep = np.ones(gen.shape[1], bool)
    without = []
    for j in range(gen.shape[1]):
        keep[j] = False
        without.append(frechet_distance(gen[:, keep], real[:, keep]))
        keep[j] = True
    names = two_sample.HIGH_LEVEL_NAMES
    return {
        "total": total,
        "mean_part": mean_part,
        "covariance_part": total - mean_part,
        "real_vs_real": frechet_distance(floor, real),
        "one_d": dict(zip(names, one_d.tolist())),
        "drop_when_left_out": {name: total - w for name, w in zip(names, without)},
    }


def sparsity_counts(gen: np.ndarray, real: np.ndarray) -> dict:
    """Per sparsity level of the high-level features: mean and standard deviation of the number of cells holding at
    least that fraction of the shower's energy, generated and real (the levels are fractions of the 900 cells)."""
    names = two_sample.HIGH_LEVEL_NAMES
    return {
        name: {"generated": [float(gen[:, j].mean() * N_CELLS), float(gen[:, j].std() * N_CELLS)],
               "real": [float(real[:, j].mean() * N_CELLS), float(real[:, j].std() * N_CELLS)]}
        for j, name in enumerate(names) if name.startswith("sparsity")
    }  # fmt: skip


def print_classifier_view(res: dict, rings: dict) -> None:
    """The per-feature AUCs and the radial profile, as tables."""
    print(f"{'feature':14s} {'alone':>6s} {'+cond':>6s} {'mean gen':>9s} {'mean real':>9s}")
    for feature, (g, r) in res["mean_generated_real"].items():
        a, c = res["auc"][f"{feature} alone"], res["auc"][f"{feature} + conditions"]
        print(f"{feature:14s} {a:6.3f} {c:6.3f} {g:9.4f} {r:9.4f}")
    print(f"{'ring [cm]':10s} {'energy fraction gen / real':>28s} {'cells > 1 MeV gen / real':>26s}")
    gen, real = rings["generated"], rings["real"]
    for i, (lo, hi) in enumerate(zip(RING_EDGES_CM[:-1], RING_EDGES_CM[1:])):
        fg, fr = gen["energy_fraction"][i], real["energy_fraction"][i]
        print(f"{lo:4.1f}-{hi:<5.1f} {fg:9.4f} / {fr:.4f} ({fg / fr:5.2f})"
              f" {gen['cells_above_threshold'][i]:12.3f} / {real['cells_above_threshold'][i]:.3f}")  # fmt: skip


def print_fpd_view(fpd: dict, counts: dict) -> None:
    """The FPD split and the sparsity levels in cells."""
    print(f"FPD (full sample, Gaussianised) {fpd['total']:.3f} (real vs real {fpd['real_vs_real']:.3f}): "
          f"mean part {fpd['mean_part']:.3f}, covariance part {fpd['covariance_part']:.3f}")  # fmt: skip
    sparsity = sum(v for k, v in fpd["one_d"].items() if k.startswith("sparsity"))
    print(f"1-d distances: sum {sum(fpd['one_d'].values()):.3f}, of which the sparsity levels {sparsity:.3f}")
    top = sorted(fpd["drop_when_left_out"].items(), key=lambda kv: -kv[1])[:6]
    print(
        "largest falls when left out: "
        + ", ".join(f"{k} {v:.2f} (1-d {fpd['one_d'][k]:.2f})" for k, v in top)
    )
    print(f"{'level':18s} {'cells, generated':>18s} {'cells, real':>18s}")
    for name, c in counts.items():
        (gm, gs), (rm, rs) = c["generated"], c["real"]
        print(f"{name:18s} {gm:9.1f} ± {gs:6.1f} {rm:9.1f} ± {rs:6.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=DATA_DIR=CHECKPOINT")
    parser.add_argument("--events", type=int, default=10000, help="events per sample (2N validation events)")
    parser.add_argument(
        "--fpd-only", action="store_true", help="only the FPD breakdown (no classifiers, no rings)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    results = {}
    for item in args.models:
        if item.count("=") != 2:
            raise InputError(f"{item}: expected NAME=DATA_DIR=CHECKPOINT")
        name, data_dir, checkpoint = item.split("=")
        val = load_npz(split_path(data_dir, "val", "solution"), require_energy=True)
        n = min(args.events, len(val) // 2)
        first, second = val.subset(np.arange(n)), val.subset(np.arange(n, 2 * n))
        generator, _ = load_generator(checkpoint)
        images = generate(generator, first, seed=5)
        hl_gen, hl_first, hl_second = (
            two_sample.high_level_features(x, d) for x, d in ((images, first), (first.energy, first), (second.energy, second))
        )  # fmt: skip
        fpd = fpd_breakdown(*(two_sample.gaussianise(x, hl_second) for x in (hl_gen, hl_second, hl_first)))
        counts = sparsity_counts(hl_gen, hl_second)
        results[name] = {
            "checkpoint": checkpoint,
            "data": data_dir,
            "events": n,
            "fpd": fpd,
            "sparsity_cells": counts,
        }
        print(f"\n{name}")
        if not args.fpd_only:
            res = feature_aucs(
                cc.high_level_features(images, first), cc.high_level_features(second.energy, second)
            )
            rings = {
                "generated": radial_profile(images, first),
                "real": radial_profile(second.energy, second),
            }
            results[name].update(res, radial=rings)
            print(f"AUC all {res['auc']['all']:.3f}, conditions alone {res['auc']['conditions']:.3f}")
            print_classifier_view(res, rings)
        print_fpd_view(fpd, counts)
    if args.json:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
