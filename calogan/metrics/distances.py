"""Fréchet and kernel physics distances (FPD, KPD; Kansal et al., arXiv:2211.10295) on feature arrays, two conventions.

- ``calogan`` (the default): features Gaussianised by the caller; FPD measured on subsamples drawn without
  replacement at sizes from 20 % of the sample to all of it, ``repeats`` times per size, and the mean curve
  extrapolated linearly in 1/N to N → ∞. KPD: unbiased MMD² with the cubic kernel, median and half the
  16–84 % range over batches drawn without replacement.
- ``jetnet`` (jetnet 0.2.5 ``evaluation.fpd`` / ``evaluation.kpd``, used by CaloChallenge): features divided by
  the largest |value| of the real sample; FPD averaged over ``num_batches`` batches drawn with replacement at
  sizes regular in 1/N, a linear fit bounded ≥ 0; KPD with the degree-4 kernel on batches drawn with
  replacement.

The FPD error is the same in both: the sampling error of the value, from random half-splits of the two
samples (:func:`split_half_variance`), combined with the Monte-Carlo error of the subsample or batch means.
jetnet's own error (the fit's covariance; it misses the fluctuation that every batch of one sample shares, and
is 1.4–2.5× too small on Gaussian null replicas) is kept as ``fit_error``. On heavy-tailed features the
jetnet convention's value also moves with the real sample's maximum, which no resampling of one sample sees:
there both errors are too small (docs/metrics.md, "FPD error bars").
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import linalg
from scipy.optimize import curve_fit
from scipy.stats import iqr

#: What each convention means, as named in the JSON (``convention`` keys).
CONVENTIONS: dict[str, str] = {
    "calogan": (
        "calogan: Gaussianised features; FPD on subsamples without replacement at 8 sizes (20-100 %), 10 repeats "
        "each, mean curve extrapolated linearly in 1/N, unconstrained; error = sampling error from 10 random "
        "half-splits (+) Monte-Carlo error of the means; KPD cubic kernel, 10 batches without replacement, "
        "median +- half the 16-84 % range"
    ),
    "jetnet": (
        "jetnet 0.2.5: features / max|real|; FPD 20 batches with replacement at 10 sizes regular in 1/N "
        "(20,000-50,000), linear fit bounded >= 0; error = sampling error from 10 random half-splits (+) "
        "Monte-Carlo error of the means (jetnet's fit error as fit_error); KPD degree-4 kernel, 10 batches of "
        "5,000 with replacement, median +- half the 16-84 % range"
    ),
}


def check_convention(name: str) -> str:
    """``name`` if it is a known convention, else ValueError naming the valid ones."""
    if name not in CONVENTIONS:
        raise ValueError(f"FPD/KPD convention must be one of {', '.join(CONVENTIONS)}, not {name!r}")
    return name


# --------------------------------------------------------------------------- Fréchet distance


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to x and y: |μx − μy|² + Tr(Σx + Σy − 2(ΣxΣy)^½)."""
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    s1, s2 = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    with (
        warnings.catch_warnings()
    ):  # a degenerate sample (e.g. a constant generator) has a singular covariance
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # regularise, as common FID code does
            eps = np.eye(len(s1)) * 1e-6
            covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _subsample_curves(
    xs: list[np.ndarray], y: np.ndarray, seed: int, num_points: int, min_fraction: float, repeats: int
) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, FPD (len(xs), sizes, repeats)): each repeat draws one subsample of y and the same rows of every x."""
    n = min(len(y), *(len(x) for x in xs))
    rng = np.random.default_rng(seed)
    sizes = np.unique(np.linspace(max(int(min_fraction * n), 50), n, num_points).astype(int))
    vals = np.empty((len(xs), len(sizes), repeats))
    for j, s in enumerate(sizes):
        for r in range(repeats):
            ia, ib = rng.choice(n, s, replace=False), rng.choice(len(y), s, replace=False)
            for k, x in enumerate(xs):
                vals[k, j, r] = frechet_distance(x[ia], y[ib])
    return sizes, vals


def extrapolate(sizes: np.ndarray, vals: np.ndarray) -> tuple[float, float]:
    """(value, Monte-Carlo error) from repeated subsample values ``vals`` (sizes, repeats) of a statistic.

    value: intercept of the least-squares line through the mean at each size, in 1/N; its Monte-Carlo error is
    the repeats' spread propagated to the intercept (the noise of drawing finitely many subsamples).
    """
    repeats = vals.shape[1]
    var = vals.var(axis=1, ddof=1) if repeats > 1 else np.zeros(len(sizes))
    design = np.stack([np.ones(len(sizes)), 1.0 / sizes], axis=1)
    weights = np.linalg.pinv(design)[0]  # the intercept as a linear combination of the means
    return float(weights @ vals.mean(axis=1)), math.sqrt(float((weights**2 * var).sum() / repeats))


def half_split_fpds(xs: list[np.ndarray], y: np.ndarray, seed: int, splits: int = 10) -> np.ndarray:
    """(len(xs), splits, 2, 2): FPD(x_i, y_j) of the halves x_1, x_2 (the same rows of every x) and y_1, y_2."""
    n = min(len(y), *(len(x) for x in xs))
    half = n // 2
    rng = np.random.default_rng(seed)
    out = np.empty((len(xs), splits, 2, 2))
    for s in range(splits):
        px, py = rng.permutation(n)[: 2 * half], rng.permutation(len(y))[: 2 * half]
        rows_x, rows_y = (px[:half], px[half:]), (py[:half], py[half:])
        for k, x in enumerate(xs):
            for i in (0, 1):
                for j in (0, 1):
                    out[k, s, i, j] = frechet_distance(x[rows_x[i]], y[rows_y[j]])
    return out


def split_half_variance(t: np.ndarray) -> float:
    """Sampling variance of a two-sample statistic over the whole samples, from its values t (splits, 2, 2) on halves.

    With T_ij the statistic of halves x_i, y_j, the differences T11 − T22 and T12 − T21 have variance 4a + 8b,
    where a/N and b/N² are the linear and quadratic parts of the statistic's variance at full size, and the
    cross term D = T11 + T22 − T12 − T21 has variance 8b: the variance is a + b = E[(T11 − T22)²]/4 − E[D²]/8,
    floored at b. A bootstrap's variance is a + 3b instead (its resamples scatter about the observed, not the
    true, distributions): √3 too large for equal distributions, where a = 0.
    """
    diff2 = np.mean((t[:, 0, 0] - t[:, 1, 1]) ** 2 + (t[:, 0, 1] - t[:, 1, 0]) ** 2) / 2.0
    quadratic = float(np.mean((t[:, 0, 0] + t[:, 1, 1] - t[:, 0, 1] - t[:, 1, 0]) ** 2)) / 8.0
    return max(float(diff2) / 4.0 - quadratic, quadratic)


def fpd_extrapolated(
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    num_points: int = 8,
    min_fraction: float = 0.2,
    repeats: int = 10,
    splits: int = 10,
) -> dict[str, float]:
    """FPD of x against y in the ``calogan`` convention: value at N → ∞, its error, and FPD at full size.

    error² = the sampling variance (:func:`split_half_variance`) + the Monte-Carlo variance of the subsampling.
    """
    sizes, vals = _subsample_curves([x], y, seed, num_points, min_fraction, repeats)
    n = min(len(x), len(y))
    value, mc = extrapolate(sizes, vals[0])
    sampling = split_half_variance(half_split_fpds([x], y, seed + 1, splits)[0])
    return {"value": value, "error": math.sqrt(sampling + mc * mc), "at_full_n": frechet_distance(x[:n], y[:n]),
            "n": int(n)}  # fmt: skip


def fpd_with_reference(
    gen: np.ndarray,
    real_a: np.ndarray,
    real_b: np.ndarray,
    seed: int,
    num_points: int = 8,
    min_fraction: float = 0.2,
    repeats: int = 10,
    splits: int = 10,
) -> dict[str, float]:
    """FPD of gen vs real_b and of real_a vs real_b (reference), and the error of their difference (``calogan``).

    gen and real_a are subsampled and split on the same rows and real_b on the same rows for both, so
    ``diff_error`` includes their correlation through the shared real_b: (value − reference) / diff_error is
    the pull. Each error² is a sampling variance (:func:`split_half_variance`) plus the Monte-Carlo variance.
    """
    sizes, vals = _subsample_curves([gen, real_a], real_b, seed, num_points, min_fraction, repeats)
    n = min(len(gen), len(real_a), len(real_b))
    (value, mc), (ref, ref_mc), (_, diff_mc) = (
        extrapolate(sizes, v) for v in (vals[0], vals[1], vals[0] - vals[1])
    )
    t = half_split_fpds([gen, real_a], real_b, seed + 1, splits)
    var, ref_var, diff_var = (split_half_variance(v) for v in (t[0], t[1], t[0] - t[1]))
    return {"value": value, "error": math.sqrt(var + mc**2), "ref": ref, "ref_error": math.sqrt(ref_var + ref_mc**2),
            "diff_error": math.sqrt(diff_var + diff_mc**2),
            "at_full_n": frechet_distance(gen[:n], real_b[:n]),
            "ref_at_full_n": frechet_distance(real_a[:n], real_b[:n]), "n": int(n)}  # fmt: skip


# --------------------------------------------------------------------------- kernel distance


def _cubic_features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum of a⊗a⊗a with a = (x/√d, 1), and the diagonal kernel values: (x·y/d + 1)³ = <a_x⊗a_x⊗a_x, a_y⊗a_y⊗a_y>."""
    a = np.concatenate([x / math.sqrt(x.shape[1]), np.ones((len(x), 1))], axis=1)
    outer = (a[:, :, None] * a[:, None, :]).reshape(len(a), -1)  # (n, (d+1)²)
    return outer.T @ a, (a * a).sum(axis=1) ** 3


def mmd_poly_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic kernel k(a, b) = (a·b / d + 1)³ (Kansal et al. 2022), in O(N·d³) via its feature map."""
    sx, dx = _cubic_features(np.asarray(x, np.float64))
    sy, dy = _cubic_features(np.asarray(y, np.float64))
    m, n = len(x), len(y)
    kxx = (float((sx * sx).sum()) - dx.sum()) / (m * (m - 1))
    kyy = (float((sy * sy).sum()) - dy.sum()) / (n * (n - 1))
    return float(kxx + kyy - 2.0 * float((sx * sy).sum()) / (m * n))


def _kernel_sum(u: np.ndarray, v: np.ndarray, degree: int, chunk: int = 2048) -> float:
    """Σ_ij (u_i·v_j / d + 1)^degree in row chunks (bounded memory)."""
    d = u.shape[1]
    return float(sum(((u[s : s + chunk] @ v.T / d + 1.0) ** degree).sum() for s in range(0, len(u), chunk)))


def mmd_poly_gram(x: np.ndarray, y: np.ndarray, degree: int) -> float:
    """Unbiased MMD² with the kernel (a·b / d + 1)^degree from Gram-matrix sums (any degree; O(N² d))."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d, m, n = x.shape[1], len(x), len(y)
    diag_x = ((x * x).sum(axis=1) / d + 1.0) ** degree
    diag_y = ((y * y).sum(axis=1) / d + 1.0) ** degree
    kxx = (_kernel_sum(x, x, degree) - diag_x.sum()) / (m * (m - 1))
    kyy = (_kernel_sum(y, y, degree) - diag_y.sum()) / (n * (n - 1))
    return float(kxx + kyy - 2.0 * _kernel_sum(x, y, degree) / (m * n))


def _median_half_iqr(vals: np.ndarray) -> tuple[float, float]:
    """Median and half the 16.275–83.725 % range (the jetnet/KPD summary)."""
    return float(np.median(vals)), float(iqr(vals, rng=(16.275, 83.725)) / 2.0)


def kpd_batches(
    x: np.ndarray, y: np.ndarray, seed: int, batch_size: int = 5000, num_batches: int = 10
) -> dict[str, float]:
    """KPD (``calogan``): cubic kernel over batches without replacement; median and half the 16–84 % range."""
    rng = np.random.default_rng(seed)
    bs = min(batch_size, len(x) // 2, len(y) // 2)  # at most half, so batches differ
    vals = np.array(
        [mmd_poly_unbiased(x[rng.choice(len(x), bs, replace=False)], y[rng.choice(len(y), bs, replace=False)])
         for _ in range(num_batches)]
    )  # fmt: skip
    value, error = _median_half_iqr(vals)
    return {"value": value, "error": error, "batch_size": int(bs)}


# --------------------------------------------------------------------------- the jetnet 0.2.5 convention


def jetnet_normalise(real: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both samples divided, per feature, by the largest |value| of the real one (1 where that is 0)."""
    maxes = np.max(np.abs(real), axis=0)
    maxes[maxes == 0] = 1
    return real / maxes, gen / maxes


def fpd_jetnet(
    real: np.ndarray,
    gen: np.ndarray,
    min_samples: int = 20_000,
    max_samples: int = 50_000,
    num_batches: int = 20,
    num_points: int = 10,
    seed: int = 42,
    splits: int = 10,
) -> dict[str, float]:
    """FPD as jetnet 0.2.5 ``evaluation.fpd`` computes it (same random draws for the same seed), with an honest error.

    ``value`` and ``fit_error`` are jetnet's (the bounded fit's covariance, which misses the fluctuation that
    all batches of one sample share); ``error`` is the sampling error of the value (:func:`split_half_variance`
    on the normalised features) combined with the Monte-Carlo error of the batch means.
    """
    x, y = jetnet_normalise(np.asarray(real, np.float64), np.asarray(gen, np.float64))
    sizes = (1 / np.linspace(1.0 / min_samples, 1.0 / max_samples, num_points)).astype("int32")
    rng = np.random.default_rng(seed)
    vals = np.empty((len(sizes), num_batches))
    for j, size in enumerate(sizes):
        for r in range(num_batches):  # the draw order of jetnet: real rows, then generated rows
            ix, iy = rng.choice(len(x), size=size), rng.choice(len(y), size=size)
            vals[j, r] = frechet_distance(x[ix], y[iy])
    means = vals.mean(axis=1)
    params, covs = curve_fit(lambda t, a, b: a + b * t, 1 / sizes, means, bounds=([0, 0], [np.inf, np.inf]))
    _, mc = extrapolate(sizes.astype(np.float64), vals)
    sampling = split_half_variance(half_split_fpds([x], y, seed + 1, splits)[0])
    return {
        "value": float(params[0]),
        "error": math.sqrt(sampling + mc * mc),
        "fit_error": float(np.sqrt(np.diag(covs)[0])),
        "n": int(min(len(x), len(y))),
    }


def kpd_jetnet(
    real: np.ndarray, gen: np.ndarray, num_batches: int = 10, batch_size: int = 5_000, seed: int = 42
) -> dict[str, float]:
    """KPD as jetnet 0.2.5 ``evaluation.kpd`` computes it (degree 4, with replacement, seed + 1000·i per batch)."""
    x, y = jetnet_normalise(np.asarray(real, np.float64), np.asarray(gen, np.float64))
    vals = []
    for i in range(num_batches):
        rng = np.random.default_rng(seed + i * 1000)
        ix, iy = rng.choice(len(x), size=batch_size), rng.choice(len(y), size=batch_size)
        vals.append(mmd_poly_gram(x[ix], y[iy], degree=4))
    value, error = _median_half_iqr(np.array(vals))
    return {"value": value, "error": error, "batch_size": int(batch_size)}
