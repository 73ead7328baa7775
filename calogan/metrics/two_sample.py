"""Stricter two-sample tests beside PRD (docs/metrics.md): classifier tests, FPD, KPD, separation, density/coverage.

Every metric compares the generated sample with the true one *and* reports its real-vs-real reference at the
same sizes. Both use the same random split of the events into two disjoint halves A and B:
metric value = generated[A] vs true[B]; reference = true[A] vs true[B]. The two comparisons therefore share
the true half B, the conditions of A and the sample sizes, so a good generator's value lies within noise of
the reference. Conditions enter the features (directly or through energy response and barycentre residuals),
so a generator that ignores its conditions is caught even when its images look plausible in isolation.

The generic pieces serve the RICH evaluation too: :func:`classifier_scores` (the one classifier two-sample
test: real = 1, generated = 0, optional sample weights), :func:`weighted_auc` and :func:`binned_efficiency`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score, roc_curve
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from calogan.core.errors import InputError
from calogan.core.fit import fit, seeded
from calogan.core.runtime import atomic_write, atomic_write_text, progress_disabled
from calogan.ecal.data import CaloData
from calogan.ecal.physics import (
    STAT_NAMES,
    barycentre_residual,
    energy_response,
    physical_statistics,
    standardise_statistics,
)
from calogan.metrics import calochallenge as cc
from calogan.metrics import distances as dist
from calogan.metrics.plots import subplots
from calogan.metrics.response import core_fractions, physics_metric

#: Names of the high-level features (24 statistics, energy response, barycentre residuals, conditions).
#: They are also the observables of the separation-power table.
HIGH_LEVEL_NAMES: tuple[str, ...] = STAT_NAMES + (
    "energy_response", "barycentre_dx", "barycentre_dy", "hottest_cell_fraction", "core_3x3_fraction",
)  # fmt: skip


# --------------------------------------------------------------------------- features and splits


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random halves A, B of range(n), equal size, so value and reference share sizes."""
    if n < 4:
        raise InputError(f"extra metrics: need at least 4 events, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(perm[:half]), np.sort(perm[half : 2 * half])


def condition_features(true: CaloData) -> np.ndarray:
    """(N, 7) float64 conditions x, y, px, py, pz, log|p|, is_photon: the classifier sees what was asked for."""
    cond = true.conditions().astype(np.float64)
    return np.concatenate([cond[:, :5], np.log(np.maximum(true.p_abs, 1e-6))[:, None], cond[:, 5:6]], axis=1)


def high_level_features(images: np.ndarray, true: CaloData, stats_24: np.ndarray | None = None) -> np.ndarray:
    """(N, 29) float64: 24 physical statistics, energy response sum/|p|, barycentre minus expected centre, and
    the shower core (energy fractions in the hottest cell and in the 3x3 cells around it)."""
    if stats_24 is None:
        stats_24 = physical_statistics(images, true.point, true.momentum)
    response = energy_response(images, true.momentum)[:, None]
    residual = barycentre_residual(images, true.point, true.momentum)
    feats = np.concatenate(
        [np.asarray(stats_24, np.float64), response, residual, core_fractions(images)], axis=1
    )
    return np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)


#: (generated, true) high-level features of one evaluation, computed once and shared by the metrics.
HighLevelPair = tuple[np.ndarray, np.ndarray]


def high_level_pair(
    gen_images: np.ndarray, true: CaloData, stats_gen=None, stats_true=None, hl: HighLevelPair | None = None
) -> HighLevelPair:
    """The generated and true high-level features: ``hl`` when the caller already has them, else computed."""
    if hl is not None:
        return hl
    return high_level_features(gen_images, true, stats_gen), high_level_features(
        true.energy, true, stats_true
    )


def gaussianise(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map each column through the reference's mid-rank empirical CDF, then Φ⁻¹: robust to heavy tails (widths).

    Values beyond the reference range saturate at ±Φ⁻¹(1 − 1/(2n)); the true sample itself becomes ~N(0, 1).
    """
    n = len(reference)
    u = np.clip(standardise_statistics(x, reference, method="rank"), 0.5 / n, 1.0 - 0.5 / n)
    return stats.norm.ppf(u)


def _check_inputs(gen_images: np.ndarray, true: CaloData) -> None:
    """Same N, images present, finite: otherwise one-line InputError."""
    if true.energy is None:
        raise InputError(f"{true.path}: extra metrics need the true EnergyDeposit (a solution file)")
    if len(gen_images) != len(true):
        raise InputError(f"extra metrics: {len(gen_images)} generated images but {len(true)} true events")


# --------------------------------------------------------------------------- classifier tests


def _jsd_bits(p_true: np.ndarray, labels: np.ndarray, clip: bool = True) -> float:
    """JSD (bits) from calibrated P(true | x): log2 + ½E_true[log D] + ½E_gen[log(1 − D)], in units of log 2.

    ``clip`` bounds it to [0, 1]; CaloChallenge reports it unclipped (slightly negative for equal samples).
    """
    p = np.clip(p_true, 1e-6, 1 - 1e-6)
    value = (
        math.log(2.0) + 0.5 * np.log(p[labels == 1]).mean() + 0.5 * np.log(1 - p[labels == 0]).mean()
    ) / math.log(2.0)
    return float(np.clip(value, 0.0, 1.0)) if clip else float(value)


def _roc_summary(labels: np.ndarray, scores: np.ndarray, points: int = 101) -> dict[str, Any]:
    """ROC AUC and the ROC curve resampled on a fixed false-positive grid (small, JSON-friendly)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    grid = np.linspace(0.0, 1.0, points)
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "roc_fpr": grid.round(4).tolist(),
        "roc_tpr": np.interp(grid, fpr, tpr).round(5).tolist(),
    }


def _three_way_split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train 60 % / calibration 20 % / test 20 % of a shuffled index."""
    perm = rng.permutation(n)
    a, b = int(0.6 * n), int(0.8 * n)
    return perm[:a], perm[a:b], perm[b:]


def _calibrated_report(
    labels: np.ndarray, raw: np.ndarray, cal: np.ndarray, test: np.ndarray
) -> dict[str, Any]:
    """Isotonic calibration on the calibration split; AUC, ROC and JSD on the held-out test split."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw[cal], labels[cal])
    out = _roc_summary(labels[test], raw[test])
    out["jsd"] = _jsd_bits(iso.predict(raw[test]), labels[test])
    return out


def fit_binary_classifier(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    select: np.ndarray,
    seed: int,
    device: torch.device,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    select_by: str = "loss",
    patience: int | None = None,
) -> tuple[np.ndarray, int]:
    """Train ``model`` (one logit out) with BCE-with-logits and Adam on the ``train`` rows; keep the best epoch.

    After each epoch the ``select`` rows judge the model: ``select_by`` "loss" keeps the lowest loss (an
    improvement must exceed 1e-4), "accuracy" the highest accuracy (logit > 0, strictly better; training
    stops at accuracy 1). ``patience`` epochs without improvement stop early (None: all ``epochs``). The
    mini-batch order comes from :func:`calogan.core.fit.fit` seeded with ``seed``. Returns (logits of every
    row, best epoch, 1-based).
    """
    if select_by not in ("loss", "accuracy"):
        raise ValueError(f"fit_binary_classifier: select_by must be loss or accuracy, not {select_by!r}")
    model = model.to(device)
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, dtype=torch.float32, device=device)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    sel = torch.as_tensor(select, device=device)

    def score() -> float:
        out = model(xt[sel]).squeeze(1)
        if select_by == "loss":
            return float(loss_fn(out, yt[sel]))
        return 1.0 - float(((out > 0).float() == yt[sel]).float().mean())  # the error rate

    result = fit(
        model, lambda idx: loss_fn(model(xt[idx]).squeeze(1), yt[idx]), torch.as_tensor(train, device=device),
        batch_size=batch_size, lr=lr, seed=seed, epochs=epochs, weight_decay=weight_decay, score=score,
        min_delta=1e-4 if select_by == "loss" else 0.0, patience=patience,
        stop_at=0.0 if select_by == "accuracy" else None,
    )  # fmt: skip
    with torch.no_grad():
        logits = torch.cat([model(xt[s : s + 8192]).squeeze(1) for s in range(0, len(xt), 8192)])
    return logits.cpu().numpy(), result.best_epoch


def _two_sample_mlp(n_inputs: int) -> torch.nn.Sequential:
    """The low-level classifier of the ``cls`` test: 256-128 LeakyReLU(0.2) MLP, one logit."""
    return torch.nn.Sequential(
        torch.nn.Linear(n_inputs, 256), torch.nn.LeakyReLU(0.2),
        torch.nn.Linear(256, 128), torch.nn.LeakyReLU(0.2),
        torch.nn.Linear(128, 1),
    )  # fmt: skip


def _low_level_inputs(images: np.ndarray, cond: np.ndarray) -> np.ndarray:
    """log1p of the 900 cells per GeV of |p|, log(image sum / |p|) and the 7 conditions (float32).

    Expressing cells per GeV turns an energy-scale error into a shift; the explicit log-sum lets a small MLP
    trained on a few thousand events see it (otherwise it must learn a sum of exponentials).
    """
    p_abs = np.exp(cond[:, 5:6]).astype(np.float32)
    flat = np.asarray(images, np.float32).reshape(len(images), -1) / p_abs
    total = np.log(flat.sum(axis=1, keepdims=True) + 1e-3)
    return np.concatenate([np.log1p(flat), total, cond.astype(np.float32)], axis=1)


def classifier_scores(
    x_real: np.ndarray,
    x_gen: np.ndarray,
    train: np.ndarray,
    kind: str = "high",
    seed: int = 0,
    weights: np.ndarray | None = None,
    stop: np.ndarray | None = None,
    device: torch.device | None = None,
    epochs: int = 30,
    hgb_iter: int = 100,
    early_stopping: bool | str = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The classifier two-sample test's classifier: trained to tell real (label 1) from generated (label 0).

    The rows are stacked generated first, then real: x = [x_gen; x_real], labels [0, ..., 0, 1, ..., 1].
    ``train`` indexes the stacked rows the classifier learns from; the features are z-scaled on them.
    ``kind`` "high": sklearn gradient boosting (``hgb_iter`` iterations, ``early_stopping`` as sklearn's),
    score P(real | x), fitted with ``weights`` (stacked like x; negative sWeights allowed) when given;
    "low": a small torch MLP on the GPU/CPU ``device``, score its logit, stopped early on the ``stop`` rows
    (unweighted). Returns (labels, scores) of every stacked row; a summary (AUC, ROC, JSD) is the caller's.
    """
    x = np.concatenate([x_gen, x_real]).astype(np.float64)
    y = np.concatenate([np.zeros(len(x_gen)), np.ones(len(x_real))])
    x = standardise_statistics(x, x[train], method="z")
    if kind == "low":
        if weights is not None:
            raise ValueError("classifier_scores: the low-level MLP takes no sample weights")
        batch_size = min(256, max(32, len(train) // 40))  # enough steps per epoch on small samples
        model = seeded(lambda: _two_sample_mlp(x.shape[1]), seed)
        logits, _ = fit_binary_classifier(
            model, x.astype(np.float32), y, train, stop, seed, device or torch.device("cpu"), epochs,
            batch_size, lr=1e-3, weight_decay=1e-5, select_by="loss", patience=3,
        )  # fmt: skip
        return y, logits
    clf = HistGradientBoostingClassifier(
        max_iter=hgb_iter, learning_rate=0.1, early_stopping=early_stopping, random_state=seed
    )
    with threadpool_limits(limits=torch.get_num_threads()):  # no OpenMP oversubscription beside torch
        clf.fit(x[train], y[train], sample_weight=None if weights is None else weights[train])
        return y, clf.predict_proba(x)[:, 1]


def classifier_test(
    x_real: np.ndarray,
    x_gen: np.ndarray,
    kind: str,
    seed: int,
    device: torch.device,
    epochs: int = 30,
    hgb_iter: int = 100,
) -> dict[str, Any]:
    """Classifier real (1) vs generated (0) on 60 % of the rows; ROC AUC and calibrated JSD on a held-out 20 %."""
    train, cal, test = _three_way_split(len(x_real) + len(x_gen), np.random.default_rng(seed))
    y, raw = classifier_scores(
        x_real, x_gen, train, kind, seed, stop=cal, device=device, epochs=epochs, hgb_iter=hgb_iter
    )
    out = _calibrated_report(y, raw, cal, test)
    out["n_test"] = int(len(test))
    return out


def _class_split(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60/20/20 split of each class separately (CaloChallenge's ttv_split), merged: train, test, validation rows."""
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in (0, 1):
        rows = np.flatnonzero(labels == cls)
        for part, idx in zip(parts, _three_way_split(len(rows), rng)):
            part.append(rows[idx])
    train, test, val = (np.sort(np.concatenate(p)) for p in parts)
    return train, test, val


def cc_classifier_test(
    x_real: np.ndarray,
    x_gen: np.ndarray,
    seed: int,
    device: torch.device | None = None,
    settings: cc.CCSettings = cc.DEFAULT,
) -> dict[str, Any]:
    """CaloChallenge's classifier protocol on given features: real (label 1) vs generated (label 0).

    Each class split 60/20/20 into train/test/validation; the DNN (:func:`calogan.metrics.calochallenge.dnn`)
    trained with BCE-with-logits and Adam, the epoch with the best test accuracy kept; isotonic regression on
    the test part calibrates P(real); ROC AUC and JSD (bits, unclipped) of the calibrated output on the
    validation part. No feature scaling beyond the feature set's own (log10, lengths / 10 cm).
    """
    x = np.concatenate([x_gen, x_real]).astype(np.float32)
    y = np.concatenate([np.zeros(len(x_gen)), np.ones(len(x_real))])
    train, test, val = _class_split(y, np.random.default_rng(seed))
    model = seeded(lambda: cc.dnn(x.shape[1], settings), seed)
    logits, best_epoch = fit_binary_classifier(
        model, x, y, train, test, seed, device or torch.device("cpu"), settings.epochs, settings.batch_size,
        lr=settings.lr, select_by="accuracy",
    )  # fmt: skip
    prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    iso = IsotonicRegression(y_min=1e-6, y_max=1 - 1e-6, out_of_bounds="clip").fit(prob[test], y[test])
    calibrated = iso.predict(prob[val])
    out = _roc_summary(y[val], calibrated)
    out["jsd"] = _jsd_bits(calibrated, y[val], clip=False)
    out["auc_uncalibrated"] = float(roc_auc_score(y[val], prob[val]))
    out.update(n_validation=int(len(val)), best_epoch=int(best_epoch))
    return out


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
    """ROC AUC as the weighted probability that a positive outscores a negative (ties count 1/2).

    The Mann-Whitney form, valid with negative weights (sWeights); NaN when either class weighs zero.
    """
    labels = np.asarray(labels).astype(bool)
    _, inv = np.unique(scores, return_inverse=True)
    k = inv.max() + 1 if len(inv) else 0
    w_pos = np.bincount(inv, weights * labels, k)
    w_neg = np.bincount(inv, weights * ~labels, k)
    below = np.cumsum(w_neg) - w_neg
    total = w_pos.sum() * w_neg.sum()
    if total == 0:
        return float("nan")
    return float((w_pos * (below + 0.5 * w_neg)).sum() / total)


def binned_efficiency(
    passed: np.ndarray,
    x: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    edges: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Efficiency of a cut with its binomial error and the effective sample size, per bin of x.

    eff = sum(w · pass) / sum(w); error² = sum w² (pass - eff)² / (sum w)², the binomial eff (1 - eff) / n
    for unit weights and valid with sWeights; n_eff = (sum w)² / sum w². Without ``x`` and ``edges`` every
    event falls in one bin; without ``weights`` every event weighs 1. Returns arrays with one entry per bin.
    """
    passed = np.asarray(passed)
    if x is None:
        idx, nb = np.zeros(len(passed), np.int64), 1
    else:
        idx, nb = np.digitize(x, edges) - 1, len(edges) - 1
    w = np.ones(len(passed)) if weights is None else np.asarray(weights)
    ok = (idx >= 0) & (idx < nb)
    idx, passed, w = idx[ok], passed[ok].astype(np.float64), w[ok].astype(np.float64)
    sw = np.bincount(idx, w, nb)
    sw2 = np.bincount(idx, w * w, nb)
    swp = np.bincount(idx, w * passed, nb)
    with np.errstate(divide="ignore", invalid="ignore"):
        eff = np.where(sw > 0, swp / sw, np.nan)
        var = np.bincount(idx, w * w * (passed - eff[idx]) ** 2, nb) / sw**2
        neff = np.where(sw2 > 0, sw**2 / sw2, 0.0)
    return {"eff": eff, "err": np.sqrt(np.maximum(var, 0.0)), "n_eff": neff}


CLS_CONVENTION = (
    "calogan classifier test: low-level 256-128 LeakyReLU MLP on log(1 + cell/|p|), log(sum/|p|) and the "
    "conditions, early stopping on the loss (patience 3); high-level sklearn HistGradientBoosting on the 29 "
    "high-level features and the conditions; shuffled 60/20/20 split: train, isotonic calibration, AUC and JSD "
    "(clipped to [0, 1])"
)


def cls_metric(
    gen_images: np.ndarray,
    true: CaloData,
    stats_gen: np.ndarray | None = None,
    stats_true: np.ndarray | None = None,
    seed: int = 1337,
    device: torch.device | None = None,
    epochs: int = 30,
    kinds: Sequence[str] = ("low", "high"),
    hgb_iter: int = 100,
    reference: bool = True,
    hl: HighLevelPair | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Classifier two-sample tests (low-level MLP on log cells, high-level gradient boosting), with references."""
    _check_inputs(gen_images, true)
    device = device or torch.device("cpu")
    a, b = split_halves(len(true), seed)
    cond = condition_features(true)
    hg, ht = high_level_pair(gen_images, true, stats_gen, stats_true, hl)
    hl_gen, hl_true = np.concatenate([hg, cond], axis=1), np.concatenate([ht, cond], axis=1)
    result: dict[str, Any] = {
        "convention": CLS_CONVENTION,
        "n_per_class": int(len(a)),
        "split": "generated[A] vs true[B]; reference true[A] vs true[B]",
    }
    jobs = [(kind, which) for kind in kinds for which in (("gen", "ref") if reference else ("gen",))]
    for kind, which in tqdm(jobs, desc="cls", leave=False, disable=progress_disabled()):
        src = gen_images if which == "gen" else true.energy
        if kind == "low":
            xa, xb = _low_level_inputs(src[a], cond[a]), _low_level_inputs(true.energy[b], cond[b])
        else:
            xa, xb = (hl_gen if which == "gen" else hl_true)[a], hl_true[b]
        rep = classifier_test(xb, xa, kind, seed, device, epochs, hgb_iter)
        key = kind if which == "gen" else f"{kind}_ref"
        result[key] = rep
    for kind in kinds:
        result[f"auc_{kind}"] = result[kind]["auc"]
        result[f"jsd_{kind}"] = result[kind]["jsd"]
        if reference:
            result[f"auc_{kind}_ref"] = result[f"{kind}_ref"]["auc"]
            result[f"jsd_{kind}_ref"] = result[f"{kind}_ref"]["jsd"]
    return result


CC_CONVENTION = (
    "CaloChallenge 2022 classifier protocol (code/evaluate.py): DNN of Linear+LeakyReLU blocks, BCE with logits, "
    "Adam, batch 1000, each class split 60/20/20, epoch of best test accuracy kept, isotonic calibration on "
    "the test part, AUC and JSD on the last part; features of one 30x30 layer, cells below 1 MeV zeroed, "
    "centres from the expected impact point, conditions appended (calogan.metrics.calochallenge)"
)


def _cc_features(kind: str, images: np.ndarray, true: CaloData, rows: np.ndarray) -> np.ndarray:
    """CaloChallenge feature set ``kind`` ("high" or "low") of ``images[rows]`` under their conditions."""
    return cc.FEATURE_SETS[kind](images[rows], true.subset(rows))


def cls_cc_metric(
    gen_images: np.ndarray,
    true: CaloData,
    seed: int = 1337,
    device: torch.device | None = None,
    settings: cc.CCSettings = cc.DEFAULT,
    kinds: Sequence[str] = ("low", "high"),
    reference: bool = True,
    **_: Any,
) -> dict[str, Any]:
    """Field-protocol classifier tests (CaloChallenge, :func:`cc_classifier_test`), generated[A] vs true[B], with references.

    Keys ``auc_{kind}``, ``jsd_{kind}`` and their real-vs-real ``auc_{kind}_ref``, ``jsd_{kind}_ref`` for kind
    "high" (CaloChallenge's high-level features) and "low" (cells / incident energy); full reports (ROC,
    best epoch) under ``{kind}`` and ``{kind}_ref``.
    """
    _check_inputs(gen_images, true)
    a, b = split_halves(len(true), seed)
    result: dict[str, Any] = {
        "convention": CC_CONVENTION,
        "settings": settings.describe(),
        "published_settings": cc.PUBLISHED.describe(),
        "n_per_class": int(len(a)),
        "split": "generated[A] vs true[B]; reference true[A] vs true[B]",
        "features_high": list(cc.HIGH_LEVEL_NAMES),
    }
    jobs = [(kind, which) for kind in kinds for which in (("gen", "ref") if reference else ("gen",))]
    real: dict[str, np.ndarray] = {}
    for kind, which in tqdm(jobs, desc="cls_cc", leave=False, disable=progress_disabled()):
        if kind not in real:
            real[kind] = _cc_features(kind, true.energy, true, b)
        other = _cc_features(kind, gen_images if which == "gen" else true.energy, true, a)
        result[kind if which == "gen" else f"{kind}_ref"] = cc_classifier_test(
            real[kind], other, seed, device, settings
        )
    for kind in kinds:
        for suffix in ("", "_ref") if reference else ("",):
            result[f"auc_{kind}{suffix}"] = result[kind + suffix]["auc"]
            result[f"jsd_{kind}{suffix}"] = result[kind + suffix]["jsd"]
    return result


def field_protocol_auc(
    gen_images: np.ndarray,
    true: CaloData,
    kind: str = "high",
    seed: int = 1337,
    device: torch.device | str | None = None,
    settings: cc.CCSettings = cc.DEFAULT,
) -> float:
    """The CaloChallenge-protocol classifier AUC of generated vs real showers (``cls_cc``'s ``auc_{kind}``).

    ``gen_images`` (N, 30, 30) were generated for the conditions of ``true`` (same order, with images). The
    events are split into halves A, B as in every stricter test; the AUC is generated[A] vs true[B], so it
    equals ``evaluate --metrics cls_cc``'s ``auc_high`` (or ``auc_low``) for the same seed and settings.
    """
    if kind not in cc.FEATURE_SETS:
        raise ValueError(f"field_protocol_auc: kind must be high or low, not {kind!r}")
    dev = torch.device(device) if device is not None else None
    res = cls_cc_metric(np.asarray(gen_images), true, seed, dev, settings, kinds=(kind,), reference=False)
    return float(res[f"auc_{kind}"])


# --------------------------------------------------------------------------- FPD / KPD


def _high_level_gaussianised(
    gen_images: np.ndarray, true: CaloData, stats_gen, stats_true, seed: int, hl=None
):
    """Gaussianised (on true[B]) high-level features of generated[A], true[A] and true[B]."""
    a, b = split_halves(len(true), seed)
    hg, ht = high_level_pair(gen_images, true, stats_gen, stats_true, hl)
    ref = ht[b]
    return gaussianise(hg[a], ref), gaussianise(ht[a], ref), gaussianise(ref, ref)


def _high_level_raw(gen_images: np.ndarray, true: CaloData, stats_gen, stats_true, seed: int, hl=None):
    """High-level features (not Gaussianised) of generated[A], true[A] and true[B], for the jetnet convention."""
    a, b = split_halves(len(true), seed)
    hg, ht = high_level_pair(gen_images, true, stats_gen, stats_true, hl)
    return hg[a], ht[a], ht[b]


def fpd_metric(
    gen_images: np.ndarray,
    true: CaloData,
    stats_gen: np.ndarray | None = None,
    stats_true: np.ndarray | None = None,
    seed: int = 1337,
    convention: str = "calogan",
    hl: HighLevelPair | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Fréchet physics distance on the 29 high-level features with its reference (calogan.metrics.distances).

    ``convention`` "calogan": Gaussianised features, error of the value and of value − reference
    (``fpd_diff_err``, the pull's denominator); "jetnet": jetnet 0.2.5's procedure (no ``fpd_diff_err``), with
    jetnet's own fit errors as ``fpd_fit_err``, ``fpd_ref_fit_err``. The errors are those of
    :mod:`calogan.metrics.distances`; ``convention`` says which convention produced the numbers.
    """
    _check_inputs(gen_images, true)
    out: dict[str, Any] = {"convention": dist.CONVENTIONS[dist.check_convention(convention)]}
    if convention == "jetnet":
        g, ta, tb = _high_level_raw(gen_images, true, stats_gen, stats_true, seed, hl)
        gen, ref = dist.fpd_jetnet(tb, g, seed=seed), dist.fpd_jetnet(tb, ta, seed=seed)
        out.update(fpd=gen["value"], fpd_err=gen["error"], fpd_ref=ref["value"], fpd_ref_err=ref["error"],
                   fpd_fit_err=gen["fit_error"], fpd_ref_fit_err=ref["fit_error"])  # fmt: skip
    else:
        g, ta, tb = _high_level_gaussianised(gen_images, true, stats_gen, stats_true, seed, hl)
        r = dist.fpd_with_reference(g, ta, tb, seed)
        out.update(fpd=r["value"], fpd_err=r["error"], fpd_ref=r["ref"], fpd_ref_err=r["ref_error"],
                   fpd_diff_err=r["diff_error"], fpd_at_n=r["at_full_n"], fpd_ref_at_n=r["ref_at_full_n"])  # fmt: skip
    out.update(n=int(len(g)), features=list(HIGH_LEVEL_NAMES))
    return out


def kpd_metric(
    gen_images: np.ndarray,
    true: CaloData,
    stats_gen: np.ndarray | None = None,
    stats_true: np.ndarray | None = None,
    seed: int = 1337,
    batch_size: int = 5000,
    num_batches: int = 10,
    convention: str = "calogan",
    hl: HighLevelPair | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Kernel physics distance on the high-level features, with reference (``convention`` as :func:`fpd_metric`)."""
    _check_inputs(gen_images, true)
    if dist.check_convention(convention) == "jetnet":
        g, ta, tb = _high_level_raw(gen_images, true, stats_gen, stats_true, seed, hl)
        gen, ref = dist.kpd_jetnet(tb, g, seed=seed), dist.kpd_jetnet(tb, ta, seed=seed)
    else:
        g, ta, tb = _high_level_gaussianised(gen_images, true, stats_gen, stats_true, seed, hl)
        gen = dist.kpd_batches(g, tb, seed, batch_size, num_batches)
        ref = dist.kpd_batches(ta, tb, seed, batch_size, num_batches)
    return {"kpd": gen["value"], "kpd_err": gen["error"], "kpd_ref": ref["value"], "kpd_ref_err": ref["error"],
            "batch_size": gen["batch_size"], "num_batches": int(num_batches),
            "convention": dist.CONVENTIONS[convention]}  # fmt: skip


# --------------------------------------------------------------------------- separation power / W1


#: How :func:`separation_power` bins, as named in the JSON (``binning`` key of ``sep``).
SEP_BINNING = (
    "{bins} equal-width bins between the 0.5 and 99.5 percentiles of both samples together, per observable, "
    "values outside clipped into the end bins (CaloChallenge: fixed ranges per observable, e.g. 50 bins over "
    "+-100 mm for centres, 30 over 0.5-1.5 for E_tot/E_inc, values outside dropped)"
)


def separation_power(a: np.ndarray, b: np.ndarray, bins: int = 50) -> float:
    """Triangular discrimination ½·Σ(h₁−h₂)²/(h₁+h₂) of normalised histograms on common bins (0 same, 1 disjoint).

    The bins are :data:`SEP_BINNING`: adapted to the data, so one outlier cannot empty every bin.
    """
    lo, hi = np.percentile(np.concatenate([a, b]), [0.5, 99.5])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    h1 = np.histogram(np.clip(a, lo, hi), edges)[0] / len(a)
    h2 = np.histogram(np.clip(b, lo, hi), edges)[0] / len(b)
    denom = h1 + h2
    ok = denom > 0
    return float(0.5 * ((h1[ok] - h2[ok]) ** 2 / denom[ok]).sum())


def sep_metric(
    gen_images: np.ndarray,
    true: CaloData,
    stats_gen: np.ndarray | None = None,
    stats_true: np.ndarray | None = None,
    seed: int = 1337,
    bins: int = 50,
    hl: HighLevelPair | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Per-observable separation power and Wasserstein-1 (also in units of the true std), with references."""
    _check_inputs(gen_images, true)
    a, b = split_halves(len(true), seed)
    hg, ht = high_level_pair(gen_images, true, stats_gen, stats_true, hl)
    table = []
    for j, name in enumerate(HIGH_LEVEL_NAMES):  # 29 observables, each vectorised over events
        ref_col, gen_col, ta_col = ht[b, j], hg[a, j], ht[a, j]
        scale = float(ref_col.std()) or 1.0
        table.append({
            "observable": name,
            "sep": separation_power(gen_col, ref_col, bins), "sep_ref": separation_power(ta_col, ref_col, bins),
            "w1": float(stats.wasserstein_distance(gen_col, ref_col)),
            "w1_ref": float(stats.wasserstein_distance(ta_col, ref_col)),
            "w1_scaled": float(stats.wasserstein_distance(gen_col, ref_col)) / scale,
            "w1_scaled_ref": float(stats.wasserstein_distance(ta_col, ref_col)) / scale,
        })  # fmt: skip
    seps = np.array([r["sep"] for r in table])
    refs = np.array([r["sep_ref"] for r in table])
    return {"table": table, "sep_mean": float(seps.mean()), "sep_mean_ref": float(refs.mean()),
            "sep_max": float(seps.max()), "sep_max_ref": float(refs.max()),
            "sep_max_observable": table[int(seps.argmax())]["observable"],
            "w1_scaled_mean": float(np.mean([r["w1_scaled"] for r in table])),
            "w1_scaled_mean_ref": float(np.mean([r["w1_scaled_ref"] for r in table])),
            "n_per_sample": int(len(a)), "bins": int(bins), "binning": SEP_BINNING.format(bins=int(bins))}  # fmt: skip


# --------------------------------------------------------------------------- density / coverage


def _kth_nn_radius(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance of each row of x to its k-th nearest other row of x."""
    out = []
    for s in range(0, len(x), chunk):
        d = torch.cdist(x[s : s + chunk], x)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # column 0 is the point itself
    return torch.cat(out)


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5, device: torch.device | None = None,
                     chunk: int = 2048) -> dict[str, float]:  # fmt: skip
    """Precision, recall, density and coverage (Naeem et al. 2020) from k-NN balls, with torch.cdist in chunks."""
    device = device or torch.device("cpu")
    r = torch.as_tensor(real, dtype=torch.float32, device=device)
    f = torch.as_tensor(fake, dtype=torch.float32, device=device)
    r_rad, f_rad = _kth_nn_radius(r, k, chunk), _kth_nn_radius(f, k, chunk)
    inside_count = torch.zeros(len(f), device=device)  # per fake: number of real balls containing it
    covered = torch.zeros(len(r), dtype=torch.bool, device=device)
    for s in range(0, len(f), chunk):
        d = torch.cdist(f[s : s + chunk], r)  # (fake chunk, real)
        inside = d < r_rad.unsqueeze(0)
        inside_count[s : s + chunk] = inside.sum(dim=1).float()
        covered |= inside.any(dim=0)
    recall_hits = torch.zeros(len(r), dtype=torch.bool, device=device)
    for s in range(0, len(r), chunk):
        d = torch.cdist(r[s : s + chunk], f)
        recall_hits[s : s + chunk] = (d < f_rad.unsqueeze(0)).any(dim=1)
    return {
        "precision": float((inside_count > 0).float().mean()),
        "recall": float(recall_hits.float().mean()),
        "density": float(inside_count.sum() / (k * len(f))),
        "coverage": float(covered.float().mean()),
    }


def prdc_metric(
    gen_images: np.ndarray,
    true: CaloData,
    emb_gen: np.ndarray | None = None,
    emb_true: np.ndarray | None = None,
    stats_gen: np.ndarray | None = None,
    stats_true: np.ndarray | None = None,
    seed: int = 1337,
    device: torch.device | None = None,
    k: int = 5,
    max_samples: int = 10000,
    hl: HighLevelPair | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Density/coverage on (embedding ⊕ conditions), Gaussianised on true[B]; without embeddings on high-level features."""
    _check_inputs(gen_images, true)
    if emb_gen is not None and emb_true is not None:
        fg, ft, features = (
            np.asarray(emb_gen, np.float64),
            np.asarray(emb_true, np.float64),
            "embedding+conditions",
        )
    else:
        (fg, ft), features = (
            high_level_pair(gen_images, true, stats_gen, stats_true, hl),
            "high_level+conditions",
        )
    cond = condition_features(true)
    fg, ft = np.concatenate([fg, cond], axis=1), np.concatenate([ft, cond], axis=1)
    a, b = split_halves(len(true), seed)
    if len(a) > max_samples:  # keep the k-NN cost bounded: subsample both halves alike
        rng = np.random.default_rng(seed + 1)
        a, b = (
            np.sort(rng.choice(a, max_samples, replace=False)),
            np.sort(rng.choice(b, max_samples, replace=False)),
        )
    ref = ft[b]
    real = gaussianise(ref, ref)
    gen = density_coverage(real, gaussianise(fg[a], ref), k, device)
    rvr = density_coverage(real, gaussianise(ft[a], ref), k, device)
    out: dict[str, Any] = {"features": features, "k": int(k), "n_per_sample": int(len(a))}
    for key, value in gen.items():
        out[key], out[f"{key}_ref"] = value, rvr[key]
    return out


# --------------------------------------------------------------------------- the default summary


def fidelity_metric(
    gen_images: np.ndarray,
    true: CaloData,
    stats_gen: np.ndarray | None = None,
    stats_true: np.ndarray | None = None,
    seed: int = 1337,
    device: torch.device | None = None,
    convention: str = "calogan",
    hl: HighLevelPair | None = None,
    **_: Any,
) -> dict[str, Any]:
    """The cheap part of the stricter tests, shown by default beside the competition score.

    High-level classifier AUC (gradient boosting on the 29 high-level features and the conditions), FPD and
    the worst-separated observable, each with its real-vs-real reference at the same sample sizes.
    """
    hl = high_level_pair(gen_images, true, stats_gen, stats_true, hl)
    cls = cls_metric(
        gen_images, true, stats_gen, stats_true, seed=seed, device=device, kinds=("high",), hl=hl
    )
    fpd = fpd_metric(gen_images, true, stats_gen, stats_true, seed=seed, convention=convention, hl=hl)
    sep = sep_metric(gen_images, true, stats_gen, stats_true, seed=seed, hl=hl)
    return {
        "auc_high": cls["auc_high"], "auc_high_ref": cls["auc_high_ref"],
        "fpd": fpd["fpd"], "fpd_err": fpd["fpd_err"], "fpd_ref": fpd["fpd_ref"], "fpd_ref_err": fpd["fpd_ref_err"],
        **({"fpd_diff_err": fpd["fpd_diff_err"]} if "fpd_diff_err" in fpd else {}),
        "fpd_convention": fpd["convention"], "cls_convention": cls["convention"], "sep_binning": sep["binning"],
        "sep_max": sep["sep_max"], "sep_max_ref": sep["sep_max_ref"], "sep_max_observable": sep["sep_max_observable"],
        "n_per_class": cls["n_per_class"],
    }  # fmt: skip


def holdout_distance(
    gen_images: np.ndarray, true: CaloData, stats_gen: np.ndarray, stats_true: np.ndarray, seed: int = 1337
) -> dict[str, Any]:
    """Fast two-sample measures for a small hold-out during training (no reference, no split).

    ``w1_scaled_mean``: the mean over the 29 high-level observables of the Wasserstein-1 distance between
    generated and true values in units of the true standard deviation; smooth, so it ranks checkpoints even
    when a classifier separates them all. ``auc_high``: the high-level classifier AUC.
    """
    cond = condition_features(true)
    hg, ht = high_level_pair(gen_images, true, stats_gen, stats_true)
    scale = np.where(ht.std(axis=0) > 0, ht.std(axis=0), 1.0)
    w1 = np.array([stats.wasserstein_distance(hg[:, j], ht[:, j]) for j in range(ht.shape[1])]) / scale
    cls = classifier_test(np.concatenate([hg, cond], 1), np.concatenate([ht, cond], 1), "high", seed,
                          torch.device("cpu"), hgb_iter=50)  # fmt: skip
    return {"w1_scaled_mean": float(w1.mean()), "w1_scaled_max": float(w1.max()),
            "w1_worst_observable": HIGH_LEVEL_NAMES[int(w1.argmax())], "auc_high": cls["auc"]}  # fmt: skip


# --------------------------------------------------------------------------- registry, parsing, plots

#: The metrics that read the high-level features (given once to all of them as ``hl`` by the evaluator).
USES_HIGH_LEVEL = frozenset({"fidelity", "cls", "fpd", "kpd", "sep", "prdc"})

EXTRA_METRICS: dict[str, Callable[..., dict[str, Any]]] = {
    "fidelity": fidelity_metric,  # the default summary: high-level AUC, FPD, worst separation, with references
    "cls": cls_metric,
    "cls_cc": cls_cc_metric,  # the CaloChallenge classifier protocol, comparable with published AUCs
    "fpd": fpd_metric,
    "kpd": kpd_metric,
    "sep": sep_metric,
    "prdc": prdc_metric,
    "physics": physics_metric,  # response/resolution per energy bin, barycentre bias (calogan.metrics.response)
}


def make_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ROC curves (cls) and the separation-power table + bar chart (sep) for whichever metrics are present."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        path = out_dir / name
        atomic_write(path, lambda h: fig.savefig(h, format="png", dpi=110, bbox_inches="tight"))
        written.append(path)

    cls = results.get("cls")
    if cls:
        fig, axes = subplots(1, 2, figsize=(10, 4.5))
        for ax, kind, title in zip(
            axes, ("low", "high"), ("low-level (900 log cells)", "high-level (29 features)")
        ):
            if kind not in cls:
                ax.set_visible(False)
                continue
            for key, label, style in (
                (kind, "generated vs true", "-"),
                (f"{kind}_ref", "true vs true", "--"),
            ):
                if key not in cls:  # computed with reference=False
                    continue
                rep = cls[key]
                ax.plot(
                    rep["roc_fpr"],
                    rep["roc_tpr"],
                    style,
                    label=f"{label}: AUC {rep['auc']:.3f}, JSD {rep['jsd']:.3f}",
                )
            ax.plot([0, 1], [0, 1], ":", color="grey")
            ax.set(
                title=f"classifier test, {title}", xlabel="false positive rate", ylabel="true positive rate"
            )
            ax.legend(loc="lower right", fontsize=8)
        save(fig, "classifier_roc.png")

    sep = results.get("sep")
    if sep:
        rows = sep["table"]
        cols = ["observable", "sep", "sep_ref", "w1", "w1_ref", "w1_scaled", "w1_scaled_ref"]

        def write_csv(handle) -> None:
            w = csv.writer(handle)
            w.writerow(cols)
            for r in rows:
                w.writerow([r["observable"]] + [f"{r[c]:.6g}" for c in cols[1:]])

        path = out_dir / "separation_power.csv"
        atomic_write(path, write_csv, mode="w")
        written.append(path)
        md = [
            "| observable | separation | real-vs-real | W1 / σ_true | real-vs-real |",
            "|---|---|---|---|---|",
        ]
        md += [f"| {r['observable']} | {r['sep']:.4f} | {r['sep_ref']:.4f} | {r['w1_scaled']:.4f} | {r['w1_scaled_ref']:.4f} |"
               for r in rows]  # fmt: skip
        path = out_dir / "separation_power.md"
        atomic_write_text(path, "\n".join(md) + "\n")
        written.append(path)
        fig, ax = subplots(figsize=(11, 4.5))
        pos = np.arange(len(rows))
        ax.bar(pos - 0.2, [max(r["sep"], 1e-6) for r in rows], 0.4, label="generated vs true")
        ax.bar(pos + 0.2, [max(r["sep_ref"], 1e-6) for r in rows], 0.4, label="true vs true")
        ax.set_yscale("log")
        ax.set_xticks(pos, [r["observable"] for r in rows], rotation=75, fontsize=7)
        ax.set(ylabel="separation power (triangular discrimination)", title="per-observable separation power")
        ax.legend()
        save(fig, "separation_power.png")
    return written
