"""PRD: the formula on fixed histograms, AUC semantics, the batched k-means against the sklearn baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import auc as sk_auc

from calogan.metrics.prd import auc, compute_prd, compute_prd_sklearn, f_beta_scores, prd_from_histograms


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small k-means problems are overhead-bound; one thread avoids thread-pool stalls on a busy 2-core CI box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _formula(eval_dist, ref_dist, num_angles=1001):
    """The PRD definition written out angle by angle."""
    prec, rec = [], []
    for theta in np.linspace(1e-10, math.pi / 2 - 1e-10, num_angles):
        lam = math.tan(theta)
        p = sum(min(lam * r, e) for e, r in zip(eval_dist, ref_dist))
        prec.append(min(max(p, 0.0), 1.0))
        rec.append(min(max(p / lam, 0.0), 1.0))
    return np.array(prec), np.array(rec)


def test_histogram_formula_exact():
    rng = np.random.default_rng(0)
    ev, rf = rng.dirichlet(np.ones(12)), rng.dirichlet(np.ones(12))
    p, r = prd_from_histograms(ev, rf)
    pf, rf_ = _formula(ev, rf)
    np.testing.assert_allclose(p, pf, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r, rf_, rtol=1e-9, atol=1e-12)
    stack_p, stack_r = prd_from_histograms(np.stack([ev, rf]), np.stack([rf, ev]), num_angles=51)
    assert stack_p.shape == (2, 51)
    np.testing.assert_allclose(stack_p[0], prd_from_histograms(ev, rf, 51)[0])


def test_identical_and_disjoint_histograms():
    h = np.full(10, 0.1)
    p, r = prd_from_histograms(h, h)
    assert auc(p, r) == pytest.approx(1.0, abs=1e-6)
    a = np.r_[np.full(5, 0.2), np.zeros(5)]
    p, r = prd_from_histograms(a, a[::-1])
    assert auc(p, r) == pytest.approx(0.0, abs=1e-9)
    f8, f1_8 = f_beta_scores(*prd_from_histograms(h, h))
    assert f8 == pytest.approx(1.0, abs=1e-6) and f1_8 == pytest.approx(1.0, abs=1e-6)


def test_auc_sklearn_semantics():
    rng = np.random.default_rng(1)
    p, r = prd_from_histograms(rng.dirichlet(np.ones(8)), rng.dirichlet(np.ones(8)))
    assert auc(p, r) == pytest.approx(sk_auc(p, r), abs=1e-12)
    assert auc(p[::-1], r[::-1]) == pytest.approx(sk_auc(p[::-1], r[::-1]), abs=1e-12)
    with pytest.raises(ValueError):
        auc(np.array([0.0, 1.0, 0.5]), np.array([1.0, 0.5, 0.0]))


def _mixture(n, centres, rng, shift=0.0):
    lab = rng.integers(0, len(centres), n)
    return centres[lab] + rng.normal(0, 0.5, (n, centres.shape[1])) + shift


def test_fast_prd_extremes_and_seeding():
    rng = np.random.default_rng(2)
    centres = rng.normal(0, 1, (8, 6))
    a, b = _mixture(1500, centres, rng), _mixture(1500, centres, rng)
    same = compute_prd(a, b, num_clusters=10, num_runs=4, seed=3)
    assert same.auc > 0.9 and same.aucs.shape == (4,) and same.precision.shape == (1001,)
    far = compute_prd(a, b + 100.0, num_clusters=10, num_runs=2, seed=3)
    assert far.auc < 0.05
    again = compute_prd(a, b, num_clusters=10, num_runs=4, seed=3)
    np.testing.assert_array_equal(same.precision, again.precision)
    assert same.auc == again.auc
    other = compute_prd(a, b, num_clusters=10, num_runs=4, seed=4)
    assert not np.array_equal(same.aucs, other.aucs)
    with pytest.raises(ValueError):
        compute_prd(a, b[:-1])
    with pytest.raises(ValueError):
        compute_prd(a, np.full_like(b, np.nan))


def test_fast_prd_agrees_with_sklearn_baseline():
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 1, (20, 8))
    ref = _mixture(3000, centres, rng)
    ev = _mixture(3000, centres, rng, shift=0.5)
    fast = compute_prd(ev, ref, num_clusters=20, num_runs=10, seed=1)
    base = compute_prd_sklearn(ev, ref, num_clusters=20, num_runs=6, seed=1)
    noise = math.hypot(fast.auc_std, base.auc_std)
    assert 0.1 < base.auc < 0.95  # a non-trivial comparison
    assert abs(fast.auc - base.auc) < 3 * noise + 0.01
    assert abs(fast.f8 - base.f8) < 0.05 and abs(fast.f1_8 - base.f1_8) < 0.05
