"""Differentiable shower statistics agree with the exact ones they stand for, and carry gradients."""

from __future__ import annotations

import numpy as np
import torch

from calogan.ecal.data import load_npz, split_path
from calogan.ecal.physics import physical_statistics
from calogan.ecal.soft_stats import SUMMARY_NAMES, core_fractions, shower_summary, soft_sparsity
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
