"""Differentiable shower statistics agree with the exact ones they stand for, and carry gradients."""

from __future__ import annotations

import numpy as np
import torch

from calogan.ecal.data import load_npz, split_path
from calogan.ecal.physics import SPARSITY_ALPHAS, physical_statistics
from calogan.ecal.soft_stats import (
    PROFILE_RANKS,
    RING_EDGES_CM,
    SUMMARY_NAMES,
    core_fractions,
    distance_from_expected_centre,
    radial_profile,
    rank_profile,
    ring_index,
    shower_summary,
    soft_sparsity,
)
from calogan.metrics.response import core_fractions as exact_core_fractions


def test_soft_sparsity_and_core_follow_the_exact_statistics(tiny_data_dir):
    data = load_npz(split_path(tiny_data_dir, "train"), require_energy=True).subset(slice(0, 300))
    images = torch.from_numpy(data.energy).double()
    exact = physical_statistics(data.energy, data.point, data.momentum)[:, 4:]
    soft = soft_sparsity(images).numpy()
    assert np.abs(soft.mean(0) - exact.mean(0)).max() < 0.01  # mean cell counts per level agree
    for level in (0, 5, 10):
        assert np.corrcoef(soft[:, level], exact[:, level])[0, 1] > 0.9
    np.testing.assert_allclose(core_fractions(images).numpy(), exact_core_fractions(data.energy), atol=1e-6)


def test_shower_summary_is_differentiable(tiny_data_dir):
    data = load_npz(split_path(tiny_data_dir, "train"), require_energy=True).subset(slice(0, 16))
    images = torch.from_numpy(data.energy).clone().requires_grad_(True)
    summary = shower_summary(images, torch.from_numpy(data.conditions()))
    assert summary.shape == (16, len(SUMMARY_NAMES)) and torch.isfinite(summary).all()
    summary.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_rank_profile_is_the_sorted_cell_spectrum_and_inverts_the_sparsity(tiny_data_dir):
    data = load_npz(split_path(tiny_data_dir, "train"), require_energy=True).subset(slice(0, 200))
    images = torch.from_numpy(data.energy).double().clone().requires_grad_(True)
    profile = rank_profile(images)
    assert profile.shape == (200, len(PROFILE_RANKS))
    flat = data.energy.reshape(200, -1).astype(np.float64)
    frac = flat / flat.sum(1, keepdims=True)
    ordered = -np.sort(-frac, axis=1)
    np.testing.assert_allclose(
        profile.detach().numpy(), np.log(ordered[:, list(PROFILE_RANKS)] + 1e-9), atol=1e-6
    )
    assert (np.diff(profile.detach().numpy(), axis=1) <= 0).all()  # non-increasing in the rank
    # the k-th hottest cell holds >= alpha of the energy exactly when more than k cells do: the profile is the
    # inverse of the hard sparsity counts (up to the float rounding of cells sitting on a threshold)
    counts = np.rint(physical_statistics(data.energy, data.point, data.momentum)[:, 4:] * frac.shape[1])
    above = ordered[:, list(PROFILE_RANKS), None] >= SPARSITY_ALPHAS[None, None, :] * (1 + 1e-9)
    more = counts[:, None, :] > np.array(PROFILE_RANKS)[None, :, None]
    assert (above <= more).all() and (above == more).mean() > 0.999
    profile.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_radial_profile_puts_each_cell_in_the_ring_of_its_distance_from_the_centroid():
    # centroid at the centre of cell (15, 15); cells (15, 10) and (15, 20) lie 5 cm from it
    images = torch.zeros(1, 30, 30, dtype=torch.float64)
    images[0, 15, 15], images[0, 15, 10], images[0, 15, 20] = 2.0, 0.5, 0.5
    images.requires_grad_(True)
    profile = radial_profile(images)
    expected = np.zeros(len(RING_EDGES_CM) - 1)
    expected[0], expected[int(np.searchsorted(RING_EDGES_CM, 5.0)) - 1] = 2 / 3, 1 / 3
    np.testing.assert_allclose(np.exp(profile.detach().numpy()[0]), expected, atol=2e-6)  # floor 1e-6
    # the core ring's log fraction rises with the core cell and falls with a far one
    profile[0, 0].backward()
    assert images.grad[0, 15, 15] > 0 and images.grad[0, 15, 20] < 0
    # the rings follow the shower: moved by 3 cells, the profile is the same (a shower cannot fake a tail by
    # sitting off centre)
    moved = torch.roll(images.detach(), 3, dims=2)
    torch.testing.assert_close(radial_profile(moved), profile.detach())


def test_radial_profile_holds_all_the_energy_of_real_showers(tiny_data_dir):
    data = load_npz(split_path(tiny_data_dir, "train"), require_energy=True).subset(slice(0, 100))
    profile = radial_profile(torch.from_numpy(data.energy).double(), 0.0)
    np.testing.assert_allclose(np.exp(profile.numpy()).sum(1), 1.0, atol=1e-6)


def test_rings_around_the_expected_centre():
    # straight track at (0.5, 0.5) cm: the expected centre is the centre of cell (15, 15)
    conditions = torch.tensor([[0.5, 0.5, 0.0, 0.0, 10.0, 1.0]], dtype=torch.float64)
    which = ring_index(distance_from_expected_centre(conditions))[0]
    assert which[15, 15] == 0 and which[15, 20] == int(np.searchsorted(RING_EDGES_CM, 5.0)) - 1
    # the last ring is open: from a shower in one corner cell, the opposite corner lies 41 cm away
    corner = torch.tensor([[14.5, 14.5, 0.0, 0.0, 10.0, 1.0]], dtype=torch.float64)
    assert ring_index(distance_from_expected_centre(corner))[0, 0, 0] == len(RING_EDGES_CM) - 2
