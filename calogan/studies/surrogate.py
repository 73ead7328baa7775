"""Differentiable shower statistics, distribution-matching losses and the surrogate regressor for fine-tuning.

Two ways to put a physics statistic into a generator loss (Rogachev & Ratnikov, arXiv:2207.06329):

* a statistic written in torch (energy response, soft widths, soft asymmetries) is matched directly;
* a non-differentiable one (the hard half-plane asymmetries and widths of the 24 statistics, the sparsity levels) is
  predicted by :class:`SurrogateRegressor`, a small CNN on the log-scaled, energy-normalised image whose
  per-cell features are pooled with energy weights (the form of every competition statistic), and the
  generator is trained through the surrogate's predictions.

Distributions are compared at the same conditions: generated and real values of one batch share their
conditions, and :func:`calogan.core.gan.binned_wasserstein` compares them per |p| bin.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from calogan.core.errors import InputError
from calogan.core.fit import fit, seeded
from calogan.core.gan import binned_wasserstein
from calogan.ecal.data import IMAGE_SIZE
from calogan.ecal.physics import STAT_NAMES
from calogan.ecal.soft_stats import shower_frame

#: Statistic names a fine-tuning target may use (``sparsity`` means all 20 levels).
SURROGATE_TARGETS = (
    "longitudinal_asymmetry",
    "transverse_asymmetry",
    "longitudinal_width",
    "transverse_width",
    "sparsity",
)
DIRECT_TARGETS = ("energy_response",)
TARGET_NAMES = SURROGATE_TARGETS + DIRECT_TARGETS
#: Columns of calogan.ecal.physics.physical_statistics for each surrogate target, read from STAT_NAMES: the
#: statistic of that name, or every ``sparsity_*`` level for ``sparsity``.
TARGET_COLUMNS = {
    name: [i for i, stat in enumerate(STAT_NAMES) if stat == name or stat.startswith(f"{name}_")]
    for name in SURROGATE_TARGETS
}
#: Widths have a heavy tail (the sqrt(1 + (py/px)^2) factor): the surrogate learns log1p(width).
LOG_TARGETS = ("longitudinal_width", "transverse_width")
_LOG_FLOOR = 1e-7


def parse_targets(text: str, option: str = "--target") -> list[str]:
    """Split a comma list of statistic names; unknown names raise InputError listing the valid ones."""
    names = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not names:
        raise InputError(f"{option}: no statistic given (valid: {', '.join(TARGET_NAMES)})")
    bad = [n for n in names if n not in TARGET_NAMES]
    if bad:
        raise InputError(f"{option}: unknown statistic '{bad[0]}' (valid: {', '.join(TARGET_NAMES)})")
    return list(dict.fromkeys(names))


def target_values(stats24: np.ndarray, names: list[str]) -> np.ndarray:
    """The surrogate's target columns (N, k) float32 from the (N, 24) statistics, widths as log1p."""
    cols = []
    for name in names:
        block = np.asarray(stats24, np.float64)[:, TARGET_COLUMNS[name]]
        cols.append(np.log1p(np.maximum(block, 0.0)) if name in LOG_TARGETS else block)
    return np.concatenate(cols, axis=1).astype(np.float32)


def target_labels(names: list[str]) -> list[str]:
    """One label per surrogate output column (``sparsity`` expands to its 20 levels)."""
    labels = []
    for name in names:
        for col in TARGET_COLUMNS[name]:
            labels.append(f"log1p({STAT_NAMES[col]})" if name in LOG_TARGETS else STAT_NAMES[col])
    return labels


# ------------------------------------------------------------------ distribution-matching losses


def energy_distance(gen: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| between samples (B, k) (biased V-statistic)."""
    gen = gen.reshape(gen.shape[0], -1)
    real = real.reshape(real.shape[0], -1).to(gen.dtype)

    def mean_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) + 1e-12).mean()

    return 2 * mean_dist(gen, real) - mean_dist(gen, gen) - mean_dist(real, real)


def moment_matching(
    gen: torch.Tensor, real: torch.Tensor, bins: torch.Tensor | None = None, n_bins: int = 1
) -> torch.Tensor:
    """Sum over columns of squared differences of per-bin means and standard deviations (B, k) inputs."""
    gen = gen.reshape(gen.shape[0], -1)
    real = real.reshape(real.shape[0], -1).to(gen.dtype)
    bins = torch.zeros(gen.shape[0], dtype=torch.long, device=gen.device) if bins is None else bins
    onehot = torch.nn.functional.one_hot(bins, max(n_bins, int(bins.max()) + 1)).to(gen.dtype)  # (B, nb)
    count = onehot.sum(0).clamp_min(1.0).unsqueeze(1)  # (nb, 1)
    used = (onehot.sum(0) > 1).to(gen.dtype).unsqueeze(1)

    def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = onehot.T @ x / count
        var = onehot.T @ (x * x) / count - mean**2
        return mean, torch.sqrt(var.clamp_min(0.0) + 1e-12)

    (mg, sg), (mr, sr) = moments(gen), moments(real)
    return (used * ((mg - mr) ** 2 + (sg - sr) ** 2)).sum() / used.sum().clamp_min(1.0)


LOSSES = ("wasserstein", "energy", "moments")


def distribution_loss(
    kind: str, gen: torch.Tensor, real: torch.Tensor, bins: torch.Tensor, n_bins: int, seed: int = 0
) -> torch.Tensor:
    """Dispatch to one of :data:`LOSSES` (all compare gen and real at the same conditions)."""
    if kind == "wasserstein":
        return binned_wasserstein(gen, real, bins, projections=16 if gen.shape[1] > 1 else 0, seed=seed)
    if kind == "energy":
        return energy_distance(gen, real)
    if kind == "moments":
        return moment_matching(gen, real, bins, n_bins)
    raise InputError(f"--loss: unknown loss '{kind}' (valid: {', '.join(LOSSES)})")


# ------------------------------------------------------------------ the surrogate regressor


def surrogate_inputs(
    images: torch.Tensor, conditions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cell channels (B,6,30,30), energy weights (B,30,30), condition features (B,7)) for the regressor.

    Channels: log10 of the energy fraction (scaled to about [-1, 1]), the shower-frame coordinates along
    and across·sign(px) (the orientation of the reference lines), the distance to the expected centre, and
    sharp (0.04 cm) tanh half-plane indicators of the two frame axes; the weights are the energy fractions used to pool per-cell features.
    """
    img = images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).clamp_min(0.0)
    frac = img / (img.sum((1, 2), keepdim=True) + 1e-12)
    logf = (torch.log10(frac + _LOG_FLOOR) + 3.5) / 3.5
    along, across = shower_frame(conditions)
    sign_px = torch.where(conditions[:, 2] >= 0, 1.0, -1.0).to(img.dtype).view(-1, 1, 1)
    sign_py = torch.where(conditions[:, 3] > 0, 1.0, -1.0).to(img.dtype)
    radial = torch.sqrt(along * along + across * across)
    across_s = across * sign_px
    chans = torch.stack(
        [
            logf,
            along / 10.0,
            across_s / 10.0,
            radial / 10.0,
            torch.tanh(25 * along),
            torch.tanh(25 * across_s),
        ],
        dim=1,
    )
    p = torch.linalg.vector_norm(conditions[:, 2:5], dim=1)
    pt = torch.linalg.vector_norm(conditions[:, 2:4], dim=1)
    cond = torch.stack(
        [sign_px.view(-1), sign_py, torch.log(p) / 3.0, torch.log1p(pt), pt / conditions[:, 4] * 5.0,
         torch.log1p(torch.abs(conditions[:, 3] / (conditions[:, 2].abs() + 1e-3))), conditions[:, 5]],
        dim=1,
    )  # fmt: skip
    return chans, frac, cond


class SurrogateRegressor(nn.Module):
    """Small CNN predicting k statistics from an image and its conditions.

    Per-cell conv features are pooled twice — weighted by the cell's energy fraction and averaged over
    cells — which is the algebraic form of the asymmetries, widths and sparsity levels; an MLP on the
    pooled features and the condition features gives standardised outputs (mean/std kept as buffers).
    """

    def __init__(self, n_outputs: int, channels: int = 16, hidden: int = 64):
        super().__init__()
        self.n_outputs = int(n_outputs)
        self.cells = nn.Sequential(
            nn.Conv2d(6, channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(channels, channels, 1), nn.SiLU(),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Linear(2 * channels + 13, hidden), nn.SiLU(), nn.Linear(hidden, n_outputs)
        )
        self.register_buffer("target_mean", torch.zeros(n_outputs))
        self.register_buffer("target_std", torch.ones(n_outputs))

    def forward(self, images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """Predicted statistics (B, k) in their natural (unstandardised) units."""
        return self.standardised(images, conditions) * self.target_std + self.target_mean

    def standardised(self, images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """Predictions in standardised units (what the training loss sees)."""
        chans, frac, cond = surrogate_inputs(images, conditions)
        feats = self.cells(chans)  # (B, C, 30, 30)
        pooled_e = (feats * frac.unsqueeze(1)).sum((2, 3))
        pooled_u = feats.mean((2, 3))
        pooled_in = (chans * frac.unsqueeze(1)).sum((2, 3))  # energy-weighted input channels (soft moments)
        return self.head(torch.cat([pooled_e, pooled_u, pooled_in, cond], dim=1))

    def set_target_scale(self, targets: np.ndarray) -> None:
        """Store the mean/std of the training targets (N, k)."""
        t = torch.as_tensor(np.asarray(targets, np.float64))
        self.target_mean.copy_(t.mean(0).to(self.target_mean))
        self.target_std.copy_(t.std(0).clamp_min(1e-6).to(self.target_std))


def surrogate_loss(
    model: SurrogateRegressor, images: torch.Tensor, conditions: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The regression loss: mean squared error of the standardised predictions."""
    pred = model.standardised(images, conditions)
    return torch.nn.functional.mse_loss(pred, (targets - model.target_mean) / model.target_std)


def surrogate_step(
    model: SurrogateRegressor, optimizer: torch.optim.Optimizer, images: torch.Tensor, conditions: torch.Tensor,
    targets: torch.Tensor,
) -> float:  # fmt: skip
    """One optimiser step of :func:`surrogate_loss` (fine-tuning refits the surrogate online); returns the loss."""
    model.train()
    loss = surrogate_loss(model, images, conditions, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_surrogate(
    images: np.ndarray,
    conditions: np.ndarray,
    targets: np.ndarray,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    model: SurrogateRegressor | None = None,
) -> SurrogateRegressor:
    """Fit a SurrogateRegressor to targets (N, k) from images (N,30,30) and raw conditions (N,6)."""
    if model is None:
        model = seeded(lambda: SurrogateRegressor(targets.shape[1]), seed)
        model.set_target_scale(targets)
    model = model.to(device)
    img_t = torch.as_tensor(images, dtype=torch.float32)
    cond_t = torch.as_tensor(conditions, dtype=torch.float32)
    tgt_t = torch.as_tensor(targets, dtype=torch.float32)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return surrogate_loss(model, img_t[idx].to(device), cond_t[idx].to(device), tgt_t[idx].to(device))

    def cosine(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1), eta_min=lr * 0.05)

    fit(model, batch_loss, img_t.shape[0], batch_size=batch_size, lr=lr, seed=seed, steps=steps, schedule=cosine,
        progress=progress, desc="surrogate")  # fmt: skip
    return model


@torch.no_grad()
def predict_surrogate(
    model: SurrogateRegressor, images: np.ndarray, conditions: np.ndarray, batch_size: int = 1024
) -> np.ndarray:
    """Surrogate predictions (N, k) float64 for numpy inputs."""
    model.eval()
    device = model.target_mean.device
    out = []
    for start in range(0, len(images), batch_size):
        img = torch.as_tensor(images[start : start + batch_size], dtype=torch.float32, device=device)
        cond = torch.as_tensor(conditions[start : start + batch_size], dtype=torch.float32, device=device)
        out.append(model(img, cond).double().cpu().numpy())
    return np.concatenate(out, axis=0)


def column_correlations(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson correlation per column (k,) between predictions and the true statistic (0 for a constant column)."""
    p = pred - pred.mean(0)
    t = truth - truth.mean(0)
    denom = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    return np.where(denom > 0, (p * t).sum(0) / np.where(denom > 0, denom, 1.0), 0.0)
