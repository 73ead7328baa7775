"""Conditional physics checks of generated showers against quality targets (docs/metrics.md), on paired conditions.

A physicist asks three things of a calorimeter fast simulation beyond a summary score:

- the **energy response** (image sum / |p|) and **resolution** (its relative spread) per energy bin, as a
  generated/real ratio: targets ±3 % on the mean and ±20 % on the resolution in 6 log-spaced |p| bins;
- the **barycentre bias**: mean of (generated − real) barycentre for the same event, in cm (target < 0.3);
- the **shower core**: mean fraction of the energy in the hottest cell and in the 3×3 cells around it, per
  energy bin (no target; a too-narrow or too-wide core is the most visible shape defect, and it drives the
  spread of the hard half-plane asymmetries among the 24 statistics);
- the **particle-type response**: generating every event as e− and again as γ must move the 24 statistics the
  way the real e−/γ difference does (:func:`particle_type_switch`, needs the generator).

Generated image i uses the conditions of true image i, so every comparison is at identical conditions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from calogan.core.errors import InputError
from calogan.ecal.data import IMAGE_SIZE, PDG_ELECTRON, PDG_PHOTON, CaloData
from calogan.ecal.physics import (
    STAT_NAMES,
    barycentre,
    cluster_3x3,
    energy_response,
    expected_centre,
    physical_statistics,
)
from calogan.ecal.predict import generate

#: Quality targets (generated/real): mean response within 3 %, resolution within 20 %, barycentre bias below 0.3 cm.
RESPONSE_TOLERANCE = 0.03
RESOLUTION_TOLERANCE = 0.20
BARYCENTRE_TOLERANCE_CM = 0.3
#: |expected centre| below this (cm) counts as contained (the window's edge is at 15 cm).
CONTAINED_CM = 6.0


def energy_bin_edges(p_abs: np.ndarray, bins: int = 6) -> np.ndarray:
    """``bins`` log-spaced |p| bins spanning the sample (GeV)."""
    p = np.asarray(p_abs, dtype=np.float64)
    if len(p) == 0 or not np.all(p > 0):
        raise InputError("response: |p| must be positive for every event")
    lo, hi = float(p.min()), float(p.max())
    if hi <= lo:
        hi = lo * 1.0001
    edges = np.geomspace(lo, hi, bins + 1)
    edges[-1] = np.nextafter(hi, np.inf)  # the largest |p| falls inside the last bin
    return edges


def energy_bin_index(p_abs: np.ndarray, bins: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(edges of :func:`energy_bin_edges`, bin index 0..bins-1 of every event)."""
    edges = energy_bin_edges(p_abs, bins)
    return edges, np.digitize(p_abs, edges) - 1


def _ratio_error(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """mean(a)/mean(b) and its standard error (independent samples, first-order propagation)."""
    ma, mb = a.mean(), b.mean()
    ratio = ma / mb
    rel = np.sqrt(a.var() / max(len(a), 1) / ma**2 + b.var() / max(len(b), 1) / mb**2)
    return float(ratio), float(abs(ratio) * rel)


def core_resolution(response: np.ndarray) -> float:
    """Half the 16–84 % inter-quantile range over the median: the Gaussian-core resolution, blind to tails."""
    lo, mid, hi = np.quantile(response, [0.16, 0.5, 0.84])
    return float((hi - lo) / 2 / mid) if mid > 0 else 0.0


def response_by_energy(
    gen_images: np.ndarray, true: CaloData, bins: int = 6, min_events: int = 20
) -> list[dict[str, Any]]:
    """Per log-spaced |p| bin: mean response and relative resolution (std/mean) of real and generated, ratios.

    The std-based resolution is the target's; it is dominated by low-response tails (energy leaking out of
    the window). The core resolution (:func:`core_resolution`) is reported beside it, with no target.

    Bins with fewer than ``min_events`` events get ratio None (too few to say anything).
    """
    if true.energy is None:
        raise InputError(f"{true.path}: solution has no EnergyDeposit to compare with")
    r_gen = energy_response(gen_images, true.momentum)
    r_true = energy_response(true.energy, true.momentum)
    edges, which = energy_bin_index(true.p_abs, bins)
    return response_rows(r_gen, r_true, which, edges, min_events)


def response_rows(
    r_gen: np.ndarray, r_true: np.ndarray, which: np.ndarray, edges, min_events: int = 20
) -> list[dict[str, Any]]:
    """Per |p| bin k (events with ``which == k``, |p| in [edges[k], edges[k+1]]): response and resolution ratios.

    ``r_gen``, ``r_true``: energy responses (image sum / |p|) of generated and real showers at the same
    conditions. Each row holds p_lo, p_hi, n and, from ``min_events`` events on, the real and generated mean
    response and resolution (std/mean), their generated/real ratios with standard errors, the pass flags of the
    targets and the core resolutions; sparser bins get response_ratio = resolution_ratio = None.
    """
    rows = []
    for k in range(len(edges) - 1):  # a handful of bins; the work inside is vectorised over events
        sel = which == k
        n = int(sel.sum())
        row: dict[str, Any] = {"p_lo": float(edges[k]), "p_hi": float(edges[k + 1]), "n": n}
        if n < min_events:
            row.update(response_ratio=None, resolution_ratio=None)
            rows.append(row)
            continue
        g, t = r_gen[sel], r_true[sel]
        res_g, res_t = g.std() / g.mean(), t.std() / t.mean()
        core_g, core_t = core_resolution(g), core_resolution(t)
        ratio, ratio_err = _ratio_error(g, t)
        # the relative error of a standard deviation is ~1/sqrt(2(n-1)) for near-Gaussian data
        res_err = (res_g / res_t) * np.sqrt(2.0 / (2 * (n - 1)))
        row.update(
            response_real=float(t.mean()),
            response_gen=float(g.mean()),
            response_ratio=ratio,
            response_ratio_err=ratio_err,
            resolution_real=float(res_t),
            resolution_gen=float(res_g),
            resolution_ratio=float(res_g / res_t),
            resolution_ratio_err=float(res_err),
            response_ok=bool(abs(ratio - 1) <= RESPONSE_TOLERANCE),
            resolution_ok=bool(abs(res_g / res_t - 1) <= RESOLUTION_TOLERANCE),
            core_resolution_real=core_t,
            core_resolution_gen=core_g,
            core_resolution_ratio=float(core_g / core_t) if core_t > 0 else None,
        )
        rows.append(row)
    return rows


def barycentre_bias(gen_images: np.ndarray, true: CaloData, contained_cm: float = CONTAINED_CM) -> dict:
    """Mean and standard error of (generated − real) barycentre per event, x and y, for contained showers."""
    c = expected_centre(true.point, true.momentum)
    contained = (np.abs(c) < contained_cm).all(axis=1)
    diff = barycentre(gen_images[contained]) - barycentre(true.energy[contained])
    diff = diff[np.isfinite(diff).all(axis=1)]
    n = len(diff)
    if n == 0:
        return {"n": 0, "bias_x": None, "bias_y": None}
    mean, sem = diff.mean(axis=0), diff.std(axis=0) / np.sqrt(n)
    return {
        "n": int(n),
        "contained_cm": float(contained_cm),
        "bias_x": float(mean[0]),
        "bias_y": float(mean[1]),
        "bias_x_err": float(sem[0]),
        "bias_y_err": float(sem[1]),
        "rms_x": float(np.sqrt((diff[:, 0] ** 2).mean())),
        "rms_y": float(np.sqrt((diff[:, 1] ** 2).mean())),
        "ok": bool(np.all(np.abs(mean) < BARYCENTRE_TOLERANCE_CM)),
    }


def core_fractions(images: np.ndarray) -> np.ndarray:
    """(N, 2): fraction of each image's energy in its hottest cell and in the 3×3 cells around it (0 if empty)."""
    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    total = flat.sum(axis=1)
    safe = np.where(total > 0, total, 1.0)
    return np.stack(
        [flat.max(axis=1) / safe, cluster_3x3(flat.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)) / safe], axis=1
    )


def shower_core(gen_images: np.ndarray, true: CaloData, bins: int = 6) -> list[dict[str, Any]]:
    """Per log-spaced |p| bin: mean hottest-cell and 3×3 energy fractions, real and generated."""
    edges, which = energy_bin_index(true.p_abs, bins)
    f_gen, f_true = core_fractions(gen_images), core_fractions(true.energy)
    rows = []
    for k in range(bins):
        sel = which == k
        row: dict[str, Any] = {"p_lo": float(edges[k]), "p_hi": float(edges[k + 1]), "n": int(sel.sum())}
        if sel.any():
            g, t = f_gen[sel].mean(axis=0), f_true[sel].mean(axis=0)
            row.update(max_cell_real=float(t[0]), max_cell_gen=float(g[0]), e3x3_real=float(t[1]),
                       e3x3_gen=float(g[1]))  # fmt: skip
        rows.append(row)
    return rows


def physics_checks(gen_images: np.ndarray, true: CaloData, bins: int = 6) -> dict[str, Any]:
    """Response/resolution per energy bin and barycentre bias, with a pass flag per quality target."""
    gen = np.asarray(gen_images, dtype=np.float32).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    if len(gen) != len(true):
        raise InputError(f"{true.path}: {len(gen)} generated images but {len(true)} true events")
    rows = response_by_energy(gen, true, bins)
    filled = [r for r in rows if r["response_ratio"] is not None]
    bary = barycentre_bias(gen, true)
    return {
        "energy_bins": rows,
        "max_response_deviation": max((abs(r["response_ratio"] - 1) for r in filled), default=None),
        "max_resolution_deviation": max((abs(r["resolution_ratio"] - 1) for r in filled), default=None),
        "response_ok": bool(filled) and all(r["response_ok"] for r in filled),
        "resolution_ok": bool(filled) and all(r["resolution_ok"] for r in filled),
        "barycentre": bary,
        "core": shower_core(gen, true, bins),
        "tolerances": {
            "response": RESPONSE_TOLERANCE,
            "resolution": RESOLUTION_TOLERANCE,
            "barycentre_cm": BARYCENTRE_TOLERANCE_CM,
        },
    }


def physics_metric(gen_images: np.ndarray, true: CaloData, **_: Any) -> dict[str, Any]:
    """``--metrics physics`` entry of the evaluator: :func:`physics_checks` with the default 6 bins."""
    return physics_checks(gen_images, true)


def _mean_difference(stats: np.ndarray, is_photon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean over e− − mean over γ, its standard error) per column."""
    e, g = stats[~is_photon], stats[is_photon]
    diff = e.mean(axis=0) - g.mean(axis=0)
    err = np.sqrt(e.var(axis=0) / max(len(e), 1) + g.var(axis=0) / max(len(g), 1))
    return diff, err


def particle_type_switch(
    generator, true: CaloData, seed: int = 0, device=None, significance: float = 3.0
) -> dict[str, Any]:
    """Does switching the generator's particle type reproduce the real e−/γ difference of the statistics?

    Real: mean(statistic | e−) − mean(statistic | γ) over the true events. Generated: every event generated
    once as e− and once as γ (same noise, same kinematics), mean difference. Both are in units of the real
    statistic's standard deviation. ``sign_agreement`` is the fraction of statistics whose real difference is
    significant (> ``significance`` standard errors) and whose generated difference has the same sign;
    ``correlation`` is the Pearson correlation of the two difference vectors over those statistics.
    """
    if true.energy is None:
        raise InputError(f"{true.path}: solution has no EnergyDeposit to compare with")
    real_stats = physical_statistics(true.energy, true.point, true.momentum)
    real_diff, real_err = _mean_difference(real_stats, true.is_photon)
    scale = real_stats.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    as_type = {}
    for name, pdg in (("electron", PDG_ELECTRON), ("photon", PDG_PHOTON)):
        forced = CaloData(true.point, true.momentum, np.full(len(true), pdg, dtype=np.int64), path=true.path)
        images = generate(generator, forced, seed=seed, device=device)
        as_type[name] = physical_statistics(images, true.point, true.momentum)
    gen_diff = (as_type["electron"] - as_type["photon"]).mean(axis=0)
    significant = np.abs(real_diff) > significance * real_err
    same_sign = np.sign(gen_diff) == np.sign(real_diff)
    rd, gd = real_diff / scale, gen_diff / scale
    corr = None
    if significant.sum() >= 3 and np.std(gd[significant]) > 0:
        corr = float(np.corrcoef(rd[significant], gd[significant])[0, 1])
    return {
        "statistics": [
            {
                "name": name,
                "real_diff_sd": float(rd[j]),
                "gen_diff_sd": float(gd[j]),
                "significant": bool(significant[j]),
                "same_sign": bool(same_sign[j]),
            }
            for j, name in enumerate(STAT_NAMES)
        ],
        "n_significant": int(significant.sum()),
        "sign_agreement": float(same_sign[significant].mean()) if significant.any() else None,
        "correlation": corr,
    }
