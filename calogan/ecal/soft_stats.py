"""Differentiable shower statistics: what a generator loss can compare between generated and real showers.

Smooth versions of the competition statistics and of the shower core, written in torch so that gradients reach
the generator: energy response, widths and asymmetries in the shower frame (along and across the transverse
momentum), the 20 sparsity levels (a sigmoid instead of a hard threshold) and the hottest-cell and 3x3 energy
fractions. :func:`shower_summary` stacks them into one (B, 26) vector per shower. :func:`rank_profile` is the
exact, unsmoothed view of the same cell spectrum: the log energy fraction of the k-th hottest cell at fixed ranks
(the sparsity level at a threshold is the rank at which this profile crosses it). :func:`radial_profile` is the
transverse view: the log energy fraction in rings around the shower's energy centroid.
"""

from __future__ import annotations

import torch

from calogan.ecal.data import CELL_CENTRES, IMAGE_SIZE, SHOWER_DEPTH_CM
from calogan.ecal.physics import SPARSITY_ALPHAS, STAT_NAMES

#: Names of the columns of :func:`shower_summary`.
SUMMARY_NAMES: tuple[str, ...] = (
    ("longitudinal_asymmetry", "transverse_asymmetry", "log_width_along", "log_width_across")
    + STAT_NAMES[4:24]
    + ("hottest_cell_fraction", "core_3x3_fraction")
)


#: 0-based cell ranks of :func:`rank_profile`, about log-spaced from the hottest cell to the 850th.
PROFILE_RANKS: tuple[int, ...] = (
    0, 1, 2, 3, 5, 8, 12, 17, 24, 32, 42, 55, 70, 90, 120, 160, 220, 300, 420, 600, 850,
)  # fmt: skip


#: Ring edges in cm of :func:`radial_profile` and :func:`ring_index` (cells are 1 cm wide); the last
#: ring also holds the cells beyond its outer edge (a window corner can lie 40 cm from an off-centre shower).
RING_EDGES_CM: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.5, 6.0, 9.0, 13.0, 30.0)


def _grid(device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.as_tensor(CELL_CENTRES, device=device, dtype=dtype)
    return c.view(1, 1, -1), c.view(1, -1, 1)  # x per column, y per row


def shower_frame(conditions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell coordinates (B,30,30) cm along and across the transverse momentum, relative to the expected centre.

    conditions are raw (x, y, px, py, pz, is_photon); the direction is (1, 0) when px = py = 0.
    """
    x, y, px, py, pz = (conditions[:, i].view(-1, 1, 1) for i in range(5))
    xs, ys = _grid(conditions.device, conditions.dtype)
    dx = xs - (x + SHOWER_DEPTH_CM * px / pz)
    dy = ys - (y + SHOWER_DEPTH_CM * py / pz)
    pt = torch.sqrt(px * px + py * py)
    safe = pt > 0
    ux = torch.where(safe, px / torch.where(safe, pt, torch.ones_like(pt)), torch.ones_like(pt))
    uy = torch.where(safe, py / torch.where(safe, pt, torch.ones_like(pt)), torch.zeros_like(pt))
    return dx * ux + dy * uy, -dx * uy + dy * ux


def energy_response_t(images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
    """Image sum / |p| (B,), the differentiable energy response."""
    p = torch.linalg.vector_norm(conditions[:, 2:5], dim=1)
    return images.reshape(images.shape[0], -1).sum(1) / p


def soft_widths(images: torch.Tensor, conditions: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Energy-weighted standard deviations (B, 2) cm along and across the transverse momentum."""
    along, across = shower_frame(conditions)
    img = images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    w = img / (img.sum((1, 2), keepdim=True) + eps)
    out = []
    for coord in (along, across):
        m1 = (w * coord).sum((1, 2))
        m2 = (w * coord * coord).sum((1, 2))
        out.append(torch.sqrt((m2 - m1 * m1).clamp_min(0.0) + eps))
    return torch.stack(out, dim=1)


def soft_asymmetries(
    images: torch.Tensor, conditions: torch.Tensor, temperature: float = 0.25
) -> torch.Tensor:
    """Sigmoid-smoothed (longitudinal, transverse) asymmetries (B, 2) with the competition statistics' side conventions.

    Longitudinal side A is along >= 0; transverse side A is across·sign(px) >= 0 (sign(0) = +1 here,
    unlike the reference's signed-zero rule); temperature (cm) -> 0 recovers the hard split.
    """
    along, across = shower_frame(conditions)
    sign_px = torch.where(conditions[:, 2] >= 0, 1.0, -1.0).to(images.dtype).view(-1, 1, 1)
    img = images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    total = img.sum((1, 2)) + 1e-8
    out = []
    for coord in (along, across * sign_px):
        side = torch.sigmoid(coord / temperature)
        out.append((img * (2 * side - 1)).sum((1, 2)) / total)
    return torch.stack(out, dim=1)


def soft_sparsity(images: torch.Tensor, temperature: float = 0.25) -> torch.Tensor:
    """(B, 20) smooth sparsity levels: mean over cells of sigmoid((log e/E - log alpha_k) / temperature).

    The competition's level k counts the cells holding at least alpha_k of the shower's energy; the sigmoid
    (temperature in units of log energy fraction) makes the count differentiable.
    """
    flat = images.reshape(images.shape[0], -1)
    log_frac = torch.log(flat / (flat.sum(1, keepdim=True) + 1e-8) + 1e-12)
    log_alpha = torch.log(torch.as_tensor(SPARSITY_ALPHAS, dtype=flat.dtype, device=flat.device))
    return torch.sigmoid((log_frac.unsqueeze(2) - log_alpha) / temperature).mean(1)


def core_fractions(images: torch.Tensor) -> torch.Tensor:
    """(B, 2) energy fraction in the hottest cell and in the 3x3 cells around it (zero-padded at the border)."""
    img = images.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    total = img.sum((1, 2, 3)) + 1e-8
    hottest, where = img.reshape(img.shape[0], -1).max(1)
    box = torch.nn.functional.avg_pool2d(img, 3, stride=1, padding=1, count_include_pad=True) * 9.0
    around = box.reshape(img.shape[0], -1).gather(1, where.unsqueeze(1))[:, 0]
    return torch.stack([hottest / total, around / total], dim=1)


def rank_profile(images: torch.Tensor, ranks: tuple[int, ...] = PROFILE_RANKS) -> torch.Tensor:
    """(B, len(ranks)) log energy fraction of the k-th hottest cell, for k in ``ranks`` (0 = the hottest).

    Sorting is differentiable in the values (gradients flow to the cells that hold each rank), and unlike the
    sigmoid sparsity it resolves steep edges of the cell spectrum, such as the drop from a dense core to a
    faint halo.
    """
    flat = images.reshape(images.shape[0], -1)
    frac = flat / (flat.sum(1, keepdim=True) + 1e-8)
    ordered = torch.sort(frac, dim=1, descending=True).values[:, list(ranks)]
    return torch.log(ordered + 1e-9)


def ring_index(r: torch.Tensor) -> torch.Tensor:
    """Index of the ring of :data:`RING_EDGES_CM` that holds each distance ``r`` (cm), same shape."""
    inner = torch.as_tensor(RING_EDGES_CM[1:-1], dtype=r.dtype, device=r.device)
    return torch.bucketize(r.contiguous(), inner, right=True)


def distance_from_expected_centre(conditions: torch.Tensor) -> torch.Tensor:
    """(B, 30, 30) distance in cm of each cell from the expected shower centre of its event."""
    along, across = shower_frame(conditions)
    return torch.sqrt(along * along + across * across)


def radial_profile(images: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """(B, len(RING_EDGES_CM) - 1) log energy fraction in each ring around the shower's own energy centroid.

    The widths summarise the transverse spread in one number each, dominated by the core; the rings see the
    tail separately (a shower whose energy stops at 4 cm can have a fine width and an empty outer ring). The
    rings follow the centroid, not the expected centre, so that a shower cannot fake a tail by sitting off
    centre: where the shower sits is the asymmetries' business. ``floor`` keeps the log finite for an empty ring.
    """
    img = images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    total = img.sum((1, 2)) + 1e-8
    xs, ys = _grid(img.device, img.dtype)
    with torch.no_grad():  # the ring masks are piecewise constant: no gradient flows through the centre
        cx = (img * xs).sum((1, 2)) / total
        cy = (img * ys).sum((1, 2)) / total
        which = ring_index(torch.sqrt((xs - cx.view(-1, 1, 1)) ** 2 + (ys - cy.view(-1, 1, 1)) ** 2))
    energy = img.new_zeros(img.shape[0], len(RING_EDGES_CM) - 1)
    energy = energy.scatter_add(1, which.reshape(img.shape[0], -1), img.reshape(img.shape[0], -1))
    return torch.log(energy / total.unsqueeze(1) + floor)


def shower_summary(images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
    """(B, 26) differentiable summary (:data:`SUMMARY_NAMES`): asymmetries, log widths, sparsity, core."""
    widths = torch.log(soft_widths(images, conditions) + 1e-3)
    parts = [soft_asymmetries(images, conditions), widths, soft_sparsity(images), core_fractions(images)]
    return torch.cat(parts, dim=1)
