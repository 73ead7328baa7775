"""Tests for calogan.metrics.two_sample: the estimators on known distributions, and their verdicts on simulator data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter

from calogan.core.errors import InputError
from calogan.ecal.physics import physical_statistics
from calogan.ecal.simulate import simulate_dataset, simulate_showers
from calogan.metrics import two_sample as xm

N_EVENTS = 1200  # 600 per half: enough to separate every broken generator, small enough for CI


# --------------------------------------------------------------------------- estimators on known inputs


def test_cubic_mmd_feature_map_equals_gram_matrix_form():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 7)), rng.normal(0.3, 1.2, size=(250, 7))
    assert xm.mmd_poly_unbiased(x, y) == pytest.approx(xm._mmd_poly_direct(x, y), rel=1e-9, abs=1e-12)
    same = [xm.mmd_poly_unbiased(rng.normal(size=(400, 7)), rng.normal(size=(400, 7))) for _ in range(20)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(20) + 1e-3  # unbiased: mean zero for equal laws
    assert xm.mmd_poly_unbiased(x, y) > 10 * np.std(same)


def test_frechet_distance_of_shifted_gaussians_is_squared_shift():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20000, 3)), rng.normal(size=(20000, 3)) + np.array([1.0, 0.0, 2.0])
    assert xm.frechet_distance(x, y) == pytest.approx(5.0, abs=0.1)
    res = xm.fpd_extrapolated(rng.normal(size=(4000, 3)), rng.normal(size=(4000, 3)), seed=0)
    assert abs(res["value"]) < 5 * res["error"] + 0.01  # the 1/N bias is removed by the extrapolation
    assert res["at_full_n"] > 0


def test_separation_power_bounds():
    rng = np.random.default_rng(2)
    a = rng.normal(size=5000)
    assert xm.separation_power(a, a) == 0.0
    assert xm.separation_power(a, a + 100.0) == pytest.approx(1.0)
    assert 0.0 < xm.separation_power(a, a + 0.5) < 1.0
    assert np.isfinite(xm.separation_power(np.ones(10), np.ones(10)))


def test_density_coverage_against_brute_force():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(200, 4)), rng.normal(0.5, 1.0, size=(150, 4))
    got = xm.density_coverage(real, fake, k=5, chunk=64)
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=2)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=2)
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=2)
    r_rad, f_rad = np.sort(d_rr, axis=1)[:, 5], np.sort(d_ff, axis=1)[:, 5]
    inside = d_fr < r_rad[None]
    assert got["density"] == pytest.approx(inside.sum() / (5 * len(fake)), rel=1e-5)
    assert got["coverage"] == pytest.approx(inside.any(axis=0).mean(), rel=1e-5)
    assert got["precision"] == pytest.approx(inside.any(axis=1).mean(), rel=1e-5)
    assert got["recall"] == pytest.approx((d_fr.T < f_rad[None]).any(axis=1).mean(), rel=1e-5)
    far = xm.density_coverage(real, fake + 50.0, k=5)
    assert far["density"] == 0.0 and far["coverage"] == 0.0


def test_mismatched_sizes_are_input_errors():
    data = simulate_dataset(20, seed=0)
    with pytest.raises(InputError, match="20 true events"):
        xm.fpd_metric(gen_images=data.energy[:10], true=data, seed=0)
    with pytest.raises(InputError, match="true EnergyDeposit"):
        xm.sep_metric(
            gen_images=data.energy,
            true=data.subset(slice(None)).__class__(data.point, data.momentum, data.pdg),
        )


# --------------------------------------------------------------------------- acceptance on simulator data


@pytest.fixture(scope="module")
def samples():
    """True sample, an independent re-simulation of the same conditions, and four broken generators."""
    true = simulate_dataset(N_EVENTS, seed=11)
    rng = np.random.default_rng(12)
    gens = {
        "resim": simulate_showers(true.point, true.momentum, true.pdg, rng),
        "shuffled": true.energy[rng.permutation(N_EVENTS)],
        "scale1.3": true.energy * 1.3,
        "blur": uniform_filter(true.energy, size=(1, 3, 3)),
        "constant": np.broadcast_to(true.energy.mean(axis=0), true.energy.shape).copy(),
    }
    stats_true = physical_statistics(true.energy, true.point, true.momentum)
    stats = {k: physical_statistics(v, true.point, true.momentum) for k, v in gens.items()}
    return true, gens, stats_true, stats


def _run(name, samples, **kw):
    true, gens, stats_true, stats = samples
    return {
        g: xm.EXTRA_METRICS[name](
            gen_images=img, true_images=true.energy, true=true, stats_gen=stats[g], stats_true=stats_true,
            emb_gen=None, emb_true=None, seed=7, device=torch.device("cpu"), **kw,
        )
        for g, img in gens.items()
    }  # fmt: skip


def test_fpd_kpd_separate_broken_generators(samples):
    fpd, kpd = _run("fpd", samples), _run("kpd", samples)
    ref = fpd["resim"]
    assert abs(ref["fpd"] - ref["fpd_ref"]) < 3 * np.hypot(ref["fpd_err"], ref["fpd_ref_err"]) + 0.5
    assert abs(kpd["resim"]["kpd"] - kpd["resim"]["kpd_ref"]) < 3 * np.hypot(
        kpd["resim"]["kpd_err"], kpd["resim"]["kpd_ref_err"]
    )
    for g in ("shuffled", "scale1.3", "blur", "constant"):
        assert fpd[g]["fpd"] > 10 * fpd[g]["fpd_ref"] + 10 * fpd[g]["fpd_err"], g
        assert kpd[g]["kpd"] > kpd[g]["kpd_ref"] + 10 * kpd[g]["kpd_err"], g
    json.dumps(fpd)
    json.dumps(kpd)


def test_separation_and_density_coverage(samples, tmp_path):
    sep, prdc = _run("sep", samples), _run("prdc", samples)
    assert sep["resim"]["sep_mean"] < 1.5 * sep["resim"]["sep_mean_ref"]
    assert prdc["resim"]["coverage"] > prdc["resim"]["coverage_ref"] - 0.05
    assert prdc["resim"]["density"] > 0.85 * prdc["resim"]["density_ref"]
    for g in ("shuffled", "scale1.3", "blur", "constant"):
        assert sep[g]["sep_max"] > 3 * sep[g]["sep_max_ref"], g
        assert prdc[g]["coverage"] < prdc[g]["coverage_ref"] - 0.2, g
    assert sep["scale1.3"]["sep_max_observable"] == "energy_response"
    written = xm.make_plots({"sep": sep["blur"]}, tmp_path)
    assert {p.name for p in written} == {
        "separation_power.csv",
        "separation_power.md",
        "separation_power.png",
    }
    assert len((tmp_path / "separation_power.csv").read_text().splitlines()) == 1 + len(xm.HIGH_LEVEL_NAMES)
    json.dumps(sep)
    json.dumps(prdc)


def test_classifier_tests_separate_broken_generators(samples, tmp_path):
    true, gens, stats_true, stats = samples
    high = {
        g: xm.cls_metric(gen_images=img, true=true, stats_gen=stats[g], stats_true=stats_true, seed=7,
                         kinds=("high",), hgb_iter=15, reference=g == "resim")
        for g, img in gens.items()
    }  # fmt: skip
    assert abs(high["resim"]["auc_high"] - 0.5) < 0.1 and abs(high["resim"]["auc_high_ref"] - 0.5) < 0.1
    for g in ("shuffled", "scale1.3", "blur", "constant"):
        assert high[g]["auc_high"] > 0.9 and high[g]["jsd_high"] > 0.3, g
    low = xm.cls_metric(gen_images=gens["resim"], true=true, seed=7, kinds=("low",), epochs=3)
    assert abs(low["auc_low"] - low["auc_low_ref"]) < 0.1
    const = xm.cls_metric(
        gen_images=gens["constant"], true=true, seed=7, kinds=("low",), epochs=3, reference=False
    )
    assert const["auc_low"] > 0.85 and "auc_low_ref" not in const
    again = xm.cls_metric(
        gen_images=gens["constant"], true=true, seed=7, kinds=("low",), epochs=3, reference=False
    )
    assert again["auc_low"] == const["auc_low"]  # seeded: reproducible
    both = {**high["resim"], **{k: v for k, v in low.items() if k.startswith("low")}}
    assert [p.name for p in xm.make_plots({"cls": both}, tmp_path)] == ["classifier_roc.png"]
    json.dumps(both)
