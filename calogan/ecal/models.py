"""Conditional generators and critic for the ECAL WGAN-GP (docs/training.md).

Every generator maps (noise (B, noise_dim), raw conditions (B, 6) = x, y, px, py, pz, is_photon) to a
non-negative (B, 30, 30) image; the condition normalisation lives inside as buffers, so a checkpoint maps
raw physical inputs to images and exports (TorchScript/ONNX) with no Python-side preprocessing.

- ``ShowerGenerator`` (default, ``model="shower"``): physically informed. It predicts the log of the total
  energy relative to 165·|p| and a softmax shape over the 900 cells, built by a per-cell network on
  coordinates relative to the expected shower centre c = (x, y) + 25·(px/pz, py/pz) (also rotated into
  the transverse-momentum frame), modulated by a latent code of noise and conditions, plus per-cell noise
  for cell-level fluctuations.
- ``Baseline2019Generator`` (``model="baseline2019"``): the 2019 starter kit's layer sizes (noise 10 + 5
  conditions -> 64 -> 128 -> 512 -> 256·9·9, then six 3x3 transposed convolutions to 30x30); it ignores
  the particle type as the starter kit did. Kept for like-for-like comparisons.
- ``Critic``: judges the log-scaled energy fractions plus log(E_total / 165|p|) with the conditions; no
  batch norm (the gradient penalty needs per-sample gradients). Its input space is ``critic_features``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from calogan.core.errors import InputError
from calogan.core.runtime import require_finite_tensors, torch_load_safe
from calogan.ecal.data import (
    CELL_CENTRES,
    ENERGY_UNITS_PER_GEV,
    IMAGE_SIZE,
    N_CELLS,
    ConditionNormalizer,
    require_file,
    sha256_file,
    split_path,
)
from calogan.ecal.soft_stats import PROFILE_RANKS, SUMMARY_NAMES, rank_profile, shower_summary

#: Smallest resolved energy fraction in the critic's log space (the sparsity statistics go down to 1e-5).
FRACTION_FLOOR = 1e-6
#: The critic's log-fraction scaling (log(frac + floor) + shift) / scale maps 1e-6..1 to about 0..1.75.
_LOGF_SHIFT, _LOGF_SCALE = 7.0, 4.0
CHECKPOINT_FORMAT = "calogan-checkpoint-v1"
MODELS = ("shower", "baseline2019")


def _default_normalizer() -> dict:
    """Roughly the simulator's condition statistics; replaced by the fitted ones in training."""
    return {"mean": [0.0, 0.0, 0.0, 0.0, 30.0], "std": [2.7, 2.7, 3.0, 3.0, 25.0]}


def _pnorm(cond: torch.Tensor) -> torch.Tensor:
    """|p| from raw conditions, (B, 1) (written out so TorchScript and ONNX accept it)."""
    mom = cond[:, 2:5]
    return torch.sqrt((mom * mom).sum(dim=1, keepdim=True))


class _Normalised(nn.Module):
    """Holds the condition mean/std as buffers and derives physics features from raw conditions."""

    def _init_norm(self, normalizer: dict | None) -> None:
        norm = normalizer or _default_normalizer()
        self.register_buffer("cond_mean", torch.tensor(norm["mean"], dtype=torch.float32))
        self.register_buffer("cond_std", torch.tensor(norm["std"], dtype=torch.float32))
        xx, yy = np.meshgrid(CELL_CENTRES, CELL_CENTRES)
        self.register_buffer(
            "cell_x", torch.tensor(xx, dtype=torch.float32).reshape(1, 1, IMAGE_SIZE, IMAGE_SIZE)
        )
        self.register_buffer(
            "cell_y", torch.tensor(yy, dtype=torch.float32).reshape(1, 1, IMAGE_SIZE, IMAGE_SIZE)
        )

    def features(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, 11): standardised x, y, px, py, pz, is_photon, log|p|, expected centre, slopes."""
        cont = (cond[:, :5] - self.cond_mean) / self.cond_std
        p = _pnorm(cond)
        pz = cond[:, 4:5]
        sx, sy = cond[:, 2:3] / pz, cond[:, 3:4] / pz
        cx = cond[:, 0:1] + 25.0 * sx
        cy = cond[:, 1:2] + 25.0 * sy
        logp = (torch.log(p) - 2.3) / 1.2
        return torch.cat([cont, cond[:, 5:6], logp, cx / 5.0, cy / 5.0, sx * 3.0, sy * 3.0], dim=1)

    def coordinates(
        self, cond: torch.Tensor, cell_x: torch.Tensor | None = None, cell_y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, 6, H, W) per-cell coordinates relative to the expected centre, also in the pT frame.

        The grid is the 30x30 window unless ``cell_x``/``cell_y`` (1, 1, H, W) give another (a padded one).
        """
        cell_x = self.cell_x if cell_x is None else cell_x
        cell_y = self.cell_y if cell_y is None else cell_y
        pz = cond[:, 4].reshape(-1, 1, 1, 1)
        px, py = cond[:, 2].reshape(-1, 1, 1, 1), cond[:, 3].reshape(-1, 1, 1, 1)
        cx = cond[:, 0].reshape(-1, 1, 1, 1) + 25.0 * px / pz
        cy = cond[:, 1].reshape(-1, 1, 1, 1) + 25.0 * py / pz
        u, v = (cell_x - cx) / 4.0, (cell_y - cy) / 4.0
        pt = torch.sqrt(px * px + py * py + 1e-6)
        along = (u * px + v * py) / pt
        across = (v * px - u * py) / pt
        r2 = u * u + v * v
        return torch.cat([u, v, along, across, torch.log1p(r2), torch.exp(-r2)], dim=1)


def log_energy_ratio(
    images: torch.Tensor, cond: torch.Tensor, units_per_gev: float = ENERGY_UNITS_PER_GEV
) -> torch.Tensor:
    """log(E_total / (165·|p|)) per image, (B, 1)."""
    total = images.reshape(images.shape[0], -1).sum(dim=1, keepdim=True)
    p = _pnorm(cond)
    return torch.log(total + 1e-3) - torch.log(units_per_gev * p)


def critic_features(
    images: torch.Tensor, cond: torch.Tensor, units_per_gev: float = ENERGY_UNITS_PER_GEV
) -> torch.Tensor:
    """The critic's input space: (B, 901) = 900 scaled log energy fractions + the log energy ratio.

    The fractions are scale-free (like the competition statistics); the ratio carries the energy scale.
    Interpolation for the gradient penalty happens in this space, where gradients are well conditioned.
    """
    flat = images.reshape(images.shape[0], -1)
    total = flat.sum(dim=1, keepdim=True)
    frac = flat / (total + 1e-6)
    logf = (torch.log(frac + FRACTION_FLOOR) + _LOGF_SHIFT) / _LOGF_SCALE
    return torch.cat([logf, 3.0 * log_energy_ratio(images, cond, units_per_gev)], dim=1)


def fractions_from_features(logf: torch.Tensor) -> torch.Tensor:
    """The energy fractions back from the 900 scaled log fractions of :func:`critic_features` (clipped at 0)."""
    return (torch.exp(logf * _LOGF_SCALE - _LOGF_SHIFT) - FRACTION_FLOOR).clamp_min(0.0)


def _padded_grid(pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 1, 30+2·pad, 30+2·pad) cell-centre x and y of the window extended by ``pad`` cells on each side."""
    step = float(CELL_CENTRES[1] - CELL_CENTRES[0])
    centres = CELL_CENTRES[0] + step * np.arange(-pad, len(CELL_CENTRES) + pad)
    xx, yy = np.meshgrid(centres, centres)
    size = len(centres)
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32).reshape(1, 1, size, size)  # noqa: E731
    return as_tensor(xx), as_tensor(yy)


class ShowerGenerator(_Normalised):
    """Physically informed generator: energy scale from |p| times a softmax shape placed around c.

    ``pad`` > 0 spreads the shape over the window extended by ``pad`` cells per side and keeps the central
    30x30: energy leaking out of the window then follows from where the shower sits, as in a calorimeter,
    and the energy head models the whole shower's energy. ``noise_modulation`` lets the per-cell noise
    amplitude depend on the cell's features (position relative to the centre, conditions), so the core can
    fluctuate less than the tails; without it one amplitude per channel serves every cell. ``logit_noise`` adds
    a second per-cell noise straight to each cell's log energy, with a per-cell amplitude from the cell's
    features: log-normal cell fluctuations of any size (real cells next to the hottest one vary by an order of
    magnitude from shower to shower), which noise filtered through the convolutions only reaches slowly.
    ``cell_gates`` makes each cell a mixture of two log energies, "hit" and "background", chosen by a relaxed
    Bernoulli gate whose probability depends on the cell's features and whose draw comes from a third per-cell
    noise block: showers whose cells are either lit or nearly empty (a bimodal cell spectrum, spotty cores)
    are then one draw away instead of a narrow ridge of the noise-to-image map. ``hard_gates`` makes the draw
    exactly 0 or 1 (straight-through gradient), so no cell sits between the two levels.
    """

    def __init__(
        self,
        noise_dim: int = 32,
        latent: int = 64,
        channels: int = 16,
        cell_noise: bool = True,
        normalizer: dict | None = None,
        pad: int = 0,
        noise_modulation: bool = False,
        logit_noise: bool = False,
        cell_gates: bool = False,
        hard_gates: bool = False,
        units_per_gev: float = ENERGY_UNITS_PER_GEV,
        zero_threshold: float = 0.0,
    ):
        super().__init__()
        self._init_norm(normalizer)
        if pad < 0:
            raise InputError(f"gen_pad must be >= 0, got {pad}")
        self.pad = int(pad)
        self.grid = IMAGE_SIZE + 2 * self.pad
        grid_x, grid_y = _padded_grid(self.pad)
        self.register_buffer("grid_x", grid_x, persistent=False)  # derived constants, not weights
        self.register_buffer("grid_y", grid_y, persistent=False)
        self.global_noise = int(noise_dim)
        # the data's energy scale (visible units per GeV of |p|, fitted on the training events): the energy
        # head starts there; a float attribute, so a constant in TorchScript/ONNX graphs
        self.units_per_gev = float(units_per_gev)
        # the data's readout threshold (fitted on the training cells; 0 when they hold no exact zeros): cells
        # generated below it are read out as 0, as a zero-suppressed calorimeter does
        self.zero_threshold = float(zero_threshold)
        self.cell_noise = bool(cell_noise)
        self.logit_noise = bool(logit_noise)
        self.cell_gates = bool(cell_gates)
        self.hard_gates = bool(hard_gates)
        blocks = int(self.cell_noise) + int(self.logit_noise) + int(self.cell_gates)
        self.noise_dim = self.global_noise + self.grid**2 * blocks
        self.mlp = nn.Sequential(
            nn.Linear(self.global_noise + 11, latent * 2),
            nn.LeakyReLU(0.2),
            nn.Linear(latent * 2, latent * 2),
            nn.LeakyReLU(0.2),
        )
        self.energy_head = nn.Linear(latent * 2, 1)
        nn.init.zeros_(self.energy_head.weight)
        nn.init.zeros_(self.energy_head.bias)
        self.film1 = nn.Linear(latent * 2, channels * 2)
        self.film2 = nn.Linear(latent * 2, channels * 2)
        self.coord_in = nn.Conv2d(6, channels, 1)
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.noise_scale = nn.Parameter(torch.full((1, channels, 1, 1), 0.1))
        self.noise_amp = None
        if (
            noise_modulation
        ):  # amplitude = noise_scale * 2 sigmoid(1x1 conv of the cell's features); 1x at init
            self.noise_amp = nn.Conv2d(channels, channels, 1)
            nn.init.zeros_(self.noise_amp.weight)
            nn.init.zeros_(self.noise_amp.bias)
        self.out = nn.Conv2d(channels, 1, 1)
        self.logit_amp = None
        if self.logit_noise:  # amplitude = softplus(1x1 conv of the cell's features); 0.5 (log units) at init
            self.logit_amp = nn.Conv2d(channels, 1, 1)
            nn.init.zeros_(self.logit_amp.weight)
            nn.init.constant_(self.logit_amp.bias, math.log(math.expm1(0.5)))
        self.gate = None
        if self.cell_gates:  # channels: gate logit, background log energy (relative to the hit one)
            self.gate = nn.Conv2d(channels, 2, 1)
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, 0.0)

    def forward(self, noise: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        batch, grid = conditions.shape[0], self.grid
        z = noise[:, : self.global_noise]
        h = self.mlp(torch.cat([z, self.features(conditions)], dim=1))
        log_e = self.energy_head(h) + torch.log(self.units_per_gev * _pnorm(conditions))
        g1, b1 = self.film1(h).reshape(batch, 1, 1, -1).chunk(2, dim=-1)
        g2, b2 = self.film2(h).reshape(batch, 1, 1, -1).chunk(2, dim=-1)
        # cells x channels layout (B, H, W, C): the 1x1 convolutions become matrix products, and the 3x3 ones
        # see it as channels-last; on CPU both run several times faster than on (B, C, H, W) this way
        coords = self.coordinates(conditions, self.grid_x, self.grid_y).permute(0, 2, 3, 1)
        x = F.leaky_relu(_pointwise(self.coord_in.weight, self.coord_in.bias, coords) * (1 + g1) + b1, 0.2)
        x = F.leaky_relu(_pointwise(self.conv1.weight, self.conv1.bias, x) * (1 + g2) + b2, 0.2)
        start = self.global_noise
        if self.cell_noise:
            amp = self.noise_scale.reshape(1, 1, 1, -1)
            if self.noise_amp is not None:
                amp = amp * 2.0 * torch.sigmoid(_pointwise(self.noise_amp.weight, self.noise_amp.bias, x))
            x = x + amp * noise[:, start : start + grid * grid].reshape(batch, grid, grid, 1)
            start += grid * grid
        x = F.leaky_relu(_spatial(self.conv2.weight, self.conv2.bias, x), 0.2)
        x = F.leaky_relu(_spatial(self.conv3.weight, self.conv3.bias, x), 0.2)
        logits = _pointwise(self.out.weight, self.out.bias, x)
        if self.logit_amp is not None:
            amp = F.softplus(_pointwise(self.logit_amp.weight, self.logit_amp.bias, x))
            logits = logits + amp * noise[:, start : start + grid * grid].reshape(batch, grid, grid, 1)
            start += grid * grid
        if self.gate is not None:  # relaxed Bernoulli sigmoid((logit + 1.7 N(0,1)) / 0.3); 1.7 N ~ logistic
            gate_logit, background = _pointwise(self.gate.weight, self.gate.bias, x).chunk(2, dim=-1)
            draw = noise[:, start : start + grid * grid].reshape(batch, grid, grid, 1)
            hit = torch.sigmoid((gate_logit + 1.7 * draw) / 0.3)
            if self.hard_gates:  # the exact 0/1 draw forward, the relaxed one's gradient backward
                hit = hit + ((gate_logit + 1.7 * draw > 0).to(hit.dtype) - hit).detach()
            logits = logits + (1.0 - hit) * (background - 2.0)  # background starts e^-2 below the hit level
        shape = torch.softmax(logits.reshape(batch, grid * grid), dim=1).reshape(batch, grid, grid)
        if self.pad:
            shape = shape[:, self.pad : self.grid - self.pad, self.pad : self.grid - self.pad]
        images = shape * torch.exp(log_e).reshape(batch, 1, 1)
        if self.zero_threshold > 0:
            images = images * (images >= self.zero_threshold).to(images.dtype)
        return images


def _pointwise(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution's weights applied to (B, H, W, C_in) as a matrix product -> (B, H, W, C_out)."""
    return F.linear(x, weight.flatten(1), bias)


def _spatial(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """A 3x3 'same' convolution on (B, H, W, C): the permuted view is channels-last, so no copy is made."""
    return F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=1).permute(0, 2, 3, 1)


class Baseline2019Generator(_Normalised):
    """The 2019 starter-kit generator's layer sizes; output = relu(conv) × a fixed energy scale."""

    def __init__(self, noise_dim: int = 10, energy_scale: float = 100.0, normalizer: dict | None = None):
        super().__init__()
        self._init_norm(normalizer)
        self.noise_dim = int(noise_dim)
        self.register_buffer("energy_scale", torch.tensor(float(energy_scale)))
        self.fc = nn.Sequential(
            nn.Linear(self.noise_dim + 5, 64),
            nn.LeakyReLU(0.01),
            nn.Linear(64, 128),
            nn.LeakyReLU(0.01),
            nn.Linear(128, 512),
            nn.LeakyReLU(0.01),
            nn.Linear(512, 256 * 9 * 9),
            nn.LeakyReLU(0.01),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(256, 256, 3, stride=2, output_padding=1),  # 9 -> 20
            nn.LeakyReLU(0.01),
            nn.ConvTranspose2d(256, 128, 3),  # 22
            nn.LeakyReLU(0.01),
            nn.ConvTranspose2d(128, 64, 3),  # 24
            nn.LeakyReLU(0.01),
            nn.ConvTranspose2d(64, 32, 3),  # 26
            nn.LeakyReLU(0.01),
            nn.ConvTranspose2d(32, 16, 3),  # 28
            nn.LeakyReLU(0.01),
            nn.ConvTranspose2d(16, 1, 3),  # 30
        )

    def forward(self, noise: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        cont = (conditions[:, :5] - self.cond_mean) / self.cond_std
        x = self.fc(torch.cat([noise, cont], dim=1)).reshape(-1, 256, 9, 9)
        return F.relu(self.deconv(x)).squeeze(1) * self.energy_scale  # (B, 1, 30, 30) -> (B, 30, 30)


class Critic(_Normalised):
    """WGAN critic on critic_features(image) and the conditions; layer norm only, no batch norm.

    ``summary`` also hands the head the shower's physics summary, computed from the same input: the 26
    differentiable statistics of :func:`~calogan.ecal.soft_stats.shower_summary` and the cell rank profile,
    so that mismatches a downsampling convolution blurs (sparsity levels, core fractions) are seen directly.
    """

    def __init__(
        self,
        channels: int = 16,
        hidden: int = 128,
        normalizer: dict | None = None,
        core: bool = False,
        summary: bool = False,
    ):
        super().__init__()
        self._init_norm(normalizer)
        self.core = bool(core)
        self.summary = bool(summary)
        n_summary = len(SUMMARY_NAMES) + len(PROFILE_RANKS) if self.summary else 0
        c = channels
        self.conv = nn.Sequential(
            nn.Conv2d(1 + int(self.core) + 6, c, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1),  # 15
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1),  # 7
            nn.LeakyReLU(0.2),
            nn.Conv2d(4 * c, 4 * c, 3, stride=2, padding=1),  # 4
            nn.LeakyReLU(0.2),
        )
        self.head = nn.Sequential(
            nn.Linear(4 * c * 16 + 11 + 1 + n_summary, hidden),
            nn.LayerNorm(hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, feats: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """feats = critic_features(images, conditions), (B, 901); returns (B,) scores."""
        batch = feats.shape[0]
        img = feats[:, :N_CELLS].reshape(batch, 1, IMAGE_SIZE, IMAGE_SIZE)
        frac = fractions_from_features(img) if self.core or self.summary else None  # (B, 1, 30, 30)
        if self.core:  # sqrt of the linear fraction: the shower core, compressed by the log scale, stands out
            img = torch.cat([img, 3.0 * torch.sqrt(frac + 1e-12)], dim=1)
        x = self.conv(torch.cat([img, self.coordinates(conditions)], dim=1)).reshape(batch, -1)
        parts = [x, self.features(conditions), feats[:, N_CELLS:]]
        if self.summary:
            profile = (rank_profile(frac) + _LOGF_SHIFT) / _LOGF_SCALE
            parts += [shower_summary(frac, conditions), profile]
        return self.head(torch.cat(parts, dim=1)).squeeze(1)


# ---------------------------------------------------------------- construction and loading


def build_generator(config: dict) -> nn.Module:
    """A generator from a model-config dict: {'model': 'shower'|'baseline2019', 'normalizer': ..., sizes}."""
    kind = config.get("model", "shower")
    norm = config.get("normalizer")
    if kind == "shower":
        return ShowerGenerator(
            noise_dim=int(config.get("noise_dim", 32)),
            latent=int(config.get("latent", 64)),
            channels=int(config.get("gen_channels", 16)),
            cell_noise=bool(config.get("cell_noise", True)),
            normalizer=norm,
            pad=int(config.get("gen_pad", 0)),  # absent in checkpoints written before these options
            noise_modulation=bool(config.get("noise_modulation", False)),
            logit_noise=bool(config.get("logit_noise", False)),
            cell_gates=bool(config.get("cell_gates", False)),
            hard_gates=bool(config.get("hard_gates", False)),
            units_per_gev=float(config.get("units_per_gev", ENERGY_UNITS_PER_GEV)),  # fitted on the data
            zero_threshold=float(config.get("zero_threshold", 0.0)),
        )
    if kind == "baseline2019":
        return Baseline2019Generator(
            noise_dim=int(config.get("noise_dim", 10)),
            energy_scale=float(config.get("energy_scale", 100.0)),
            normalizer=norm,
        )
    raise InputError(f"--model: unknown model '{kind}' (use {' or '.join(MODELS)})")


def build_critic(config: dict) -> Critic:
    """The critic for a model-config dict (same for every generator)."""
    return Critic(
        channels=int(config.get("critic_channels", 16)),
        hidden=int(config.get("critic_hidden", 128)),
        normalizer=config.get("normalizer"),
        core=bool(config.get("critic_core", False)),  # absent in checkpoints written before the option
        summary=bool(config.get("critic_summary", False)),
    )


def model_config(model: str, normalizer: ConditionNormalizer, **sizes) -> dict:
    """The JSON-able model config stored in checkpoints (architecture + normalisation)."""
    return {"model": model, "normalizer": normalizer.to_dict(), **sizes}


def check_checkpoint(ckpt: object, path: str | Path) -> dict:
    """Validate a loaded checkpoint dict (format and keys); foreign files raise InputError."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a calogan checkpoint (expected format '{CHECKPOINT_FORMAT}')")
    missing = [k for k in ("model_config", "generator", "generator_ema", "step") if k not in ckpt]
    if missing:
        raise InputError(f"{path}: checkpoint lacks key(s) {', '.join(missing)}")
    require_finite_tensors(path, ckpt, ("generator", "generator_ema", "critic"))
    return ckpt


def load_checked_checkpoint(checkpoint: str | Path, data_dir: str | Path) -> dict:
    """Load a training checkpoint and refuse it (InputError) when it was trained on other data than DATA's."""
    ckpt = check_checkpoint(torch_load_safe(checkpoint), checkpoint)
    train_path = require_file(split_path(data_dir, "train"))
    if ckpt.get("data_sha256") not in (None, sha256_file(train_path)):
        raise InputError(f"{checkpoint}: trained on other data than {train_path} (sha256 differs)")
    return ckpt


def load_generator(checkpoint_path: str | Path, device: str | torch.device = "cpu", ema: bool = True):
    """Load the (EMA) generator of a training checkpoint; returns (generator in eval mode, metadata dict)."""
    ckpt = check_checkpoint(torch_load_safe(checkpoint_path), checkpoint_path)
    generator = build_generator(ckpt["model_config"])
    try:
        generator.load_state_dict(ckpt["generator_ema" if ema else "generator"])
    except RuntimeError as exc:
        raise InputError(
            f"{checkpoint_path}: weights do not fit the architecture ({str(exc)[:150]})"
        ) from None
    meta = {k: ckpt[k] for k in ("model_config", "config", "step", "metrics", "data_sha256") if k in ckpt}
    return generator.to(device).eval(), meta


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "ShowerGenerator",
    "Baseline2019Generator",
    "Critic",
    "critic_features",
    "log_energy_ratio",
    "build_generator",
    "build_critic",
    "model_config",
    "load_generator",
    "check_checkpoint",
    "load_checked_checkpoint",
    "count_parameters",
    "MODELS",
    "CHECKPOINT_FORMAT",
]
