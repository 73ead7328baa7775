"""Conditional physics checks (calogan.metrics.response): they pass an independent re-simulation, catch broken ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from calogan.core.errors import InputError
from calogan.ecal.data import PDG_ELECTRON
from calogan.ecal.simulate import simulate_dataset, simulate_showers
from calogan.metrics.response import (
    core_fractions,
    core_resolution,
    energy_bin_edges,
    particle_type_switch,
    physics_checks,
)
from calogan.metrics.scoring import parse_metrics
from calogan.metrics.tables import format_physics_table
from calogan.metrics.two_sample import EXTRA_METRICS


@pytest.fixture(scope="module")
def truth():
    return simulate_dataset(4000, seed=5)


@pytest.fixture(scope="module")
def resim(truth):
    return simulate_showers(truth.point, truth.momentum, truth.pdg, np.random.default_rng(6))


def test_resimulation_passes_every_target(truth, resim):
    out = physics_checks(resim, truth)
    assert len(out["energy_bins"]) == 6
    assert sum(r["n"] for r in out["energy_bins"]) == len(truth)
    assert out["response_ok"] and out["resolution_ok"], out["energy_bins"]
    assert out["max_response_deviation"] < 0.03
    assert out["barycentre"]["ok"] and abs(out["barycentre"]["bias_x"]) < 0.1
    table = format_physics_table(out)
    assert "response ratio" in table and "barycentre bias" in table


def test_wrong_scale_and_shifted_showers_fail(truth, resim):
    scaled = physics_checks(resim * 1.1, truth)
    assert not scaled["response_ok"]
    assert all(abs(r["response_ratio"] - 1.1) < 0.03 for r in scaled["energy_bins"])
    assert scaled["resolution_ok"]  # a pure scale keeps the relative resolution
    shifted = physics_checks(np.roll(resim, 2, axis=2), truth)  # two cells along +x
    assert not shifted["barycentre"]["ok"]
    assert 1.5 < shifted["barycentre"]["bias_x"] < 2.1 and abs(shifted["barycentre"]["bias_y"]) < 0.1
    smeared = resim * np.random.default_rng(0).lognormal(0, 0.3, len(resim))[:, None, None].astype(np.float32)
    assert not physics_checks(smeared, truth)["resolution_ok"]


def test_bins_cover_the_sample_and_bad_input_is_refused(truth, resim):
    edges = energy_bin_edges(truth.p_abs)
    assert edges[0] == truth.p_abs.min() and edges[-1] > truth.p_abs.max()
    with pytest.raises(InputError):
        physics_checks(resim[:10], truth)
    assert "physics" in parse_metrics("physics")


class SimulatorGenerator(nn.Module):
    """Test double with the generator interface: runs the simulator on the given conditions."""

    noise_dim = 1

    def __init__(self, ignore_type: bool = False):
        super().__init__()
        self.ignore_type = ignore_type
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = cond.numpy().astype(np.float64)
        point = np.concatenate([c[:, :2], np.zeros((len(c), 1))], axis=1)
        pdg = np.where(c[:, 5] > 0.5, 22, 11)
        if self.ignore_type:
            pdg = np.full(len(c), PDG_ELECTRON)
        rng = np.random.default_rng(int(abs(noise[0, 0].item()) * 1e6))
        return torch.from_numpy(simulate_showers(point, c[:, 2:5], pdg, rng))


def test_particle_type_switch_reproduces_the_real_difference(truth):
    good = particle_type_switch(SimulatorGenerator(), truth)
    assert good["n_significant"] >= 3
    assert good["sign_agreement"] >= 0.9 and good["correlation"] > 0.9
    blind = particle_type_switch(SimulatorGenerator(ignore_type=True), truth)
    assert blind["sign_agreement"] == 0.0  # no difference at all has no sign


def test_physics_metric_in_the_evaluator_registry(truth, resim):
    kw = dict(true_images=truth.energy, true=truth, stats_gen=None, stats_true=None, seed=7)
    good = EXTRA_METRICS["physics"](gen_images=resim, **kw)
    shuffled = EXTRA_METRICS["physics"](
        gen_images=resim[np.random.default_rng(1).permutation(len(resim))], **kw
    )
    assert good["response_ok"] and not shuffled["response_ok"]
    # a mean bias cannot see shuffling (it averages out); the per-event RMS does
    assert shuffled["barycentre"]["rms_x"] > 3 * good["barycentre"]["rms_x"]


def test_shower_core_fractions_separate_narrow_from_real_showers(truth, resim):
    img = np.zeros((2, 30, 30), np.float32)
    img[0, 10, 10], img[0, 10, 11], img[0, 20, 20] = 6.0, 2.0, 2.0  # 3x3 around the max holds 8 of 10
    assert np.allclose(core_fractions(img), [[0.6, 0.8], [0.0, 0.0]])  # an empty image gives 0, not NaN
    same = physics_checks(resim, truth)["core"]
    assert all(abs(r["max_cell_gen"] / r["max_cell_real"] - 1) < 0.05 for r in same if r["n"] > 100)
    # squaring and renormalising concentrates every shower: the hottest-cell fraction must rise
    sq = resim.astype(np.float64) ** 2
    sq *= resim.sum((1, 2), keepdims=True) / np.maximum(sq.sum((1, 2), keepdims=True), 1e-12)
    narrow = physics_checks(sq.astype(np.float32), truth)
    assert all(r["max_cell_gen"] > 1.2 * r["max_cell_real"] for r in narrow["core"] if r["n"] > 100)
    assert "shower core" in format_physics_table(narrow)


def test_core_resolution_ignores_tails_that_dominate_the_std():
    rng = np.random.default_rng(0)
    core = rng.normal(1.0, 0.05, 20000)
    tailed = np.concatenate([core, rng.uniform(0.05, 0.5, 1000)])  # 5 % leakage events
    assert abs(core_resolution(core) - 0.05) < 0.003
    assert abs(core_resolution(tailed) / core_resolution(core) - 1) < 0.1
    assert tailed.std() / tailed.mean() > 2 * core.std()  # the std-based resolution more than doubles
