"""The one adversarial training engine behind every calogan trainer (ECAL, fine-tuning, RICH).

A trainer describes *what* is trained as an :class:`AdversarialTask` (models, how a batch is drawn, what
the critic reads, extra generator losses, the periodic evaluation, the fixed checkpoint fields); the engine
owns *how*: critic and generator steps (WGAN-GP, or the Cramér GAN) with optional per-event weights, the
gradient penalty, the EMA generator, atomic checkpoints that resume exactly, the NaN/Inf guard, the wall-clock
budget, Ctrl-C / SIGTERM handling, ``metrics.jsonl``, the progress bar and the gradient all-reduce under
``torchrun``.

Guarantees, the same for every trainer:
- ``last.pt`` is rewritten atomically every ``checkpoint_every`` steps: kill -9 loses at most that many;
- resuming from ``last.pt`` continues exactly (optimisers, EMA, schedules, RNG states, metrics log);
- a NaN/Inf loss stops the run with :class:`TrainingDiverged` before the bad step is saved;
- Ctrl-C or SIGTERM finishes the current step, writes ``last.pt`` and raises Interrupted, a KeyboardInterrupt
  (exit 130 or 143);
- the caller's config is never modified.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from calogan.core import options
from calogan.core.errors import InputError, Interrupted
from calogan.core.gan import EMA, gradient_penalty
from calogan.core.locks import LOCK_NAME, DirectoryLock
from calogan.core.runtime import atomic_torch_save, atomic_write_json, progress_disabled


class TrainingDiverged(RuntimeError):
    """A loss became NaN/Inf; the run stopped and the last good checkpoint was kept."""


# ---------------------------------------------------------------- what a trainer provides


@dataclass
class Batch:
    """One training batch: what the critic reads for real events, their conditions and optional weights."""

    real: torch.Tensor
    cond: torch.Tensor
    weight: torch.Tensor | None = None  # per-event weights (e.g. sWeights), normalised to mean 1 globally
    index: torch.Tensor | None = None  # rows of the training sample, for tasks that look up more per event


class AdversarialTask:
    """What is trained. Subclasses set ``generator`` and ``critic`` and override ``sample``; the rest is optional.

    The generator is called as ``generator(noise, cond)`` with ``noise`` of shape (B, generator.noise_dim).
    """

    generator: nn.Module
    critic: nn.Module
    format: str = "calogan-checkpoint-v1"

    def sample(self, rng: torch.Generator, batch_size: int) -> Batch:
        """Draw a batch of real events (rows chosen with ``rng`` so that a resume repeats them)."""
        raise NotImplementedError

    def critic_view(self, events: torch.Tensor, cond: torch.Tensor, step: int) -> torch.Tensor:
        """What the critic reads of real or generated events (default: the events themselves)."""
        return events

    def extra_generator_losses(self, fake: torch.Tensor, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """Weighted loss terms added to the generator's adversarial loss, by name (logged as loss_<name>)."""
        return {}

    def after_generator_step(self, fake: torch.Tensor, batch: Batch, step: int) -> None:
        """Anything that learns beside the GAN (a surrogate regressor) takes its step here."""

    def evaluate(self, generator: nn.Module, step: int) -> dict | None:
        """Periodic evaluation of the EMA generator; a ``selection`` entry (higher is better) picks best.pt."""
        return None

    def checkpoint_fields(self) -> dict:
        """The fixed part of every checkpoint: config, model config, normalisation, data hash, ..."""
        return {}

    def extra_state(self) -> dict:
        """State beside the GAN that an exact resume needs (e.g. a surrogate and its optimiser)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` returned."""


@dataclass
class EngineSettings:
    """How the engine trains, with the defaults: every trainer's config inherits these fields (same names)."""

    steps: int = 1500  # generator steps
    batch_size: int = 64  # per process
    n_critic: int = 5
    gp_weight: float = 10.0
    gp_every: int = 1  # lazy penalty: on every k-th critic update only, weighted by k (1: every update)
    lr_g: float = 1e-4
    lr_c: float = 1e-4
    beta1: float = 0.0  # Adam's betas, both optimisers
    beta2: float = 0.9
    ema_decay: float = 0.995
    lr_decay: bool = False  # both learning rates fall linearly to 0 at the last step
    objective: str = "wgan-gp"  # one of OBJECTIVES
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int = 100  # last.pt interval in steps
    keep_every: int = 0  # also keep checkpoints/step_NNNNNN.pt every this many steps (0: never)
    max_minutes: float = 0.0  # wall-clock budget (0: none); each trainer says where it counts from
    seed: int = 0

    @property
    def betas(self) -> tuple[float, float]:
        """Adam's (beta1, beta2)."""
        return (self.beta1, self.beta2)


def engine_settings(config: EngineSettings) -> EngineSettings:
    """The engine's part of a trainer's config (a subclass of EngineSettings), as a new object."""
    return EngineSettings(**{f.name: getattr(config, f.name) for f in fields(EngineSettings)})


#: domains of the engine's numeric settings, checked by every trainer: name -> (kind, minimum, minimum
#: inclusive, maximum, maximum inclusive)
ENGINE_DOMAINS: dict[str, tuple] = {
    **{name: ("int", 1, True, None, True) for name in (
        "steps", "batch_size", "n_critic", "gp_every", "log_every", "checkpoint_every",
    )},
    **{name: ("int", 0, True, None, True) for name in ("eval_every", "keep_every", "seed")},
    **{name: ("float", 0.0, False, None, True) for name in ("lr_g", "lr_c")},
    **{name: ("float", 0.0, True, None, True) for name in ("gp_weight", "max_minutes")},
    **{name: ("float", 0.0, True, 1.0, False) for name in ("beta1", "beta2", "ema_decay")},
}  # fmt: skip


def check_domains(config: object, domains: dict[str, tuple], label: Callable[[str], str] = str) -> None:
    """InputError naming ``label(field)`` for the first field of ``config`` outside its domain."""
    for name, (kind, low, low_incl, high, high_incl) in domains.items():
        value = getattr(config, name)
        if kind == "int":
            options.check_int(label(name), value, low, high)
        else:
            options.check_float(label(name), value, low, low_incl, high, high_incl)


def check_engine_settings(config: EngineSettings, label: Callable[[str], str] = str) -> None:
    """Reject engine settings outside :data:`ENGINE_DOMAINS` or an unknown objective, naming ``label(field)``."""
    check_domains(config, ENGINE_DOMAINS, label)
    check_objective(config.objective, label("objective"))


#: adversarial objectives: the critic's score D(x, c) (WGAN-GP), or the Cramér (energy-distance) GAN, whose
#: critic maps an event to a vector h(x, c) compared with a second, independent generated batch
OBJECTIVES = ("wgan-gp", "cramer")


def check_objective(objective: str, option: str = "objective") -> str:
    """The objective if it is one of OBJECTIVES, else InputError naming ``option``."""
    if objective not in OBJECTIVES:
        raise InputError(f"{option}: unknown '{objective}' (use one of {', '.join(OBJECTIVES)})")
    return objective


#: The settings that :func:`add_engine_options` sets (each option's destination is the field of that name).
ENGINE_OPTION_FIELDS = ("objective", "lr_decay", "ema_decay", "gp_every")


def add_engine_options(parser, ema_help: str, objective_help: str = "") -> None:
    """Add the engine's options under one name each (--objective, --lr-decay, --gp-every, --ema-decay), all
    defaulting to None (= the trainer's config), so every trainer's command line reaches them alike."""
    parser.add_argument(
        "--objective",
        type=options.choice(*OBJECTIVES),
        default=None,
        help="wgan-gp (default) | cramer: the Cramér (energy-distance) GAN" + objective_help,
    )
    parser.add_argument(
        "--lr-decay", action="store_true", default=None, help="decay learning rates linearly to 0"
    )
    parser.add_argument(
        "--gp-every",
        type=options.count(1),
        default=None,
        help="lazy gradient penalty: on every k-th critic update only, weighted by k (default 1)",
    )
    parser.add_argument(
        "--ema-decay",
        type=options.finite_float(0.0, maximum=1.0, max_inclusive=False),
        default=None,
        help=f"decay of the generator's moving average ({ema_help})",
    )


#: The settings of how long a run goes and how often it saves: a resumed run may change them.
RUN_LENGTH_FIELDS = ("max_minutes", "checkpoint_every", "keep_every")


def add_run_length_options(parser, budget_help: str) -> None:
    """Add the options that bound a run and keep its checkpoints (--max-minutes, --checkpoint-every,
    --keep-every), defaulting to None (= the trainer's config), for the trainers whose options are flags."""
    parser.add_argument(
        "--max-minutes",
        type=options.nonnegative_float,
        default=None,
        help=f"wall-clock budget in minutes, 0 = none ({budget_help})",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=options.count(1),
        default=None,
        help="rewrite checkpoints/last.pt every N steps (default 100)",
    )
    parser.add_argument(
        "--keep-every",
        type=options.count(0),
        default=None,
        help="also keep checkpoints/step_NNNNNN.pt every N steps (0: never, the default)",
    )


@dataclass
class Outcome:
    """How a run ended: the step reached, why it stopped, and the evaluation history."""

    step: int
    reason: str  # "done" | "budget"
    metrics: dict = field(default_factory=dict)


# ---------------------------------------------------------------- run directory


class RunDirectory:
    """A training run's folder: config.json, metrics.jsonl, checkpoints/{last,best,step_N}.pt.

    :meth:`create` and :meth:`existing` take the folder's lock (:mod:`calogan.core.locks`) for the process
    that trains (rank 0 under ``torchrun``), so a second writer of the same run (``--overwrite`` or
    ``--resume`` while it trains) is refused with one line naming the holder; :meth:`release` (or leaving a
    ``with`` block, or the end of the process) gives it back.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.log_path = self.path / "metrics.jsonl"
        self.lock = DirectoryLock(self.path, "run directory")

    def _acquire(self) -> None:
        if dist_info()[0] == 0:
            self.lock.acquire()

    def release(self) -> None:
        """Give the run directory's lock back (other processes may then write it)."""
        self.lock.release()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @classmethod
    def create(cls, path: str | os.PathLike, config: dict, overwrite: bool = False) -> RunDirectory:
        """A fresh run directory holding config.json; an existing one is replaced only with ``overwrite``."""
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise InputError(f"{run.path}: exists and is not a directory (choose another run directory)")
        existed = run.path.is_dir()
        run._acquire()
        try:
            contents = [p for p in run.path.iterdir() if p.name != LOCK_NAME] if existed else []
            if contents:
                if not overwrite:
                    raise InputError(
                        f"{run.path}: run directory exists (pass --resume {run.path} or --overwrite)"
                    )
                if not (run.path / "config.json").exists():
                    raise InputError(
                        f"{run.path}: exists and is not a calogan run directory; refusing to overwrite it"
                    )
                for item in contents:  # everything but the lock, which this process holds
                    if item.is_dir() and not item.is_symlink():
                        shutil.rmtree(item)
                    else:
                        item.unlink()
            run.checkpoints.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run.path / "config.json", config)
        except OSError as exc:
            run.release()
            raise InputError(f"{run.path}: cannot write the run directory ({exc.strerror or exc})") from None
        except BaseException:
            run.release()
            raise
        return run

    @classmethod
    def existing(cls, path: str | os.PathLike) -> RunDirectory:
        """The run directory of a run to resume; it must hold checkpoints/last.pt."""
        run = cls(path)
        if not run.last.exists():
            raise InputError(
                f"{run.last}: no checkpoint to resume from (is {run.path} a calogan run directory?)"
            )
        run._acquire()
        return run

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    def save(self, name: str, checkpoint: dict) -> None:
        atomic_torch_save(self.checkpoints / name, checkpoint)

    def log(self, record: dict) -> None:
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def last_stop(self) -> dict | None:
        """How the latest training of this run ended (the ``stop`` field of its last log line), or None."""
        if not self.log_path.exists():
            return None
        for line in reversed(self.log_path.read_text().splitlines()):
            if line.strip():
                return json.loads(line).get("stop")
        return None

    def truncate_log(self, step: int) -> None:
        """Drop log lines after ``step`` (a killed run may have logged past its last checkpoint) and old stops."""
        if not self.log_path.exists():
            return
        records = [json.loads(ln) for ln in self.log_path.read_text().splitlines() if ln.strip()]
        # a resumed run goes on past the stop of its earlier part, so the log keeps no ``stop`` field
        keep = [{k: v for k, v in r.items() if k != "stop"} for r in records if r.get("step", 0) <= step]
        self.log_path.write_text("".join(json.dumps(r) + "\n" for r in keep))


# ---------------------------------------------------------------- distributed helpers


def dist_info() -> tuple[int, int]:
    """(rank, world size) from the torchrun environment; (0, 1) when not distributed."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _allreduce_grads(model: nn.Module, world: int) -> None:
    """Average gradients over processes (an explicit all_reduce also works with the penalty's double backward)."""
    if world <= 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
            p.grad.div_(world)


def _broadcast_params(model: nn.Module, world: int) -> None:
    if world <= 1:
        return
    for t in list(model.parameters()) + list(model.buffers()):
        torch.distributed.broadcast(t.data, src=0)


#: How each command line lifts the time budget (calogan.train sets config fields with --set).
LIFT_BUDGET_SET, LIFT_BUDGET_OPTION = "--set max_minutes=0", "--max-minutes 0"


def budget_stop_message(stop: dict | None, lift: str = LIFT_BUDGET_SET) -> str | None:
    """The one line that says a run was cut short by its time budget (and how to lift it), or None."""
    if not stop or stop.get("reason") != "budget":
        return None
    return (
        f"stopped at step {stop['step']} of {stop['steps']} by the time budget "
        f"(lift it with {lift}, or continue with --resume RUN_DIR)"
    )


def _rank0_decides(flag: bool, world: int, device: torch.device) -> bool:
    """Rank 0's value of a stop flag, for every process (all stop at the same step)."""
    if world <= 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.broadcast(value, src=0)
    return bool(value.item() > 0)


# ---------------------------------------------------------------- interrupts


class _StopRequest:
    """Turns SIGINT / SIGTERM into a flag checked once per step, so the step in flight finishes cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set in the main thread
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):  # noqa: ARG001
            if self.signal is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.signal = signum

        for s in previous:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


# ---------------------------------------------------------------- the engine


class AdversarialEngine:
    """WGAN-GP training of an :class:`AdversarialTask` into a :class:`RunDirectory`."""

    def __init__(
        self,
        task: AdversarialTask,
        settings: EngineSettings,
        run: RunDirectory,
        device: torch.device,
        progress: bool = True,
        deadline: float = math.inf,
        description: str = "train",
        lift_budget: str = LIFT_BUDGET_SET,
        line_prefix: str = "",
    ):
        """Train with the engine fields of ``settings`` (a trainer's config) until ``deadline`` (perf_counter);
        ``lift_budget`` is how the trainer's command line lifts the budget, named when it stops a run;
        ``line_prefix`` starts every printed line (which run it is, where several print at once)."""
        self.task, self.run, self.device = task, run, device
        self.settings = s = engine_settings(settings)
        self.deadline, self.description, self.lift_budget = deadline, description, lift_budget
        self.line_prefix = line_prefix
        self.rank, self.world = dist_info()
        check_objective(s.objective)
        _broadcast_params(task.generator, self.world)
        _broadcast_params(task.critic, self.world)
        self.ema = EMA(task.generator, s.ema_decay)
        self.opt_g = torch.optim.Adam(task.generator.parameters(), lr=s.lr_g, betas=s.betas)
        self.opt_c = torch.optim.Adam(task.critic.parameters(), lr=s.lr_c, betas=s.betas)
        decay = _linear_decay(s.steps) if s.lr_decay else _constant
        self.schedules = [torch.optim.lr_scheduler.LambdaLR(o, decay) for o in (self.opt_g, self.opt_c)]
        self.sampler = torch.Generator().manual_seed(s.seed * 1000 + self.rank)
        self.step = 0
        # critic updates so far: the lazy penalty's clock, set from the step in fit()
        self.critic_updates = 0
        self.metrics: dict = {"best_selection": None, "best_step": None, "history": []}
        self.progress = progress and self.rank == 0

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self) -> dict:
        """Everything an exact resume needs, loadable with ``torch.load(weights_only=True)``."""
        rng = {"torch": torch.get_rng_state(), "sampler": self.sampler.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": self.task.format,
            **self.task.checkpoint_fields(),
            "generator": self.task.generator.state_dict(),
            "generator_ema": self.ema.state_dict(),
            "critic": self.task.critic.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_c": self.opt_c.state_dict(),
            "schedules": [sch.state_dict() for sch in self.schedules],
            "extra_state": self.task.extra_state(),
            "step": self.step,
            "metrics": json.loads(json.dumps(self.metrics)),
            "rng": rng,
        }

    def start_from(self, checkpoint: dict) -> None:
        """Begin from another run's weights (generator, its EMA, critic) with fresh optimisers at step 0."""
        self.task.generator.load_state_dict(checkpoint["generator"])
        self.task.critic.load_state_dict(checkpoint["critic"])
        self.ema.load_state_dict(checkpoint["generator_ema"])

    def load(self, checkpoint: dict) -> None:
        """Continue from a checkpoint written by :meth:`checkpoint` (weights, optimisers, RNG, metrics)."""
        self.task.generator.load_state_dict(checkpoint["generator"])
        self.ema.load_state_dict(checkpoint["generator_ema"])
        self.task.critic.load_state_dict(checkpoint["critic"])
        self.opt_g.load_state_dict(checkpoint["opt_g"])
        self.opt_c.load_state_dict(checkpoint["opt_c"])
        for sch, state in zip(self.schedules, checkpoint.get("schedules") or []):
            sch.load_state_dict(state)
        self.task.load_extra_state(checkpoint.get("extra_state") or {})
        self.step = int(checkpoint["step"])
        self.metrics = {**self.metrics, **(checkpoint.get("metrics") or {})}
        if self.world == 1:
            torch.set_rng_state(checkpoint["rng"]["torch"])
            self.sampler.set_state(checkpoint["rng"]["sampler"])
            if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        else:  # per-rank RNG streams are not stored: reseed deterministically from the step
            torch.manual_seed(self.settings.seed + 7919 * self.step + self.rank)
            self.sampler.manual_seed(self.settings.seed * 1000 + self.rank + 104729 * self.step)
        if self.rank == 0:
            self.run.truncate_log(self.step)

    def _save(self, *names: str) -> None:
        if self.rank == 0:
            checkpoint = self.checkpoint()
            for name in names:
                self.run.save(name, checkpoint)

    # ------------------------------------------------------------ the two steps

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.task.generator.noise_dim, device=self.device)

    def _cramer_score(self, reference: torch.Tensor, cond: torch.Tensor):
        """The Cramér GAN's critic score (Bellemare et al. 2017), f(x) = ||h(x) - h(x'_g)|| - ||h(x)||, with
        ``reference`` the critic's view of a second generated batch x'_g on the same conditions."""
        critic = self.task.critic
        h_reference = critic(reference, cond)

        def cramer_score(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            h = critic(x, c)
            return _norm(h - h_reference) - _norm(h)

        return cramer_score

    def critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One critic update: -(E_w[f(real)] - E_w[f(fake)]) + gradient penalty on f, where f is the critic
        itself (WGAN-GP) or :meth:`_cramer_score`."""
        task, w, cond = self.task, batch.weight, batch.cond
        cramer = self.settings.objective == "cramer"
        with torch.no_grad():
            fake = task.generator(self._noise(len(cond)), cond)
            reference = task.generator(self._noise(len(cond)), cond) if cramer else None
        f_real = task.critic_view(batch.real, cond, self.step)
        f_fake = task.critic_view(fake, cond, self.step)
        score = task.critic
        if reference is not None:
            score = self._cramer_score(task.critic_view(reference, cond, self.step), cond)
        distance = _mean(score(f_real, cond), w) - _mean(score(f_fake, cond), w)
        sample_weight = None if w is None else w.abs()
        every = self.settings.gp_every
        penalised = self.critic_updates % every == 0
        if penalised:
            gp, norms = gradient_penalty(
                score, f_real, f_fake, cond, self.settings.gp_weight * every, sample_weight
            )
        else:  # lazy penalty: skipped here (the costly double backward), k times stronger on the k-th update
            gp, norms = torch.zeros((), device=distance.device), None
        loss = gp - distance
        self.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        _allreduce_grads(task.critic, self.world)
        self.opt_c.step()
        name = "cramer_surrogate" if cramer else "wasserstein"
        losses = {"loss_critic": loss.detach(), name: distance.detach(), "gradient_penalty": gp.detach()}
        if norms is not None:
            losses["grad_norm_mean"] = norms.mean()
        return losses

    def generator_step(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Gradients of the adversarial loss plus the task's extra terms: (losses, generated batch).

        WGAN-GP: -E_w[D(fake)]. Cramér GAN: the energy distance in the critic's space,
        E_w[||h(real) - h(fake)|| + ||h(real) - h(fake')|| - ||h(fake) - h(fake')||], with a second batch fake'.
        The optimiser step is left to the caller, which applies it only when every loss is finite.
        """
        task, cond = self.task, batch.cond
        with _frozen(task.critic):  # the critic's weights need no gradient here: skip that part of backward
            fake = task.generator(self._noise(len(cond)), cond)
            h_fake = task.critic(task.critic_view(fake, cond, self.step), cond)
            if self.settings.objective == "cramer":
                reference = task.generator(self._noise(len(cond)), cond)
                h_reference = task.critic(task.critic_view(reference, cond, self.step), cond)
                with torch.no_grad():  # does not depend on the generator
                    h_real = task.critic(task.critic_view(batch.real, cond, self.step), cond)
                energy = _norm(h_real - h_fake) + _norm(h_real - h_reference) - _norm(h_fake - h_reference)
                adversarial = _mean(energy, batch.weight)
            else:
                adversarial = -_mean(h_fake, batch.weight)
            extra = task.extra_generator_losses(fake, batch, self.step)
            loss = adversarial + sum(extra.values(), torch.zeros((), device=adversarial.device))
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
        _allreduce_grads(task.generator, self.world)
        losses = {"loss_generator": loss.detach(), **{f"loss_{k}": v.detach() for k, v in extra.items()}}
        return losses, fake.detach()

    # ------------------------------------------------------------ the loop

    def fit(self) -> Outcome:
        """Train to ``settings.steps`` (from the current step); evaluate, log and checkpoint on the way."""
        s, task, run = self.settings, self.task, self.run
        bar = tqdm(total=s.steps, initial=self.step, desc=self.description, dynamic_ncols=True,
                   disable=progress_disabled(self.progress))  # fmt: skip
        timer = _Throughput()
        reason = "done"
        self.metrics.pop("stop", None)  # a resumed run's earlier stop no longer describes it
        task.generator.train()
        task.critic.train()
        with _StopRequest().installed() as stop:
            while self.step < s.steps:
                # phase 1: critic steps
                for k in range(s.n_critic):
                    self.critic_updates = self.step * s.n_critic + k  # a function of the step: resume-exact
                    critic_losses = self.critic_step(task.sample(self.sampler, s.batch_size))
                # phase 2: generator step, applied only when every loss is finite
                batch = task.sample(self.sampler, s.batch_size)
                gen_losses, fake = self.generator_step(batch)
                losses = {**critic_losses, **gen_losses}
                self._check_finite(losses)
                self.opt_g.step()
                self.ema.update(task.generator)
                task.after_generator_step(fake, batch, self.step)
                for schedule in self.schedules:
                    schedule.step()
                self.step += 1
                timer.count(s.batch_size * (s.n_critic + 1) * self.world)
                # phase 3: stop conditions, decided by rank 0 for every process
                over_budget = _rank0_decides(time.perf_counter() >= self.deadline, self.world, self.device)
                interrupted = _rank0_decides(bool(stop), self.world, self.device)
                last_step = self.step >= s.steps or over_budget or interrupted
                if last_step:  # why the run ended, in the checkpoint: a budget stop is not a finished run
                    why = "done" if self.step >= s.steps else ("budget" if over_budget else "interrupted")
                    self.metrics["stop"] = {"reason": why, "step": self.step, "steps": s.steps}
                # phase 4: evaluate, log, then checkpoint (rank 0 writes); the log line goes first, so a
                # kill between the two leaves lines past last.pt, which a resume drops, and never a gap
                record = self._log_record(losses, timer, bar, force=last_step)
                if last_step and record is not None:
                    record["stop"] = self.metrics["stop"]
                saves = ["last.pt"] if interrupted or self.step % s.checkpoint_every == 0 else []
                if not interrupted and ((s.eval_every and self.step % s.eval_every == 0) or last_step):
                    record, saves = self._evaluate(record, bar)
                if s.keep_every and self.step % s.keep_every == 0:
                    saves.append(f"step_{self.step:06d}.pt")
                if record is not None and self.rank == 0:
                    run.log(record)
                self._save(*saves)
                bar.update(1)
                if over_budget and self.step < s.steps:
                    bar.write(self.line_prefix + budget_stop_message(self.metrics["stop"], self.lift_budget))
                    reason = "budget"
                    break
                if interrupted:
                    bar.close()
                    raise Interrupted(f"stopped at step {self.step}; resume from {run.last}", stop.signal)
        bar.close()
        if self.world > 1:
            torch.distributed.barrier()
        return Outcome(self.step, reason, self.metrics)

    def _check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        values = torch.stack([v.float().reshape(()) for v in losses.values()])
        if not bool(torch.isfinite(values).all()):
            bad = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items() if not torch.isfinite(v).all())
            raise TrainingDiverged(
                f"loss became NaN/Inf at step {self.step + 1} ({bad}); stopped, last good checkpoint kept at "
                f"{self.run.last} (try lower learning rates or a larger gradient-penalty weight)"
            )

    def _log_record(self, losses: dict, timer: _Throughput, bar, force: bool) -> dict | None:
        if self.rank != 0 or not (self.step % self.settings.log_every == 0 or force):
            return None
        values = {k: float(v) for k, v in losses.items()}
        bar.set_postfix(c=f"{values['loss_critic']:.3f}", g=f"{values['loss_generator']:.3f}")
        return {"step": self.step, **values, "images_per_s": timer.rate(), "time": time.time()}

    def _evaluate(self, record: dict | None, bar) -> tuple[dict | None, list[str]]:
        """Run the task's evaluation on the EMA generator: (log record, checkpoints to write: last, best if better)."""
        result = None
        if self.rank == 0:
            self.ema.model.eval()
            result = self.task.evaluate(self.ema.model, self.step)
        if result is None:
            return record, ["last.pt"]
        self.metrics["history"].append({"step": self.step, **result})
        self.metrics["last"] = result
        selection = result.get("selection")
        best = self.metrics.get("best_selection")
        better = selection is not None and (best is None or selection > best)
        if better:
            self.metrics["best_selection"], self.metrics["best_step"] = selection, self.step
        summary = ", ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float))
        bar.write(f"{self.line_prefix}step {self.step}: {summary}")
        record = {
            **(record or {"step": self.step, "time": time.time()}),
            **{f"eval_{k}": v for k, v in result.items()},
        }
        return record, ["last.pt", "best.pt"] if better else ["last.pt"]


def _mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Batch mean, or the weighted mean sum(w v) / B with weights normalised to mean 1 over the whole sample.

    Normalising globally rather than by the batch's weight sum keeps sWeighted batches stable: a batch sum of
    signed weights can come close to zero.
    """
    return values.mean() if weight is None else (weight * values).mean()


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Turn off the gradients of a model's parameters for a while (inputs' gradients still flow through it)."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def _norm(vectors: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row (of a scalar critic's output: |h|), smoothed at 0 to keep gradients finite."""
    return torch.sqrt(vectors.reshape(len(vectors), -1).pow(2).sum(1) + 1e-12)


def _constant(step: int) -> float:
    return 1.0


def _linear_decay(total: int):
    return lambda step: max(0.0, 1.0 - step / total)


class _Throughput:
    """Events per second since the last call to :meth:`rate`."""

    def __init__(self) -> None:
        self.start, self.events = time.perf_counter(), 0

    def count(self, events: int) -> None:
        self.events += events

    def rate(self) -> float:
        now = time.perf_counter()
        value = self.events / max(now - self.start, 1e-9)
        self.start, self.events = now, 0
        return value
