"""Tests for calogan.metrics.two_sample: the estimators on known distributions, and their verdicts on simulator data."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter

from calogan.core.errors import InputError
from calogan.core.fit import seeded
from calogan.ecal.data import CELL_CENTRES
from calogan.ecal.physics import expected_centre, physical_statistics
from calogan.ecal.simulate import simulate_dataset, simulate_showers
from calogan.metrics import calochallenge as cc
from calogan.metrics import distances as dist
from calogan.metrics import two_sample as xm

N_EVENTS = 1200  # 600 per half: enough to separate every broken generator, small enough for CI


# --------------------------------------------------------------------------- estimators on known inputs


def test_cubic_mmd_feature_map_equals_gram_matrix_form():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 7)), rng.normal(0.3, 1.2, size=(250, 7))
    assert dist.mmd_poly_unbiased(x, y) == pytest.approx(dist.mmd_poly_gram(x, y, 3), rel=1e-9, abs=1e-12)
    same = [dist.mmd_poly_unbiased(rng.normal(size=(400, 7)), rng.normal(size=(400, 7))) for _ in range(20)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(20) + 1e-3  # unbiased: mean zero for equal laws
    assert dist.mmd_poly_unbiased(x, y) > 10 * np.std(same)


def test_frechet_distance_of_shifted_gaussians_is_squared_shift():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20000, 3)), rng.normal(size=(20000, 3)) + np.array([1.0, 0.0, 2.0])
    assert dist.frechet_distance(x, y) == pytest.approx(5.0, abs=0.1)
    res = dist.fpd_extrapolated(rng.normal(size=(4000, 3)), rng.normal(size=(4000, 3)), seed=0)
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
    assert all(fpd[g]["convention"] == kpd[g]["convention"] == dist.CONVENTIONS["calogan"] for g in fpd)
    json.dumps(fpd)
    json.dumps(kpd)


def test_shared_high_level_features_give_the_same_numbers(samples, monkeypatch):
    """fidelity computes the high-level features once and hands them to its three tests: same result."""
    true, gens, stats_true, stats = samples
    alone = xm.fidelity_metric(gens["blur"], true, stats["blur"], stats_true, seed=7)
    calls = []
    counted = xm.high_level_features
    monkeypatch.setattr(xm, "high_level_features", lambda *a, **k: calls.append(1) or counted(*a, **k))
    assert xm.fidelity_metric(gens["blur"], true, stats["blur"], stats_true, seed=7) == alone
    assert len(calls) == 2  # generated and true, once each


def test_jetnet_convention_reports_both_errors(samples, monkeypatch):
    true, gens, stats_true, stats = samples
    small = functools.partial(dist.fpd_jetnet, min_samples=300, max_samples=600, num_batches=5, num_points=4)
    monkeypatch.setattr(dist, "fpd_jetnet", small)  # jetnet's 20,000-50,000-row batches cost seconds
    res = xm.fpd_metric(gens["resim"], true, stats["resim"], stats_true, seed=7, convention="jetnet")
    assert res["convention"] == dist.CONVENTIONS["jetnet"]
    assert all(res[k] > 0 for k in ("fpd_err", "fpd_fit_err", "fpd_ref_err", "fpd_ref_fit_err"))
    json.dumps(res)


def test_separation_and_density_coverage(samples, tmp_path):
    sep, prdc = _run("sep", samples), _run("prdc", samples)
    assert sep["resim"]["sep_mean"] < 1.5 * sep["resim"]["sep_mean_ref"]
    assert prdc["resim"]["coverage"] > prdc["resim"]["coverage_ref"] - 0.05
    assert prdc["resim"]["density"] > 0.85 * prdc["resim"]["density_ref"]
    for g in ("shuffled", "scale1.3", "blur", "constant"):
        assert sep[g]["sep_max"] > 3 * sep[g]["sep_max_ref"], g
        assert prdc[g]["coverage"] < prdc[g]["coverage_ref"] - 0.2, g
    assert sep["scale1.3"]["sep_max_observable"] == "energy_response"
    assert sep["resim"]["binning"] == xm.SEP_BINNING.format(bins=50)
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


# --------------------------------------------------------------------------- CaloChallenge classifier protocol

CC_SMALL = cc.CCSettings(width=64, epochs=8, batch_size=100)  # the protocol at test size (600 per class)


def test_cc_high_level_features_of_a_single_cell():
    true = simulate_dataset(3, seed=0)
    images = np.zeros((3, 30, 30), np.float32)
    images[:, 4, 20] = (
        10.0 * cc.UNITS_PER_MEV
    )  # 10 MeV in the cell at x = CELL_CENTRES[20], y = CELL_CENTRES[4]
    images[:, 0, 0] = 0.5 * cc.UNITS_PER_MEV  # below the 1 MeV readout threshold: zeroed
    feats = cc.high_level_features(images, true)
    names = cc.HIGH_LEVEL_NAMES
    centre = expected_centre(true.point, true.momentum)
    dx, dy = CELL_CENTRES[20] - centre[:, 0], CELL_CENTRES[4] - centre[:, 1]
    col = {n: feats[:, i].astype(np.float64) for i, n in enumerate(names)}
    np.testing.assert_allclose(col["log10 E_tot"], 1.0, atol=1e-6)
    np.testing.assert_allclose(col["log10 E_inc"], np.log10(true.p_abs * 1000), rtol=1e-6)
    np.testing.assert_allclose(col["centre_x"], dx / 10, atol=1e-5)
    np.testing.assert_allclose(col["centre_y"], dy / 10, atol=1e-5)
    np.testing.assert_allclose(col["centre_r"], np.hypot(dx, dy) / 10, atol=1e-5)
    np.testing.assert_allclose([col["width_x"], col["width_y"], col["width_r"]], 0.0, atol=1e-3)
    np.testing.assert_allclose(col["sparsity"], 1 - 1 / 900, atol=1e-6)
    low = cc.low_level_features(images, true)
    assert low.shape == (3, 1 + 900 + len(cc.CONDITION_NAMES))
    np.testing.assert_allclose(low[:, 1 + 4 * 30 + 20], 10.0 / (true.p_abs * 1000), rtol=1e-5)
    assert (low[:, 1] == 0).all()  # the sub-threshold cell


def test_cc_dnn_is_the_published_architecture():
    net = cc.dnn(14, cc.PUBLISHED)
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [
        (14, 2048),
        (2048, 2048),
        (2048, 2048),
        (2048, 1),
    ]
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in net) == 3
    assert (cc.PUBLISHED.lr, cc.PUBLISHED.batch_size, cc.PUBLISHED.epochs) == (2e-4, 1000, 50)


def test_cls_cc_protocol(samples):
    true, gens, _, _ = samples
    resim = xm.cls_cc_metric(gens["resim"], true, seed=7, settings=CC_SMALL)
    for kind in ("high", "low"):
        assert abs(resim[f"auc_{kind}"] - resim[f"auc_{kind}_ref"]) < 0.1, kind
        assert resim[kind]["n_validation"] == 2 * 120  # 20 % of each class of 600
    assert "CaloChallenge" in resim["convention"] and resim["settings"]["width"] == 64
    const = xm.cls_cc_metric(
        gens["constant"], true, seed=7, settings=CC_SMALL, kinds=("high",), reference=False
    )
    assert const["auc_high"] > 0.95 and const["jsd_high"] > 0.5 and "auc_high_ref" not in const
    again = xm.field_protocol_auc(gens["constant"], true, kind="high", seed=7, settings=CC_SMALL)
    assert again == const["auc_high"]  # seeded, and the public function is the metric's value
    json.dumps(resim)


def test_fit_loop_selects_the_best_epoch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float64)
    rows = np.arange(400)
    model = seeded(lambda: cc.dnn(3, cc.CCSettings(width=16, layers=1)), 0)
    logits, best = xm.fit_binary_classifier(model, x, y, rows[:300], rows[300:], 0, torch.device("cpu"), 30,
                                            50, lr=1e-2, select_by="accuracy")  # fmt: skip
    assert 1 <= best <= 30 and ((logits[300:] > 0) == (y[300:] > 0)).mean() > 0.9
    with pytest.raises(ValueError, match="select_by"):
        xm.fit_binary_classifier(
            model, x, y, rows, rows, 0, torch.device("cpu"), 1, 50, lr=1e-3, select_by="auc"
        )
