"""The adversarial engine on a toy task: exact resume, NaN stop, time budget, interrupts, best.pt, run directory."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time

import pytest
import torch
from torch import nn

from calogan.core.engine import (
    ENGINE_DOMAINS,
    LIFT_BUDGET_OPTION,
    AdversarialEngine,
    AdversarialTask,
    Batch,
    EngineSettings,
    RunDirectory,
    TrainingDiverged,
    budget_stop_message,
    engine_settings,
)
from calogan.core.errors import InputError
from calogan.ecal import train as ecal_train
from calogan.rich import train as rich_train
from calogan.rich.train import current_vocabulary
from calogan.studies.finetune import FinetuneConfig


class ToyGenerator(nn.Module):
    noise_dim = 2

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 2))

    def forward(self, noise, cond):
        return self.net(torch.cat([noise, cond], 1))


class CriticWithCond(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, c):
        out = self.inner(torch.cat([x, c], 1))
        return out.squeeze(1) if out.shape[1] == 1 else out


class ToyTask(AdversarialTask):
    """2-D Gaussians shifted by a 1-D condition; optional per-event weights and hooks for the tests."""

    format = "toy-v1"

    def __init__(self, weighted=False, nan_at=None, scores=None, signal_at=None, critic_out=1):
        torch.manual_seed(0)
        self.generator = ToyGenerator()
        self.critic = CriticWithCond(
            nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, critic_out))
        )
        g = torch.Generator().manual_seed(1)
        self.cond = torch.randn(256, 1, generator=g)
        self.data = torch.randn(256, 2, generator=g) + self.cond
        self.weights = torch.rand(256, generator=g) * 2 if weighted else None
        self.nan_at, self.scores, self.signal_at = nan_at, list(scores or []), signal_at
        self.extra_calls = 0

    def sample(self, rng, batch_size):
        idx = torch.randint(0, len(self.data), (batch_size,), generator=rng)
        w = None if self.weights is None else self.weights[idx]
        return Batch(self.data[idx], self.cond[idx], weight=w, index=idx)

    def critic_view(self, events, cond, step):
        return events

    def extra_generator_losses(self, fake, batch, step):
        bad = self.nan_at is not None and step + 1 >= self.nan_at
        return {"moment": (fake.mean() - batch.real.mean()) ** 2 * (math.nan if bad else 1.0)}

    def after_generator_step(self, fake, batch, step):
        if self.signal_at is not None and step + 1 == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)

    def evaluate(self, generator, step):
        return {"selection": self.scores.pop(0)} if self.scores else None

    def checkpoint_fields(self):
        return {"config": {"toy": True}}


def make(task: ToyTask, run: RunDirectory, deadline: float = math.inf, **settings) -> AdversarialEngine:
    values = dict(steps=8, batch_size=32, n_critic=2, lr_decay=True, log_every=1, checkpoint_every=2, seed=0)
    return AdversarialEngine(
        task,
        EngineSettings(**{**values, **settings}),
        run,
        torch.device("cpu"),
        progress=False,
        deadline=deadline,
    )


def new_run(tmp_path, name) -> RunDirectory:
    return RunDirectory.create(tmp_path / name, {"toy": True})


def state(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    "weighted, objective, gp_every",
    [(False, "wgan-gp", 1), (True, "wgan-gp", 1), (True, "cramer", 1), (False, "wgan-gp", 3)],
)
def test_resume_continues_exactly(tmp_path, weighted, objective, gp_every):
    out = 3 if objective == "cramer" else 1
    kw = dict(objective=objective, gp_every=gp_every)
    straight = make(ToyTask(weighted, critic_out=out), new_run(tmp_path, "a"), **kw)
    straight.fit()
    with pytest.raises(KeyboardInterrupt):  # SIGTERM at step 4: last.pt written there
        make(ToyTask(weighted, signal_at=4, critic_out=out), new_run(tmp_path, "b"), **kw).fit()
    resumed = make(ToyTask(weighted, critic_out=out), RunDirectory.existing(tmp_path / "b"), **kw)
    resumed.load(state(tmp_path / "b" / "checkpoints" / "last.pt"))
    assert resumed.step == 4
    resumed.fit()
    a, b = state(tmp_path / "a/checkpoints/last.pt"), state(tmp_path / "b/checkpoints/last.pt")
    assert a["step"] == b["step"] == 8
    assert a["metrics"]["stop"] == b["metrics"]["stop"] == {"reason": "done", "step": 8, "steps": 8}
    for key in ("generator", "generator_ema", "critic"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name}"
    log = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    drop_time = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in rows]  # noqa: E731
    assert drop_time(log(tmp_path / "a")) == drop_time(log(tmp_path / "b"))


def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    engine = make(ToyTask(nan_at=5), new_run(tmp_path, "nan"))
    with pytest.raises(TrainingDiverged, match="NaN/Inf at step 5"):
        engine.fit()
    last = state(tmp_path / "nan/checkpoints/last.pt")
    assert last["step"] == 4
    assert all(torch.isfinite(t).all() for t in last["generator"].values())


def test_time_budget_ends_with_a_checkpoint(tmp_path):
    outcome = make(ToyTask(), new_run(tmp_path, "t"), deadline=time.perf_counter() - 1).fit()
    assert (outcome.step, outcome.reason) == (1, "budget")
    last = state(tmp_path / "t/checkpoints/last.pt")
    assert last["step"] == 1
    assert last["metrics"]["stop"] == {"reason": "budget", "step": 1, "steps": 8}
    # the run's log says it too, and the message that trainers print names the step reached
    stop = RunDirectory(tmp_path / "t").last_stop()
    assert stop == {"reason": "budget", "step": 1, "steps": 8}
    assert budget_stop_message(stop).startswith("stopped at step 1 of 8 by the time budget")
    assert "--set max_minutes=0" in budget_stop_message(stop)  # calogan.train's spelling, the default
    assert "--max-minutes 0" in budget_stop_message(stop, LIFT_BUDGET_OPTION)  # rich.train, finetune
    assert budget_stop_message({"reason": "done", "step": 8, "steps": 8}) is None


def test_sigterm_writes_a_final_checkpoint_and_raises_keyboard_interrupt(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    engine = make(ToyTask(signal_at=3), new_run(tmp_path, "s"), checkpoint_every=100)
    with pytest.raises(KeyboardInterrupt, match="stopped at step 3"):
        engine.fit()
    assert state(tmp_path / "s/checkpoints/last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored


def test_best_checkpoint_follows_the_selection_value(tmp_path):
    engine = make(ToyTask(scores=[0.1, 0.5, 0.3, 0.2]), new_run(tmp_path, "best"), eval_every=2)
    engine.fit()
    best = state(tmp_path / "best/checkpoints/best.pt")
    assert best["step"] == 4 and best["metrics"]["best_selection"] == 0.5
    assert [h["step"] for h in best["metrics"]["history"]] == [2, 4]
    assert state(tmp_path / "best/checkpoints/last.pt")["metrics"]["best_step"] == 4


def test_keep_every_writes_step_checkpoints(tmp_path):
    make(ToyTask(), new_run(tmp_path, "k"), keep_every=4).fit()
    names = sorted(p.name for p in (tmp_path / "k/checkpoints").iterdir())
    assert names == ["last.pt", "step_000004.pt", "step_000008.pt"]


def test_run_directory_safety(tmp_path):
    run = new_run(tmp_path, "r")
    assert json.loads((run.path / "config.json").read_text()) == {"toy": True}
    with pytest.raises(InputError, match="--overwrite"):
        RunDirectory.create(run.path, {})
    RunDirectory.create(run.path, {"again": 1}, overwrite=True)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not a calogan run"):
        RunDirectory.create(foreign, {}, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        RunDirectory.create(tmp_path / "file", {})
    with pytest.raises(InputError, match="no checkpoint"):
        RunDirectory.existing(tmp_path / "nowhere")
    run.log({"step": 1})
    run.log({"step": 2})
    run.truncate_log(1)
    assert run.log_path.read_text() == '{"step": 1}\n'


def test_cramer_objective_learns_the_conditional_distribution(tmp_path):
    """The Cramér GAN (vector critic, second generated batch) moves a toy generator onto data = c + N(0, 1)."""
    task = ToyTask(critic_out=4)

    def fit_per_column() -> torch.Tensor:
        """(slope on c, mean and std of the rest) of each generated column: real data gives (1, 0, 1)."""
        with torch.no_grad():
            fake = task.generator(torch.randn(len(task.cond), 2), task.cond)
        c = task.cond - task.cond.mean()
        slope = (c * (fake - fake.mean(0))).sum(0) / (c**2).sum()
        rest = fake - slope * task.cond
        return torch.stack([slope, rest.mean(0), rest.std(0)], 1)

    assert (fit_per_column()[:, 0] < 0.5).all()  # the untrained generator barely follows c
    engine = make(task, new_run(tmp_path, "c"), objective="cramer", steps=400, n_critic=1, lr_decay=False,
                  lr_g=3e-3, lr_c=3e-3, checkpoint_every=400, log_every=100)  # fmt: skip
    engine.fit()
    fitted = fit_per_column()
    assert ((fitted[:, 0] - 1).abs() < 0.2).all(), fitted
    assert (fitted[:, 1].abs() < 0.3).all(), fitted
    assert ((fitted[:, 2] > 0.5) & (fitted[:, 2] < 1.5)).all(), fitted
    rows = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert "cramer_surrogate" in rows[-1] and "wasserstein" not in rows[-1]


def test_unknown_objective_is_refused(tmp_path):
    with pytest.raises(InputError, match="objective"):
        make(ToyTask(), new_run(tmp_path, "d"), objective="hinge")


@pytest.mark.parametrize("objective", ["wgan-gp", "cramer"])
def test_generator_step_leaves_the_critic_weights_alone(tmp_path, objective):
    """The generator's loss flows through the critic to the generator only; the critic stays trainable."""
    task = ToyTask(critic_out=3 if objective == "cramer" else 1)
    engine = make(task, new_run(tmp_path, objective), objective=objective)
    for p in task.critic.parameters():
        p.grad = None
    engine.generator_step(task.sample(torch.Generator().manual_seed(0), 16))
    assert all(p.grad is None and p.requires_grad for p in task.critic.parameters())
    assert all(p.grad is not None for p in task.generator.parameters())


def test_lazy_gradient_penalty_runs_on_every_kth_critic_update(tmp_path):
    make(ToyTask(), new_run(tmp_path, "lazy"), n_critic=1, gp_every=3).fit()
    rows = [json.loads(x) for x in (tmp_path / "lazy/metrics.jsonl").read_text().splitlines()]
    penalised = [r["step"] for r in rows if r["gradient_penalty"] > 0]
    assert penalised == [1, 4, 7]  # critic updates 0, 3, 6 (the row of step s logs update s - 1)
    assert all(("grad_norm_mean" in r) == (r["step"] in penalised) for r in rows)


def test_every_trainer_config_is_the_engines_settings_with_its_own_defaults():
    """One declaration of the engine's settings: each trainer inherits every field and overrides defaults only."""
    engine_fields = [f.name for f in dataclasses.fields(EngineSettings)]
    assert set(ENGINE_DOMAINS) <= set(engine_fields)
    configs = (ecal_train.TrainConfig(), rich_train.TrainConfig(), FinetuneConfig())
    for config in configs:
        assert isinstance(config, EngineSettings)
        assert [f.name for f in dataclasses.fields(config)][: len(engine_fields)] == engine_fields
        assert dataclasses.fields(engine_settings(config)) == dataclasses.fields(EngineSettings)
    ecal, rich, finetune = configs
    assert (ecal.eval_every, rich.betas, rich.steps, finetune.ema_decay) == (500, (0.5, 0.9), 2500, 0.99)
    # every engine feature is reachable from ECAL training by the same name
    assert ecal_train.parse_set(["objective=cramer", "lr_decay=true"]) == {
        "objective": "cramer",
        "lr_decay": True,
    }
    cfg = ecal_train.make_config("tiny", objective="cramer", lr_decay=True)
    assert (cfg.objective, cfg.lr_decay) == ("cramer", True)
    with pytest.raises(InputError, match="^objective: unknown 'hinge'"):
        ecal_train.make_config("tiny", objective="hinge")
    with pytest.raises(InputError, match=r"^gp_every: must be an integer >= 1, got 0"):
        ecal_train.make_config("tiny", gp_every=0)


def test_rich_runs_recorded_with_one_betas_pair_read_as_beta1_beta2():
    recorded = {"betas": [0.5, 0.9], "checkpoint_every": 100, "keep_every": 0}
    assert current_vocabulary(recorded) == {
        "beta1": 0.5,
        "beta2": 0.9,
        "checkpoint_every": 100,
        "keep_every": 0,
    }


def test_cramer_objective_trains_a_scalar_critic(tmp_path):
    """A critic with one output (the ECAL critic) also trains with the Cramér objective: |h| is its norm."""
    outcome = make(ToyTask(critic_out=1), new_run(tmp_path, "scalar"), objective="cramer", steps=3).fit()
    assert (outcome.step, outcome.reason) == (3, "done")
    rows = [json.loads(x) for x in (tmp_path / "scalar/metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["cramer_surrogate"]) and math.isfinite(r["loss_generator"]) for r in rows)
