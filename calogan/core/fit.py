"""The one supervised training loop: seeded mini-batches, Adam, an optional schedule and best-epoch selection.

The classifier two-sample tests, the image embedder, the fine-tuning surrogate and the RICH tie-pattern head all
train through :func:`fit`. Seeding never touches the global torch RNG: :func:`seeded` builds a model under a
forked RNG, and :func:`fit` draws its batches from its own ``torch.Generator`` on the CPU, so one seed gives the
same weights and the same batches on every device and leaves the caller's random state as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from calogan.core.runtime import progress_disabled

#: ``schedule(optimizer, total_steps)``: the learning-rate schedule, stepped after every optimiser step.
Schedule = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` under torch.manual_seed(seed) without touching the global RNG: the same seed, the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@dataclass(frozen=True)
class FitResult:
    """How a fit ended: the kept epoch (1-based; 0 without selection), epochs and steps run, the last batch loss."""

    best_epoch: int
    epochs: int
    steps: int
    last_loss: float


def fit(
    model: nn.Module,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    rows: int | torch.Tensor,
    *,
    batch_size: int,
    lr: float,
    seed: int,
    epochs: int | None = None,
    steps: int | None = None,
    weight_decay: float = 0.0,
    schedule: Schedule | None = None,
    drop_last: bool = False,
    score: Callable[[], float] | None = None,
    min_delta: float = 0.0,
    patience: int | None = None,
    stop_at: float | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "fit",
) -> FitResult:
    """Train ``model`` with Adam on ``batch_loss(index)``, the mean loss of the training rows in ``index``.

    ``rows`` are the training rows (a count n means 0..n-1); the indices reach ``batch_loss`` on ``device``
    (default: the rows' device). Either ``epochs``, each a fresh permutation cut into batches (the last partial
    batch dropped when ``drop_last``, but never the only one), or ``steps``, each ``batch_size`` rows drawn with
    replacement. The order comes from a CPU generator seeded with ``seed``. ``score()`` (epochs only; lower is
    better, run in eval mode without gradients) judges each epoch: an improvement must beat the best by more than
    ``min_delta``; the best epoch's weights are restored at the end; ``patience`` epochs without improvement, or a
    best score at or below ``stop_at``, end training early. The model is left in eval mode.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("fit: give exactly one of epochs and steps")
    if score is None and (patience is not None or stop_at is not None):
        raise ValueError("fit: patience and stop_at need a score")
    if steps is not None and score is not None:
        raise ValueError("fit: a score judges epochs; train by epochs to use one")
    index = torch.arange(rows) if isinstance(rows, int) else rows
    device = index.device if device is None else torch.device(device)
    index = index.to(device)
    n = len(index)
    if n == 0 or batch_size < 1:
        raise ValueError(
            f"fit: need training rows and a batch size >= 1 (got {n} rows, batch size {batch_size})"
        )
    per_epoch = max(1, n // batch_size) if drop_last else math.ceil(n / batch_size)
    total = per_epoch * epochs if epochs is not None else steps
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = schedule(optimizer, total) if schedule is not None else None
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=total, desc=desc, unit="step", disable=progress_disabled(progress))
    state = {"step": 0, "loss": None}

    def step(idx: torch.Tensor) -> None:
        loss = batch_loss(idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        state["step"] += 1
        state["loss"] = loss.detach()
        bar.update(1)
        if not bar.disable:
            bar.set_postfix(loss=f"{float(loss):.3f}")

    best, best_state, best_epoch, bad, epoch = math.inf, None, 0, 0, 0
    try:
        if steps is not None:
            model.train()
            for _ in range(steps):
                draw = torch.randint(0, n, (min(batch_size, n),), generator=generator)
                step(index[draw.to(device)])
        else:
            for epoch in range(1, epochs + 1):
                model.train()
                order = index[torch.randperm(n, generator=generator).to(device)]
                for k in range(per_epoch):
                    step(order[k * batch_size : (k + 1) * batch_size])
                if score is None:
                    continue
                model.eval()
                with torch.no_grad():
                    value = float(score())
                if value < best - min_delta:
                    best, best_epoch, bad = value, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad += 1
                if (patience is not None and bad >= patience) or (stop_at is not None and best <= stop_at):
                    break
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    last = float(state["loss"]) if state["loss"] is not None else math.nan
    return FitResult(best_epoch=best_epoch, epochs=epoch, steps=state["step"], last_loss=last)
