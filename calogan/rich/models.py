"""MLP generator and critic for the RICH GAN (3 conditions -> 5 DLLs, all in quantile-normal space)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from calogan.core.errors import InputError
from calogan.core.runtime import require_finite_tensors, torch_load_safe
from calogan.rich import SENTINEL
from calogan.rich.data import QuantileNormal, from_basis, model_inputs, no_rich_probability

N_CONDITIONS = 3
N_OUTPUTS = 5


def _mlp(n_in: int, n_out: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class RichGenerator(nn.Module):
    """(noise, normalised conditions) -> normalised DLLs."""

    def __init__(self, noise_dim: int = 64, hidden: int = 128, depth: int = 4):
        super().__init__()
        self.noise_dim = noise_dim
        self.net = _mlp(noise_dim + N_CONDITIONS, N_OUTPUTS, hidden, depth)

    def forward(self, noise: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([noise, conditions], 1))


class RichCritic(nn.Module):
    """(normalised DLLs, normalised conditions) -> Wasserstein score; no batch norm (gradient penalty)."""

    def __init__(self, hidden: int = 128, depth: int = 4):
        super().__init__()
        self.net = _mlp(N_OUTPUTS + N_CONDITIONS, 1, hidden, depth)

    def forward(self, dlls: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([dlls, conditions], 1)).squeeze(1)


def build_models(model_config: dict) -> tuple[RichGenerator, RichCritic]:
    """Build generator and critic from {'noise_dim', 'hidden', 'depth'}."""
    g = RichGenerator(model_config["noise_dim"], model_config["hidden"], model_config["depth"])
    c = RichCritic(model_config["hidden"], model_config["depth"])
    return g, c


class RichModel:
    """A trained particle model: EMA generator + input/output quantile transforms + no-RICH table."""

    def __init__(
        self,
        generator: RichGenerator,
        qt_in,
        qt_out,
        no_rich_table,
        particle: str,
        meta: dict,
        dll_basis: str = "raw",
    ):
        self.generator = generator.eval()
        self.dll_basis = dll_basis
        self.qt_in, self.qt_out = qt_in, qt_out
        self.no_rich_table = no_rich_table
        self.particle = particle
        self.meta = meta

    @torch.no_grad()
    def generate(
        self, inputs, seed: int = 0, batch_size: int = 65536, device=None, noise=None, no_rich: bool = True
    ):
        """Sample (N, 5) DLLs for raw inputs (N, 3) = P, ETA, NTRACKS; -999 rows drawn from the no-RICH table.

        ``noise`` (N, noise_dim) replaces the generator noise drawn from ``seed`` (the exported graph takes
        it as an input); ``no_rich=False`` skips the -999 draw, so every track gets generated DLLs.
        """
        device = device or next(self.generator.parameters()).device
        cond = torch.from_numpy(self.qt_in.transform(model_inputs(inputs)))
        if noise is not None:
            noise = torch.as_tensor(noise, dtype=torch.float32)
            if tuple(noise.shape) != (len(cond), self.generator.noise_dim):
                raise InputError(
                    f"noise: expected shape ({len(cond)}, {self.generator.noise_dim}), got {tuple(noise.shape)}"
                )
        gen = torch.Generator().manual_seed(seed)
        outs = []
        for start in range(0, len(cond), batch_size):
            c = cond[start : start + batch_size]
            if noise is None:
                z = torch.randn(len(c), self.generator.noise_dim, generator=gen)
            else:
                z = noise[start : start + batch_size]
            outs.append(self.generator(z.to(device), c.to(device)).cpu())
        z_out = torch.cat(outs).numpy() if outs else np.zeros((0, N_OUTPUTS), np.float32)
        dlls = from_basis(self.qt_out.inverse_transform(z_out), self.dll_basis)
        if not no_rich:
            return dlls
        rng = np.random.default_rng(seed)
        missing = rng.random(len(dlls)) < no_rich_probability(self.no_rich_table, inputs)
        dlls[missing] = SENTINEL
        return dlls


def load_rich_model(path, device="cpu", ema: bool = True) -> RichModel:
    """Load a calogan.rich.train checkpoint (weights_only) into a RichModel."""
    ckpt = torch_load_safe(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a calogan RICH checkpoint (format != {CHECKPOINT_FORMAT})")
    require_finite_tensors(
        path, ckpt, ("generator_ema" if ema else "generator", "qt_in", "qt_out", "no_rich_table")
    )
    g, _ = build_models(ckpt["model_config"])
    g.load_state_dict(ckpt["generator_ema" if ema else "generator"])
    qt_in = QuantileNormal.from_arrays(
        ckpt["qt_in"]["quantiles"].numpy(), ckpt["qt_in"]["references"].numpy()
    )
    qt_out = QuantileNormal.from_arrays(
        ckpt["qt_out"]["quantiles"].numpy(), ckpt["qt_out"]["references"].numpy()
    )
    meta = {k: ckpt[k] for k in ("config", "step", "metrics", "data_sha256") if k in ckpt}
    basis = ckpt.get("config", {}).get("dll_basis", "raw")  # checkpoints before the basis option: raw
    return RichModel(
        g.to(device), qt_in, qt_out, ckpt["no_rich_table"].numpy(), ckpt["particle"], meta, basis
    )


CHECKPOINT_FORMAT = "calogan-rich-checkpoint-v1"
