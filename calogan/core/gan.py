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
