"""Physical statistics: vectorised vs per-event loop reference, degenerate inputs, invariances, observables."""

from __future__ import annotations

import numpy as np
import pytest

from calogan.ecal.data import load_npz, split_path
from calogan.ecal.physics import (
    STAT_NAMES,
    _reference_statistics_one,
    barycentre,
    energy_response,
    expected_centre,
    physical_statistics,
    shower_profiles,
    standardise_statistics,
)


def _random_batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    img = (rng.gamma(0.3, 1.0, (n, 30, 30)) * (rng.random((n, 30, 30)) < 0.6)).astype(np.float32)
    point = rng.normal(0, 3, (n, 3)).astype(np.float32)
    mom = np.c_[rng.normal(0, 3, (n, 2)), rng.uniform(1, 100, n)].astype(np.float32)
    return img, point, mom


def _reference(img, point, mom):
    return np.array([_reference_statistics_one(img[i], point[i], mom[i]) for i in range(len(img))])


def test_names_and_shape():
    img, point, mom = _random_batch(7)
    stats = physical_statistics(img, point, mom)
    assert stats.shape == (7, 24) and stats.dtype == np.float64
    assert len(STAT_NAMES) == 24 and len(set(STAT_NAMES)) == 24
    assert STAT_NAMES[:4] == (
        "longitudinal_asymmetry",
        "transverse_asymmetry",
        "longitudinal_width",
        "transverse_width",
    )
    assert STAT_NAMES[4] == "sparsity_1e-05" and STAT_NAMES[-1] == "sparsity_0.1"


def test_vectorised_matches_loop_reference_random_and_degenerate():
    img, point, mom = _random_batch(40, seed=1)
    mom[0, 0] = 0.0  # px = 0
    mom[1, 1] = 0.0  # py = 0
    mom[2, :2] = 0.0  # px = py = 0
    img[3] = 0.0  # empty image
    mom[4, 0] = -0.0  # negative zero px
    mom[5, 1] = -0.0  # negative zero py
    mom[6, 0] = mom[6, 1] = -0.0
    # a line through cell centres exactly: c = (0.5, 0.5), slope ±1
    point[7, :2] = 0.5
    mom[7] = [1.0, 1.0, 1e9]
    img[8, :15] = 0.0  # half-empty image
    stats = physical_statistics(img, point, mom, chunk_size=16)  # several chunks
    ref = _reference(img, point, mom)
    assert np.isfinite(stats).all()
    np.testing.assert_allclose(stats, ref, rtol=1e-9, atol=1e-9)


def test_degenerate_values_documented():
    img, point, mom = _random_batch(4, seed=2)
    mom[0, 0] = 0.0
    mom[1, :2] = 0.0
    img[2] = 0.0
    s = physical_statistics(img, point, mom)
    assert s[0, 2] == 0.0 and s[0, 3] == 0.0  # px = 0: infinite rescale → widths 0
    assert s[1, 0] == 1.0 and s[1, 1] == 1.0  # px = py = 0: every cell on side A
    assert (s[2, :4] == 0).all() and (s[2, 4:] == 1).all()  # empty image
    # the sign of a zero px flips the side of the vertical transverse line, as in the reference
    img1, point1, mom1 = _random_batch(1, seed=3)
    mom_pos, mom_neg = mom1.copy(), mom1.copy()
    mom_pos[0, 0], mom_neg[0, 0] = 0.0, -0.0
    a = physical_statistics(img1, point1, mom_pos)[0, 1]
    b = physical_statistics(img1, point1, mom_neg)[0, 1]
    assert a == pytest.approx(-b, abs=1e-12)


def test_matches_reference_on_simulated_showers(tiny_data_dir):
    data = load_npz(split_path(tiny_data_dir, "val", "solution"), require_energy=True)
    idx = np.arange(0, len(data), 20)
    stats = physical_statistics(data.energy, data.point, data.momentum)
    ref = _reference(data.energy[idx], data.point[idx], data.momentum[idx])
    np.testing.assert_allclose(stats[idx], ref, rtol=1e-9, atol=1e-9)
    assert np.isfinite(stats).all()
    assert (np.abs(stats[:, :2]) <= 1 + 1e-12).all() and (stats[:, 2:4] >= 0).all()
    assert (np.diff(stats[:, 4:], axis=1) <= 0).all()  # sparsity falls with alpha


def test_scale_invariance():
    img, point, mom = _random_batch(20, seed=4)
    a = physical_statistics(img, point, mom)
    b = physical_statistics(img * np.float32(4.0), point, mom)  # a power of two: exact in float
    cols = [0, 1] + list(range(4, 24))
    np.testing.assert_allclose(a[:, cols], b[:, cols], rtol=1e-12, atol=1e-12)
    # widths: invariant up to the 1e-5 offset in the denominator
    np.testing.assert_allclose(a[:, 2:4], b[:, 2:4], rtol=1e-4)


def test_input_validation():
    img, point, mom = _random_batch(3)
    with pytest.raises(ValueError):
        physical_statistics(img, point[:2], mom)


def test_standardise():
    rng = np.random.default_rng(5)
    ref = rng.lognormal(0, 2, (500, 24))
    r = standardise_statistics(ref, ref, "rank")
    assert r.min() >= 0 and r.max() <= 1
    np.testing.assert_allclose(r.mean(axis=0), 0.5, atol=1e-9)
    z = standardise_statistics(ref, ref, "z")
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-9)
    with pytest.raises(ValueError):
        standardise_statistics(ref, ref, "bogus")


def test_observables():
    img = np.zeros((2, 30, 30), np.float32)
    img[0, 10, 20] = 5.0  # y = centres[10], x = centres[20]
    img[1, 0, 0] = 1.0
    img[1, 0, 1] = 1.0
    b = barycentre(img)
    np.testing.assert_allclose(b[0], [5.5, -4.5])
    np.testing.assert_allclose(b[1], [-14.0, -14.5])
    mom = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    np.testing.assert_allclose(energy_response(img, mom), [1.0, 1.0])
    point = np.zeros((2, 3))
    mom2 = np.array([[1.0, 0.0, 25.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(expected_centre(point, mom2), [[1.0, 0.0], [0.0, 0.0]])
    img3, point3, mom3 = _random_batch(5)
    prof = shower_profiles(img3, point3, mom3)
    assert prof["longitudinal"].shape == (5, 30) and prof["radial"].shape == (5, 30)
    assert (prof["radial"].sum(1) <= 1 + 1e-9).all() and (prof["longitudinal"] >= 0).all()
