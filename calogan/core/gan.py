"""Pieces of WGAN-GP training shared by the ECAL and RICH trainers: gradient penalty, EMA, losses.

Gradient penalty (Gulrajani et al. 2017): lambda * (||grad_x D(x_hat, c)||_2 - 1)^2 with the norm taken
per sample over *all* of its input dimensions (the 2019 notebook took it over dim=1 of a (B,1,30,30)
tensor, which is not a per-sample norm), and the conditions fed to the critic inside the penalty too.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    conditions: torch.Tensor,
    weight: float = 10.0,
    sample_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (penalty, per-sample gradient norms) on random interpolates of real and fake.

    sample_weight (optional, shape (B,)) weights each sample's penalty term (e.g. sWeights' magnitude).
    """
    batch = real.shape[0]
    alpha = torch.rand((batch,) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
    interp = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(interp, conditions)
    (grad,) = torch.autograd.grad(scores.sum(), interp, create_graph=True)
    norms = grad.reshape(batch, -1).norm(2, dim=1)
    per_sample = (norms - 1.0) ** 2
    if sample_weight is not None:
        penalty = (per_sample * sample_weight).sum() / sample_weight.sum().clamp_min(1e-12)
    else:
        penalty = per_sample.mean()
    return weight * penalty, norms.detach()


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of values, or sum(w * v) / sum(w) when weights are given (weights may be negative)."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum()


class EMA:
    """Exponential moving average of a model's parameters (and a copy of its buffers).

    The averaged copy (``.model``) is the one used for evaluation, prediction and export.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def _sort_within_bins(values: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """values (B, k) sorted by (bin, value) per column; equal bin counts make rows comparable across samples."""
    order = torch.argsort(values, dim=0)
    regroup = torch.argsort(torch.gather(bins, 0, order), dim=0, stable=True)
    return torch.gather(values, 0, torch.gather(order, 0, regroup))


def binned_wasserstein(
    gen: torch.Tensor,
    real: torch.Tensor,
    bins: torch.Tensor | None = None,
    projections: int = 0,
    seed: int = 0,
    power: int = 1,
) -> torch.Tensor:
    """Mean 1-D Wasserstein-1 distance between gen and real (B, k) at the same conditions, per bin.

    gen and real must come from the same condition rows, so each bin holds as many of both; k > 1 columns
    are compared column by column, or (projections > 0) along random unit directions (sliced Wasserstein).
    power=2 gives the squared Wasserstein-2 distance instead, which weighs tails (and so the spread) more.
    """
    if power not in (1, 2):
        raise ValueError(f"binned_wasserstein: power must be 1 or 2, got {power}")
    gen = gen.reshape(gen.shape[0], -1)
    real = real.reshape(real.shape[0], -1).to(gen.dtype)
    if projections > 0 and gen.shape[1] > 1:
        g = torch.Generator(device="cpu").manual_seed(seed)
        dirs = torch.randn(gen.shape[1], projections, generator=g).to(gen.device, gen.dtype)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        gen, real = gen @ dirs, real @ dirs
    bins = torch.zeros(gen.shape[0], dtype=torch.long, device=gen.device) if bins is None else bins
    bins = bins.view(-1, 1).expand_as(gen)
    gap = _sort_within_bins(gen, bins) - _sort_within_bins(real, bins)
    return gap.abs().mean() if power == 1 else gap.pow(2).mean()


def energy_score(gen_a: torch.Tensor, gen_b: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean energy score of two generated draws per real event, all (B, k) rows at the same conditions.

    ES = (||a - r|| + ||b - r||) / 2 - ||a - b|| / 2 is a strictly proper scoring rule: its expectation is
    smallest exactly when the generated conditional distribution equals the real one, event by event, so it
    fits the spread at each condition (a resolution) rather than the spread pooled over a bin of conditions.
    """
    gen_a, gen_b = gen_a.reshape(gen_a.shape[0], -1), gen_b.reshape(gen_b.shape[0], -1)
    real = real.reshape(real.shape[0], -1).to(gen_a.dtype)
    norm = lambda x: torch.sqrt(x.pow(2).sum(dim=1) + 1e-12)  # noqa: E731 - smooth at 0
    return (0.5 * (norm(gen_a - real) + norm(gen_b - real)) - 0.5 * norm(gen_a - gen_b)).mean()
