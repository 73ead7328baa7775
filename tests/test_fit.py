"""The supervised training loop: seeding without global state, epochs or steps, best-epoch selection."""

from __future__ import annotations

import pytest
import torch

from calogan.core.fit import fit, seeded


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 4, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(200, generator=g)


def _train(seed: int, **kwargs) -> tuple[torch.nn.Module, object]:
    x, y = _problem()
    model = seeded(lambda: torch.nn.Linear(4, 1), seed)
    result = fit(model, lambda idx: ((model(x[idx]).squeeze(1) - y[idx]) ** 2).mean(), len(x),
                 batch_size=32, lr=5e-2, seed=seed, **kwargs)  # fmt: skip
    return model, result


def test_seeded_runs_repeat_and_leave_the_global_rng_alone():
    before = torch.get_rng_state()
    a, ra = _train(3, epochs=4)
    b, rb = _train(3, steps=10)
    assert torch.equal(torch.get_rng_state(), before)
    again, _ = _train(3, epochs=4)
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), again.state_dict().values()))
    assert (ra.epochs, ra.steps, ra.best_epoch) == (4, 4 * 7, 0) and rb.steps == 10
    assert not a.training and ra.last_loss < 1.0


def test_drop_last_keeps_one_batch_on_small_samples():
    _, result = _train(0, epochs=2, drop_last=True)
    assert result.steps == 2 * (200 // 32)
    x, y = _problem()
    model = torch.nn.Linear(4, 1)
    sizes = []

    def loss(idx: torch.Tensor) -> torch.Tensor:
        sizes.append(len(idx))
        return ((model(x[idx]).squeeze(1) - y[idx]) ** 2).mean()

    fit(model, loss, torch.arange(20), batch_size=64, lr=1e-3, seed=0, epochs=2, drop_last=True)
    assert sizes == [20, 20]


def test_best_epoch_is_kept_and_patience_stops():
    scores = iter([3.0, 1.0, 2.0, 2.5, 0.5, 0.1])
    snapshots = []
    x, y = _problem()
    model = torch.nn.Linear(4, 1)

    def score() -> float:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    result = fit(model, lambda idx: ((model(x[idx]).squeeze(1) - y[idx]) ** 2).mean(), len(x), batch_size=50,
                 lr=1e-2, seed=0, epochs=6, score=score, patience=2)  # fmt: skip
    assert (result.best_epoch, result.epochs) == (2, 4)
    assert all(torch.equal(v, snapshots[1][k]) for k, v in model.state_dict().items())
    model2 = torch.nn.Linear(4, 1)
    stop = fit(model2, lambda idx: model2(x[idx]).pow(2).mean(), len(x), batch_size=50, lr=1e-3, seed=0,
               epochs=5, score=lambda: 0.0, stop_at=0.0)  # fmt: skip
    assert (stop.best_epoch, stop.epochs) == (1, 1)


def test_bad_arguments_are_refused():
    model = torch.nn.Linear(1, 1)
    loss = lambda idx: model(idx.float().unsqueeze(1)).mean()  # noqa: E731
    with pytest.raises(ValueError, match="exactly one"):
        fit(model, loss, 10, batch_size=2, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="need a score"):
        fit(model, loss, 10, batch_size=2, lr=1e-3, seed=0, epochs=1, patience=1)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, loss, 10, batch_size=2, lr=1e-3, seed=0, steps=1, score=lambda: 0.0)
    with pytest.raises(ValueError, match="rows"):
        fit(model, loss, 0, batch_size=2, lr=1e-3, seed=0, steps=1)
