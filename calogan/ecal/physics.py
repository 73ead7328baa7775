"""The 24 physical statistics of the competition metric (docs/scoring.md), shower observables and |p| binning.

All statistics are computed in float64, vectorised over the batch (torch, chunked), with the line
arithmetic written in exactly the form of the 2019 reference (``calogan_metrics``) so that edge
conventions — px or py exactly 0, the sign of a zero, cells exactly on a line — come out the same.
"""

from __future__ import annotations

import numpy as np
import torch

from calogan.ecal.data import CELL_CENTRES, IMAGE_SIZE, N_CELLS, SHOWER_DEPTH_CM

#: The 20 sparsity levels: fraction of cells with energy >= alpha * image sum.
SPARSITY_ALPHAS = np.logspace(-5, -1, 20)
#: Denominator offset of the weighted mean/variance in the width statistics (reference value).
WIDTH_EPS = 1e-5
#: Names of the 24 statistics, in the column order of :func:`physical_statistics`.
STAT_NAMES: tuple[str, ...] = (
    "longitudinal_asymmetry",
    "transverse_asymmetry",
    "longitudinal_width",
    "transverse_width",
) + tuple(f"sparsity_{a:.3g}" for a in SPARSITY_ALPHAS)

_CHUNK = 4096


def _as_f64(array, n_cols: int | None = None) -> torch.Tensor:
    """Converts an array-like to a CPU float64 tensor (no copy of the caller's data is modified)."""
    t = torch.as_tensor(np.asarray(array), dtype=torch.float64)
    if n_cols is not None:
        t = t.reshape(-1, n_cols)
    return t


def expected_centre(point: np.ndarray, momentum: np.ndarray) -> np.ndarray:
    """Expected shower centre c = (x, y) + 25 * (px/pz, py/pz) in cm, (N, 2) float64."""
    p = np.asarray(point, dtype=np.float64)
    m = np.asarray(momentum, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack(
            [p[:, 0] + SHOWER_DEPTH_CM * m[:, 0] / m[:, 2], p[:, 1] + SHOWER_DEPTH_CM * m[:, 1] / m[:, 2]],
            axis=1,
        )


def _first_row_at_or_above(line: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Per column, the first row index i with y_i >= line (30 if none); a NaN line gives 0 (all rows)."""
    idx = torch.bucketize(line, ys, right=False)  # number of rows with y < line
    return torch.where(torch.isnan(line), 0, idx)


def _rows_at_or_below(line: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Per column, the number of rows with y <= line; a NaN line gives 30 (all rows)."""
    idx = torch.bucketize(line, ys, right=True)
    return torch.where(torch.isnan(line), IMAGE_SIZE, idx)


def _range_sum(csum: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Σ_{lo <= i < hi} img[i, j] per column from the row prefix sums csum (n, 31, 30); lo, hi (n, 30)."""
    return csum.gather(1, hi.unsqueeze(1))[:, 0] - csum.gather(1, lo.unsqueeze(1))[:, 0]


def _chunk_statistics(img: torch.Tensor, point: torch.Tensor, mom: torch.Tensor) -> torch.Tensor:
    """The 24 statistics of one chunk: img (n,30,30), point (n,3), mom (n,3), all float64.

    In every column the side indicator of a line is a run of rows (rows are sorted in y), so side sums and
    boundary sums come from row prefix sums at the line's crossing row: O(30) work per line and image.
    A cell is on side A when not((y - line) * sign < 0), which for sign = +1 is y >= line (or NaN line) and
    for sign = -1 is y <= line (or NaN line): IEEE subtraction keeps the sign of y - line exactly.
    """
    n = img.shape[0]
    xs = torch.as_tensor(CELL_CENTRES, dtype=torch.float64)
    px, py, pz = mom[:, 0:1], mom[:, 1:2], mom[:, 2:3]
    x0 = point[:, 0:1] + SHOWER_DEPTH_CM * px / pz
    y0 = point[:, 1:2] + SHOWER_DEPTH_CM * py / pz
    dx = xs.view(1, -1) - x0  # (n, 30): x - c_x per column
    py_px, px_py = py / px, px / py
    csum = torch.zeros(n, IMAGE_SIZE + 1, IMAGE_SIZE, dtype=torch.float64)
    torch.cumsum(img, dim=1, out=csum[:, 1:])
    total = csum[:, -1].sum(dim=1)
    out = torch.empty(n, 24, dtype=torch.float64)
    zero = torch.zeros(n, IMAGE_SIZE, dtype=torch.long)
    full = torch.full((n, IMAGE_SIZE), IMAGE_SIZE, dtype=torch.long)

    # longitudinal asymmetry: slope -px/py; side A above the line if py > 0, below it otherwise
    line = -dx / py_px + y0
    above = py[:, 0] > 0
    lo = torch.where(above[:, None], _first_row_at_or_above(line, xs), zero)
    hi = torch.where(above[:, None], full, _rows_at_or_below(line, xs))
    e_a = _range_sum(csum, lo, hi).sum(dim=1)
    out[:, 0] = (e_a - (total - e_a)) / total
    # transverse asymmetry: slope py/px, side A above the line
    lo = _first_row_at_or_above(dx / px_py + y0, xs)
    e_a = _range_sum(csum, lo, full).sum(dim=1)
    out[:, 1] = (e_a - (total - e_a)) / total

    # widths: boundary cells of the half-plane indicator z (1 on rows >= i0 in each column), weighted std of
    # x * sqrt(1 + (py/px)^2). Boundary cells of column j: rows where z differs from column j + 1, i.e.
    # [min(i0_j, i0_j+1), max(...)), plus the row i0_j - 1 just below the vertical transition.
    rescale = torch.sqrt(1 + py_px**2)  # (n, 1)
    u = rescale * xs.view(1, -1)  # (n, 30) rescaled x per column
    for col, line in ((2, dx / py_px + y0), (3, -dx / px_py + y0)):
        i0 = _first_row_at_or_above(line, xs)
        lo, hi = i0.clone(), i0.clone()
        lo[:, :-1] = torch.minimum(i0[:, :-1], i0[:, 1:])
        hi[:, :-1] = torch.maximum(i0[:, :-1], i0[:, 1:])
        w_col = _range_sum(csum, lo, hi)
        v = i0 - 1
        extra = (v >= 0) & (v < IMAGE_SIZE - 1) & ~((v >= lo) & (v < hi))
        cell = img.gather(1, v.clamp(0, IMAGE_SIZE - 1).unsqueeze(1))[:, 0]
        w_col = w_col + torch.where(extra, cell, 0.0)
        s0 = w_col.sum(dim=1, keepdim=True)
        m1 = (w_col * u).sum(dim=1, keepdim=True) / (s0 + WIDTH_EPS)
        m2 = (w_col * u * u).sum(dim=1, keepdim=True) / (s0 + WIDTH_EPS)
        out[:, col] = torch.sqrt(m2 - m1 * m1)[:, 0]

    # sparsity: per cell, the number of levels k with e >= alpha_k * total. A candidate from e / total against
    # the alphas, then one exact correction step each way against the products alpha_k * total.
    flat = img.reshape(n, -1)
    nk = len(SPARSITY_ALPHAS)
    alphas = torch.as_tensor(SPARSITY_ALPHAS, dtype=torch.float64)
    # thresholds padded with -inf below level 0 and +inf above level nk-1
    thr = torch.empty(n, nk + 2, dtype=torch.float64)
    thr[:, 0], thr[:, -1] = -torch.inf, torch.inf
    thr[:, 1:-1] = total.unsqueeze(1) * alphas.view(1, -1)
    with torch.no_grad():
        ratio = flat / total.unsqueeze(1)
    level = torch.bucketize(torch.nan_to_num(ratio, nan=torch.inf), alphas, right=True)  # (n, 900) in 0..nk
    level -= (flat < thr.gather(1, level)).long()  # threshold of the last counted level not reached
    level += (flat >= thr.gather(1, level + 1)).long()  # next threshold reached after all
    offs = (torch.arange(n) * (nk + 1)).unsqueeze(1)
    hist = torch.bincount((level + offs).reshape(-1), minlength=n * (nk + 1)).reshape(n, nk + 1)
    above = hist.flip(1).cumsum(1).flip(1)[:, 1:]  # cells with level > k satisfy e >= threshold_k
    out[:, 4:] = above.to(torch.float64) / N_CELLS
    negative = total < 0  # thresholds not increasing: compare directly (never happens for valid images)
    if bool(negative.any()):
        cmp = flat[negative].unsqueeze(2) >= thr[negative, 1:-1].unsqueeze(1)
        out[negative, 4:] = cmp.sum(dim=1).to(torch.float64) / N_CELLS
    return out


def physical_statistics(
    images: np.ndarray, point: np.ndarray, momentum: np.ndarray, chunk_size: int = _CHUNK
) -> np.ndarray:
    """The 24 physical statistics of the competition metric per image, (N, 24) float64, columns as :data:`STAT_NAMES`.

    Definitions (c = (x, y) + 25 (px/pz, py/pz), lines through c, cell centres as in :data:`CELL_CENTRES`):
    longitudinal asymmetry (slope -px/py, side A: (y - line)·sign(py) >= 0 with sign(0) = -1),
    transverse asymmetry (slope py/px, side A: y - line >= 0), value (E_A - E_B)/E;
    longitudinal / transverse width (slopes px/py and -py/px): std of x·sqrt(1 + (py/px)^2) over the
    boundary cells of the half-plane, weighted by energy, with Σw + 1e-5 in the denominators;
    sparsity: fraction of the 900 cells with energy >= alpha·E for alpha = logspace(-5, -1, 20).

    Degenerate inputs always give finite numbers (any NaN or ±inf result becomes 0):
    * a comparison with a NaN line value (0/0, or ±inf·0 on the line) counts the cell as side A,
      as the reference's ``np.where(... < 0)`` did;
    * px = 0: the transverse line is vertical, its side decided by the sign of the zero in px/py
      (+0 or -0, as in the reference); the rescale factor is infinite, so both widths are 0;
    * py = 0: the longitudinal line is vertical and sign(py) = -1; px = py = 0: both lines are NaN,
      every cell is side A, so both asymmetries are +1 and both widths 0;
    * an all-zero image: asymmetries 0, widths 0, every sparsity level 1 (0 >= alpha·0).
    """
    imgs = np.asarray(images)
    n = imgs.shape[0]
    imgs = imgs.reshape(n, IMAGE_SIZE, IMAGE_SIZE)
    pts = _as_f64(point, 3)
    mom = _as_f64(momentum, 3)
    if pts.shape[0] != n or mom.shape[0] != n:
        raise ValueError(
            f"physical_statistics: {n} images but {pts.shape[0]} points and {mom.shape[0]} momenta"
        )
    out = np.empty((n, 24), dtype=np.float64)
    for start in range(0, n, chunk_size):
        sl = slice(start, start + chunk_size)
        img = torch.as_tensor(imgs[sl], dtype=torch.float64)
        stats = _chunk_statistics(img, pts[sl], mom[sl])
        out[sl] = torch.nan_to_num(stats, nan=0.0, posinf=0.0, neginf=0.0).numpy()
    return out


def _reference_statistics_one(image: np.ndarray, point: np.ndarray, momentum: np.ndarray) -> np.ndarray:
    """Straightforward per-event implementation of the 24 statistics with loops over the 30x30 grid (tests only)."""
    img = np.asarray(image, dtype=np.float64).reshape(IMAGE_SIZE, IMAGE_SIZE)
    x, y = float(point[0]), float(point[1])
    px, py, pz = (np.float64(v) for v in momentum[:3])
    res = np.zeros(24)
    with np.errstate(all="ignore"):
        cx = x + SHOWER_DEPTH_CM * px / pz
        cy = y + SHOWER_DEPTH_CM * py / pz
        lines = {
            "long_asym": lambda xv: -(xv - cx) / (py / px) + cy,
            "trans_asym": lambda xv: (xv - cx) / (px / py) + cy,
            "long_width": lambda xv: (xv - cx) / (py / px) + cy,
            "trans_width": lambda xv: -(xv - cx) / (px / py) + cy,
        }
        sign = 1.0 if py > 0 else -1.0
        total = 0.0
        for i in range(IMAGE_SIZE):
            for j in range(IMAGE_SIZE):
                total += img[i, j]

        def side(name: str, s: float) -> np.ndarray:
            z = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
            for i in range(IMAGE_SIZE):
                for j in range(IMAGE_SIZE):
                    z[i, j] = not ((CELL_CENTRES[i] - lines[name](CELL_CENTRES[j])) * s < 0)
            return z

        for col, name, s in ((0, "long_asym", sign), (1, "trans_asym", 1.0)):
            z = side(name, s)
            e_a = sum(img[i, j] for i in range(IMAGE_SIZE) for j in range(IMAGE_SIZE) if z[i, j])
            e_b = sum(img[i, j] for i in range(IMAGE_SIZE) for j in range(IMAGE_SIZE) if not z[i, j])
            res[col] = (e_a - e_b) / total
        rescale = np.sqrt(1 + (py / px) ** 2)
        for col, name in ((2, "long_width"), (3, "trans_width")):
            z = side(name, 1.0)
            s0 = s1 = s2 = 0.0
            for i in range(IMAGE_SIZE):
                for j in range(IMAGE_SIZE):
                    boundary = (j + 1 < IMAGE_SIZE and z[i, j] != z[i, j + 1]) or (
                        i + 1 < IMAGE_SIZE and z[i, j] != z[i + 1, j]
                    )
                    if boundary:
                        u = CELL_CENTRES[j] * rescale
                        s0 += img[i, j]
                        s1 += img[i, j] * u
                        s2 += img[i, j] * u * u
            m1, m2 = s1 / (s0 + WIDTH_EPS), s2 / (s0 + WIDTH_EPS)
            res[col] = np.sqrt(m2 - m1 * m1)
        for k, alpha in enumerate(SPARSITY_ALPHAS):
            count = 0
            for i in range(IMAGE_SIZE):
                for j in range(IMAGE_SIZE):
                    count += img[i, j] >= alpha * total
            res[4 + k] = count / N_CELLS
    res[~np.isfinite(res)] = 0.0
    return res


def standardise_statistics(stats: np.ndarray, reference: np.ndarray, method: str = "rank") -> np.ndarray:
    """Rescales each statistic on the true sample so no single one dominates k-means (a variant of the metric).

    ``rank``: mid-rank empirical CDF of ``reference`` per column, in [0, 1];
    ``z``: (stats - mean) / std of ``reference`` per column (std 0 → 1).
    """
    stats = np.asarray(stats, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if method == "z":
        mean, std = ref.mean(axis=0), ref.std(axis=0)
        return (stats - mean) / np.where(std > 0, std, 1.0)
    if method != "rank":
        raise ValueError(f"standardise_statistics: unknown method {method!r} (use 'rank' or 'z')")
    out = np.empty_like(stats)
    n = ref.shape[0]
    for col in range(stats.shape[1]):  # 24 columns, each vectorised over events
        srt = np.sort(ref[:, col])
        lo = np.searchsorted(srt, stats[:, col], side="left")
        hi = np.searchsorted(srt, stats[:, col], side="right")
        out[:, col] = (lo + hi) / (2.0 * n)
    return out


# ---------------------------------------------------------------- observables for plots


def energy_response(images: np.ndarray, momentum: np.ndarray) -> np.ndarray:
    """Image sum divided by |p| (units per GeV), (N,) float64; the calorimeter's energy scale."""
    total = np.asarray(images, dtype=np.float64).reshape(len(images), -1).sum(axis=1)
    p_abs = np.linalg.norm(np.asarray(momentum, dtype=np.float64), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return total / p_abs


def barycentre(images: np.ndarray) -> np.ndarray:
    """Energy-weighted centre (x, y) in cm, (N, 2) float64; NaN for an all-zero image."""
    img = np.asarray(images, dtype=np.float64).reshape(len(images), IMAGE_SIZE, IMAGE_SIZE)
    total = img.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        bx = img.sum(axis=1) @ CELL_CENTRES / total
        by = img.sum(axis=2) @ CELL_CENTRES / total
    return np.stack([bx, by], axis=1)


def barycentre_residual(images: np.ndarray, point: np.ndarray, momentum: np.ndarray) -> np.ndarray:
    """Barycentre minus the expected centre c, (N, 2) cm: shows position/direction fidelity."""
    return barycentre(images) - expected_centre(point, momentum)


def _unit_direction(momentum: np.ndarray) -> np.ndarray:
    """Unit vector of the transverse momentum (px, py); (1, 0) when px = py = 0."""
    m = np.asarray(momentum, dtype=np.float64)[:, :2]
    norm = np.linalg.norm(m, axis=1, keepdims=True)
    return np.where(norm > 0, m / np.where(norm > 0, norm, 1.0), np.array([[1.0, 0.0]]))


def shower_profiles(
    images: np.ndarray, point: np.ndarray, momentum: np.ndarray, edges: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per-event normalised energy profiles around c: along and across the transverse momentum, and radial.

    Returns ``{"edges", "longitudinal", "transverse", "radial_edges", "radial"}``; profiles are (N, bins),
    each row summing to the fraction of the image energy inside the binning range.
    """
    img = np.asarray(images, dtype=np.float64).reshape(len(images), N_CELLS)
    n = img.shape[0]
    edges = np.linspace(-15.0, 15.0, 31) if edges is None else np.asarray(edges, dtype=np.float64)
    total = img.sum(axis=1, keepdims=True)
    weights = img / np.where(total > 0, total, 1.0)
    c = expected_centre(point, momentum)
    xx, yy = np.meshgrid(CELL_CENTRES, CELL_CENTRES)
    dx = xx.reshape(1, -1) - c[:, 0:1]
    dy = yy.reshape(1, -1) - c[:, 1:2]
    u = _unit_direction(momentum)
    along = dx * u[:, 0:1] + dy * u[:, 1:2]
    across = -dx * u[:, 1:2] + dy * u[:, 0:1]
    radial_edges = np.linspace(0.0, 15.0, 31)

    def hist(coord: np.ndarray, e: np.ndarray) -> np.ndarray:
        nb = len(e) - 1
        idx = np.searchsorted(e, coord, side="right") - 1
        ok = (idx >= 0) & (idx < nb) & np.isfinite(coord)
        flat = (np.arange(n)[:, None] * nb + idx)[ok]
        return np.bincount(flat, weights=weights[ok], minlength=n * nb).reshape(n, nb)

    return {
        "edges": edges,
        "longitudinal": hist(along, edges),
        "transverse": hist(across, edges),
        "radial_edges": radial_edges,
        "radial": hist(np.hypot(dx, dy), radial_edges),
    }


def cluster_3x3(images: np.ndarray) -> np.ndarray:
    """Energy (N,) in the 3×3 cells around each image's hottest cell (clipped at the border)."""
    n = len(images)
    padded = np.pad(
        np.asarray(images, np.float64).reshape(n, IMAGE_SIZE, IMAGE_SIZE), ((0, 0), (1, 1), (1, 1))
    )
    side = IMAGE_SIZE + 2  # the padded grid
    arg = padded.reshape(n, -1).argmax(1)
    r, c = np.divmod(arg, side)
    offs = np.arange(-1, 2)
    rows = (r[:, None, None] + offs[None, :, None]).clip(0, side - 1)
    cols = (c[:, None, None] + offs[None, None, :]).clip(0, side - 1)
    return padded[np.arange(n)[:, None, None], rows, cols].sum((1, 2))


# ---------------------------------------------------------------- momentum bins


def momentum_quantile_edges(p_abs: np.ndarray, n_bins: int) -> np.ndarray:
    """Interior log|p| quantile edges (n_bins - 1,) splitting ``p_abs`` into equally populated bins."""
    return np.quantile(np.log(p_abs), np.linspace(0, 1, n_bins + 1)[1:-1])


def momentum_quantile_bins(p_abs: np.ndarray, n_bins: int) -> tuple[np.ndarray, list[float]]:
    """(bin index 0..n_bins-1 of every event, the n_bins + 1 bin edges in GeV) of equally populated |p| bins."""
    edges = momentum_quantile_edges(p_abs, n_bins)
    which = np.searchsorted(edges, np.log(p_abs))
    return which, [float(p_abs.min())] + np.exp(edges).tolist() + [float(p_abs.max())]


def momentum_bins(conditions: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin index (B,) of log|p| of raw conditions in the interior edges of :func:`momentum_quantile_edges`."""
    logp = torch.log(torch.linalg.vector_norm(conditions[:, 2:5], dim=1))
    return torch.bucketize(logp, edges.to(logp.device, logp.dtype))
