"""Train one RICH PID GAN (WGAN-GP, sWeighted losses, EMA): python -m calogan.rich.train --particle pion --data DIR.

Real events enter every loss with their sWeight (negative weights included): the critic estimates
E_w[D(real)] - E_w[D(fake)], where the fakes are generated on the same conditions and inherit the same
weights (so the fake term also follows the signal's kinematic distribution). Weighted means are normalised
by the *global* mean weight rather than the batch sum, because a batch sum of sWeights can approach zero.
Inputs (log P, eta, nTracks) and outputs (5 DLLs) are mapped to normal distributions with sklearn's
QuantileTransformer; its quantile arrays are stored as tensors in the checkpoint (no pickle). By default the
outputs are DLLe - DLLmu, DLLmu, DLLk, DLLp, DLLbt (``emu`` basis: e and mu are near-degenerate at high
momentum); ``adjacent`` also models DLLp - DLLk and DLLbt - DLLp (exact zeros below threshold); see
calogan.rich.data.DLL_BASES. Values tied in the training sample are spread uniformly over their CDF step at
every batch, so the generator learns a continuous target that maps back to the exact ties.
By default the losses use the sWeights' cross-fitted conditional expectation E[sWeight | kinematics, DLLs]
(``calogan.rich.weights``: same expectation, non-negative, less noise); ``--weights sweights`` uses the raw
sWeights. Tracks without RICH information (-999) are not shown to the GAN; their weighted rate per (P, eta) bin is
stored and reproduced at generation time.
With ``--holdout N`` (standard and full presets) N tracks of the training file are kept out of training; every
``--eval-every`` steps the EMA generator is scored on them by the weighted classifier two-sample test of
calogan.rich.evaluate, and checkpoints/best.pt keeps the step with the lowest held-out AUC (the game oscillates,
so the last step is often not the best one).
``--residual``, ``--cond-every-layer`` and ``--critic-features`` change the networks' structure
(calogan.rich.models; all off by default, stored in the checkpoint's model_config). ``--objective cramer``
trains with the Cramér (energy-distance) GAN objective instead of WGAN-GP (calogan.core.engine).
``--particle all --workers N`` trains N particles at a time in parallel processes, the CPU threads shared out
(calogan.core.parallel): these networks are too small to use many threads well.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from calogan.core import options
from calogan.core.engine import (
    LIFT_BUDGET_OPTION,
    RUN_LENGTH_FIELDS,
    AdversarialEngine,
    AdversarialTask,
    Batch,
    EngineSettings,
    TrainingDiverged,
    add_engine_options,
    add_run_length_options,
    check_engine_settings,
)
from calogan.core.errors import InputError, Interrupted
from calogan.core.fit import seeded
from calogan.core.parallel import Job, JobsStopped, run_jobs, sharing, threads_per_job
from calogan.core.rundir import Requested, RunSetup, check_run_path, deadline, run_path, with_defaults
from calogan.core.runtime import run_cli, seed_everything, select_device
from calogan.ecal.data import sha256_file
from calogan.rich import PARTICLES
from calogan.rich.data import (
    QuantileNormal,
    RichSample,
    check_dll_basis,
    check_particle,
    fit_no_rich_table,
    model_inputs,
    normal_from_uniform,
    to_basis,
)
from calogan.rich.evaluate import classifier_test
from calogan.rich.io import add_source_options, make_source, require_per
from calogan.rich.models import (
    CHECKPOINT_FORMAT,
    N_CONDITIONS,
    STRUCTURE_OPTIONS,
    RichModel,
    TiePatternHead,
    build_models,
    check_rich_checkpoint,
)
from calogan.rich.momentum import MomentumScaling, momentum_sampling
from calogan.rich.ties import TIE_PAIRS, TieModel, fit_pattern_head, fit_patterns, masked_columns
from calogan.rich.weights import WEIGHT_MODES, expected_sweights, n_effective

PRESETS: dict[str, dict] = {
    "tiny": {"steps": 40, "batch_size": 256, "hidden": 32, "depth": 2, "noise_dim": 16, "n_critic": 2},
    "quick": {
        "steps": 2500,
        "batch_size": 2048,
        "hidden": 128,
        "depth": 3,
        "noise_dim": 32,
        "n_critic": 3,
        "max_minutes": 4.5,  # keeps the whole command under the 5-minute target on a slower 2-core CPU
    },
    "standard": {  # the quick networks for 8x its steps, a slower EMA, best.pt on held-out tracks, ties, P scaling
        "steps": 20000,
        "batch_size": 2048,
        "hidden": 128,
        "depth": 3,
        "noise_dim": 32,
        "n_critic": 3,
        "ema_decay": 0.999,
        "holdout": 8000,
        "eval_every": 500,
        "tie_patterns": True,
        "momentum_scaling": True,
        "max_minutes": 29.0,  # a guard: about 21 minutes on an idle 2-core CPU, at most 30 per particle
    },
    "full": {
        "steps": 30000,
        "batch_size": 2048,
        "hidden": 256,
        "depth": 5,
        "noise_dim": 64,
        "n_critic": 5,
        "ema_decay": 0.999,
        "holdout": 8000,
        "eval_every": 1000,
        "tie_patterns": True,
        "momentum_scaling": True,
    },
}


@dataclass
class TrainConfig(EngineSettings):
    """Everything that defines a RICH training run (stored in config.json and in the checkpoint)."""

    # the engine's settings (EngineSettings), with this trainer's defaults where they differ
    steps: int = 2500
    batch_size: int = 2048
    n_critic: int = 3
    lr_g: float = 2e-4
    lr_c: float = 2e-4
    beta1: float = 0.5
    log_every: int = 100
    # the RICH task's settings
    particle: str = "pion"
    data: str = "data/rich"
    # the training sample in a file with other column names or P in MeV (calogan.rich.io): the ROOT tree,
    # the --columns mapping (contract column=name,...) and the unit of P
    tree: str | None = None
    columns: str = ""
    p_unit: str = "GeV"
    preset: str = "quick"
    run_dir: str | None = None
    device: str = "auto"
    hidden: int = 128
    depth: int = 3
    noise_dim: int = 32
    dll_basis: str = "emu"
    weights: str = "expected"
    # model structure (calogan.rich.models; all off: the plain MLPs of the first checkpoints)
    residual: bool = False  # pre-activation skip connections in generator and critic
    cond_every_layer: bool = False  # the generator reads the conditions again in every hidden layer
    critic_features: bool = False  # the critic also reads sin/cos features of the conditions
    # with objective cramer (calogan.core.engine.OBJECTIVES) the critic maps each track to a critic_dim-vector
    # (the energy-distance GAN of LHCb's first RICH models)
    critic_dim: int = 64
    # exact ties between neighbouring DLL columns as a discrete part of the model (calogan.rich.ties)
    tie_patterns: bool = False
    # tracks with RICH information kept out of training (0: none); the EMA generator is scored on them every
    # eval_every steps and at the end, and checkpoints/best.pt keeps the lowest held-out classifier AUC
    holdout: int = 0
    # batches draw each training track with probability ~ (tracks in its log-P bin)^-momentum_balance: 0 as
    # recorded, 1 flat in log P. The target p(DLL | P, eta, nTracks) is the same; the thin high-momentum tail
    # (where the DLLs narrow fastest and a harder spectrum puts its tracks) gets more of the critic's attention
    momentum_balance: float = 0.0
    # standardise each output column by its median and spread in log-P bins before the quantile transform
    # (calogan.rich.momentum.MomentumScaling): the narrow high-momentum responses get their share of the normal range
    momentum_scaling: bool = False
    progress: bool = True

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> TrainConfig:
        if preset not in PRESETS:
            raise InputError(f"--preset: unknown preset '{preset}' (use {', '.join(PRESETS)})")
        values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(preset=preset, **values)


class RichTask(AdversarialTask):
    """One particle's DLLs given its kinematics, in quantile-normal space, each real event with its weight."""

    format = CHECKPOINT_FORMAT

    def __init__(self, config: TrainConfig, device: torch.device):
        self.config, self.device = config, device
        sample = training_source(config).load(config.particle, "train")
        self.path = sample.path
        rich = sample.subset(sample.has_rich)
        if len(rich) < 10 + config.holdout or rich.weights.sum() <= 0:
            raise InputError(
                f"{self.path}: too few tracks with RICH information to train on"
                f" ({len(rich)}, of which --holdout keeps {config.holdout} out)"
            )
        if config.weights == "expected":
            features = np.column_stack([model_inputs(rich.inputs), rich.dlls])
            all_weights = expected_sweights(features, rich.weights, seed=config.seed)
        else:
            all_weights = rich.weights.astype(np.float64)
        # the held-out tracks carry the training weights too: the selection measure then has less noise
        order = np.random.default_rng(config.seed).permutation(len(rich))
        held, kept = np.sort(order[: config.holdout]), np.sort(order[config.holdout :])
        self.holdout = RichSample(rich.inputs[held], rich.dlls[held], all_weights[held], self.path)
        rich, train_weights = rich.subset(kept), all_weights[kept]
        inputs = model_inputs(rich.inputs)  # log P, eta, nTracks of the training tracks
        self.qt_in = QuantileNormal.fit(inputs, seed=config.seed)
        outputs = to_basis(rich.dlls, config.dll_basis)
        self.scaling = None
        if config.momentum_scaling:
            self.scaling = MomentumScaling.fit(inputs[:, 0], outputs)
            outputs = self.scaling.standardise(outputs, inputs[:, 0])
        self.qt_out = QuantileNormal.fit(outputs, seed=config.seed)
        self.cond = torch.from_numpy(self.qt_in.transform(inputs)).to(device)
        cdf_low, cdf_high = self.qt_out.uniform_bounds(outputs)  # equal except for tied values
        self.has_ties = bool((cdf_high > cdf_low).any())
        self.cdf_low = torch.from_numpy(cdf_low).to(device)
        self.cdf_step = torch.from_numpy(cdf_high).to(device) - self.cdf_low
        if train_weights.sum() <= 0:
            raise InputError(f"{self.path}: the {config.weights} training weights sum to <= 0")
        # the discrete part (calogan.rich.ties): a pattern classifier, and the one-hot pattern as a condition
        self.ties, self.keep = None, None
        patterns = np.zeros((1, len(TIE_PAIRS)), bool)
        if config.tie_patterns:
            patterns, labels = fit_patterns(rich.dlls)
        if len(patterns) > 1:
            head = seeded(lambda: TiePatternHead(len(patterns)), config.seed)
            fit_pattern_head(head, self.cond, labels, train_weights, seed=config.seed)
            self.ties = TieModel(head, patterns).to(device)
            one_hot = torch.from_numpy(np.eye(len(patterns), dtype=np.float32)[labels]).to(device)
            self.cond = torch.cat([self.cond, one_hot], 1)
            self.keep = torch.from_numpy(masked_columns(patterns).astype(np.float32)).to(device)
        self.weight_info = {
            "mode": config.weights,
            "sum_sweights": float(rich.weights.sum()),
            "sum_train_weights": float(train_weights.sum()),
            "n_effective_sweights": n_effective(rich.weights),
            "n_effective_train_weights": n_effective(train_weights),
            "n_rich_tracks": len(order),
            "holdout_tracks": config.holdout,
        }
        self.draw = momentum_sampling(inputs[:, 0], config.momentum_balance)
        w = torch.from_numpy(train_weights.astype(np.float32)).to(device)
        self.weights = w / w.mean()  # global normalisation: weighted means are sum(w v) / batch size
        self.model_config = {
            "noise_dim": config.noise_dim,
            "hidden": config.hidden,
            "depth": config.depth,
            **{k: bool(getattr(config, k)) for k in STRUCTURE_OPTIONS},
            "critic_out": config.critic_dim if config.objective == "cramer" else 1,
            "tie_patterns": patterns.tolist() if self.ties is not None else [],
        }
        generator, critic = build_models(self.model_config)
        self.generator, self.critic = generator.to(device), critic.to(device)

        def tensors(qn: QuantileNormal) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(v) for k, v in qn.to_arrays().items()}

        self.fixed = {  # the parts of every checkpoint that do not change during training
            "particle": config.particle,
            "config": dataclasses.asdict(config),
            "model_config": self.model_config,
            "qt_in": tensors(self.qt_in),
            "qt_out": tensors(self.qt_out),
            "no_rich_table": torch.from_numpy(fit_no_rich_table(sample)),
            "data_sha256": sha256_file(self.path),
            "training_weights": self.weight_info,
        }
        if self.scaling is not None:
            self.fixed["momentum_scaling"] = {
                k: torch.from_numpy(v) for k, v in self.scaling.to_arrays().items()
            }
        if self.ties is not None:
            self.fixed["tie_head"] = {k: v.detach().cpu() for k, v in self.ties.head.state_dict().items()}

    def sample(self, rng: torch.Generator, batch_size: int) -> Batch:
        if self.draw is None:
            idx = torch.randint(0, len(self.weights), (batch_size,), generator=rng).to(self.device)
        else:
            idx = torch.multinomial(self.draw, batch_size, replacement=True, generator=rng).to(self.device)
        u = self.cdf_low[idx]
        if self.has_ties:  # a fresh position inside each tied value's CDF step
            u = u + torch.rand(u.shape, generator=rng, dtype=u.dtype).to(self.device) * self.cdf_step[idx]
        return Batch(normal_from_uniform(u).float(), self.cond[idx], weight=self.weights[idx], index=idx)

    def critic_view(self, events: torch.Tensor, cond: torch.Tensor, step: int) -> torch.Tensor:
        """With tie patterns, the tied copies are hidden (zeroed) in real and generated events alike."""
        if self.keep is None:
            return events
        return events * (cond[:, N_CONDITIONS:] @ self.keep)

    def evaluate(self, generator: torch.nn.Module, step: int) -> dict | None:
        """Weighted classifier AUC of the held-out tracks against the generator's DLLs on their conditions."""
        if not len(self.holdout):
            return None
        model = RichModel(generator, self.qt_in, self.qt_out, None, self.config.particle, {},
                          self.config.dll_basis, self.ties, self.scaling)  # fmt: skip
        generated = model.generate(self.holdout.inputs, seed=self.config.seed, no_rich=False)
        auc = classifier_test(self.holdout, generated, seed=self.config.seed)["auc"]
        return {"holdout_auc": auc, "selection": -auc}

    def checkpoint_fields(self) -> dict:
        return self.fixed


#: the default interval of last.pt (TrainConfig.checkpoint_every), the one of runs recorded before keep_every
CHECKPOINT_INTERVAL = 100


def default_run_dir(config: TrainConfig) -> Path:
    """The run directory: ``config.run_dir``, else runs/rich_{particle}_{preset}."""
    return run_path(
        config.run_dir, "" if config.run_dir else f"rich_{config.particle}_{config.preset}", "--particle"
    )


def current_vocabulary(settings: Mapping) -> dict:
    """Recorded settings in today's checkpoint vocabulary: runs recorded before ``keep_every`` existed used
    ``checkpoint_every`` for the kept step_N files (now ``keep_every``) and rewrote last.pt every 100 steps;
    older runs also recorded Adam's ``betas`` as one pair (now ``beta1`` and ``beta2``)."""
    settings = dict(settings)
    if "checkpoint_every" in settings and "keep_every" not in settings:
        settings["keep_every"] = settings["checkpoint_every"]
        settings["checkpoint_every"] = CHECKPOINT_INTERVAL
    if "betas" in settings:  # recorded before the engine's beta1 and beta2 were shared by every trainer
        settings["beta1"], settings["beta2"] = settings.pop("betas")
    return settings


def recorded_settings(recorded: Mapping) -> dict:
    """A run's config.json in today's vocabulary, with the defaults of the fields added since it was recorded."""
    return with_defaults(TrainConfig, current_vocabulary(recorded))


def _resumable(checkpoint: dict, path: Path) -> dict:
    """``checkpoint`` when it is a complete RICH training checkpoint with its config (else InputError)."""
    check_rich_checkpoint(checkpoint, path, ema=False)  # every field, shape and dtype
    if not isinstance(checkpoint.get("config"), dict):
        raise InputError(f"{path}: checkpoint field config: missing or not a dict")
    return checkpoint


def training_source(config: TrainConfig):
    """Where the run's training sample is read (calogan.rich.io.SampleSource)."""
    return make_source(config.data, config.tree, config.columns, config.p_unit)


def validate_config(config: TrainConfig) -> None:
    """Reject impossible settings with one line naming the option."""
    training_source(config).require(check_particle(config.particle), "train")
    check_dll_basis(config.dll_basis)
    if config.weights not in WEIGHT_MODES:
        raise InputError(f"--weights: unknown mode '{config.weights}' (use one of {', '.join(WEIGHT_MODES)})")
    check_engine_settings(config, option_name)
    for name in ("hidden", "noise_dim", "critic_dim", "depth"):
        high = options.MAX_DEPTH if name == "depth" else options.MAX_WIDTH
        options.check_int(option_name(name), getattr(config, name), 1, high)
    if config.holdout < 0:
        raise InputError(f"--holdout must be >= 0, got {config.holdout}")
    if config.eval_every and not config.holdout:
        raise InputError("--eval-every needs held-out tracks to score on: set --holdout N (N > 0)")
    if not 0 <= config.momentum_balance <= 1:  # also rejects NaN
        raise InputError(f"--momentum-balance must be in [0, 1], got {config.momentum_balance}")


def option_name(field: str) -> str:
    """The command-line option that sets a TrainConfig field (--lr sets both learning rates)."""
    return "--lr" if field in ("lr_g", "lr_c") else f"--{field.replace('_', '-')}"


def train(
    config: TrainConfig, overwrite: bool = False, resume: bool = False, requested: Requested | None = None
) -> Path:
    """Train one particle's GAN into run_dir/{config.json, metrics.jsonl, checkpoints/last.pt (+ best.pt)}; returns run_dir.

    ``resume`` continues the run in ``config.run_dir`` from its last.pt (its saved config wins, except the
    total steps, where ``config.steps`` 0 keeps the run's, the time budget and the checkpoint cadence); an
    existing run directory is replaced only with ``overwrite``.
    ``requested`` ({option: (field, value)}, the options given on the command line) is refused on resume
    where it differs from the saved run: a resumed run cannot change its settings.
    """
    start = time.perf_counter()  # the budget counts from here: data loading and the weight fit included
    with RunSetup(
        default_run_dir(config), resume=resume, overwrite=overwrite, allowed=RESUME_CHANGES
    ) as setup:
        saved = None
        if resume:
            saved = setup.resume(_resumable, requested, recorded=recorded_settings)
            known = {f.name for f in dataclasses.fields(TrainConfig)}
            stored = {k: v for k, v in current_vocabulary(saved["config"]).items() if k in known}
            # how long and how often to checkpoint: the caller's
            length = {k: getattr(config, k) for k in RUN_LENGTH_FIELDS}
            config = dataclasses.replace(TrainConfig(**stored), steps=config.steps or stored["steps"],
                                         progress=config.progress, device=config.device, **length)  # fmt: skip
        validate_config(config)
        device = select_device(config.device)
        seed_everything(config.seed)
        task = RichTask(config, device)
        setup.check_same_data(saved, task.fixed["data_sha256"], task.path)
        run = setup.start(dataclasses.asdict(config))
        budget, description = deadline(config.max_minutes, start), f"rich {config.particle}"
        engine = AdversarialEngine(
            task,
            config,
            run,
            device,
            config.progress,
            budget,
            description,
            lift_budget=LIFT_BUDGET_OPTION,
            line_prefix=f"{config.particle} ",
        )
        if saved is not None:
            engine.load(saved)
        engine.fit()
    return run.path


#: The options a resumed run may change (every other setting is the run's own).
RESUME_CHANGES = "--steps, --max-minutes, --checkpoint-every, --keep-every and --device"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI wrapper of train()."""
    ap = options.ArgumentParser(prog="python -m calogan.rich.train", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--particle",
        required=True,
        help=f"one of {', '.join(PARTICLES)}, or all (one after another, or --workers)",
    )
    ap.add_argument(
        "--workers",
        type=options.count(1, len(PARTICLES)),
        default=1,
        help="with --particle all: particles trained at a time, each in its own process with an equal share of "
        "the CPU threads (default 1)",
    )
    ap.add_argument(
        "--data",
        required=True,
        help="folder with rich_{particle}_train.npz (or .root), or a .npz/.root file (may hold {particle})",
    )
    add_source_options(ap)
    ap.add_argument("--preset", default="quick", help="tiny | quick | standard | full")
    ap.add_argument(
        "--run-dir", default=None, help="run directory (with --particle all: one folder per particle in it)"
    )
    ap.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from last.pt (--particle all: RUN_DIR/{particle} each); "
        "the older --run-dir RUN_DIR --resume is deprecated",
    )
    ap.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    ap.add_argument("--seed", type=options.seed, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--steps", type=options.count(1), default=None, help="override the preset's number of generator steps"
    )
    ap.add_argument("--batch-size", type=options.count(1), default=None)
    add_run_length_options(ap, "quick preset: 4.5, lifted when --steps is given")
    ap.add_argument(
        "--holdout",
        type=options.count(0),
        default=None,
        help="tracks of the training file kept out to choose best.pt (standard/full: 8000; 0: none)",
    )
    ap.add_argument(
        "--eval-every",
        type=options.count(0),
        default=None,
        help="score the EMA generator on the held-out tracks every N steps (0: only at the end)",
    )
    ap.add_argument(
        "--lr", type=options.positive_float, default=None, help="learning rate of generator and critic"
    )
    ap.add_argument(
        "--weights", default=None, help="expected (default: E[sWeight | x], cross-fitted) | sweights"
    )
    ap.add_argument(
        "--dll-basis",
        default=None,
        help="emu (default: DLLe-DLLmu, rest raw) | adjacent (also p-K, bt-p) | raw",
    )
    ap.add_argument(
        "--residual",
        action="store_true",
        default=None,
        help="pre-activation skip connections in generator and critic",
    )
    ap.add_argument(
        "--cond-every-layer",
        action="store_true",
        default=None,
        help="the generator reads the conditions again in every hidden layer",
    )
    ap.add_argument(
        "--critic-features",
        action="store_true",
        default=None,
        help="the critic also reads sin/cos features of the conditions",
    )
    ap.add_argument(
        "--tie-patterns",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="model exact ties between neighbouring DLLs (below threshold) as a discrete part (standard/full: on)",
    )
    ap.add_argument(
        "--momentum-balance",
        type=options.fraction,
        default=None,
        help="draw training tracks with probability ~ (tracks in their log-P bin)^-A: 0 as recorded, 1 flat in log P",
    )
    ap.add_argument(
        "--momentum-scaling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="standardise each DLL column by its median and spread in bins of log P before the quantile transform",
    )
    add_engine_options(
        ap,
        ema_help="used for evaluation and export; quick 0.995, standard 0.999",
        objective_help=", critic output of --critic-dim",
    )
    ap.add_argument(
        "--critic-dim",
        type=options.count(1, options.MAX_WIDTH),
        default=None,
        help="the Cramér critic's output size (default 64)",
    )
    args = ap.parse_args(argv)
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if isinstance(args.resume, str):  # --resume RUN_DIR; a bare --resume (deprecated) resumes --run-dir
        if args.run_dir is not None and Path(args.run_dir) != Path(args.resume):
            raise InputError(f"--resume {args.resume}: names another folder than --run-dir {args.run_dir}")
        args.run_dir = args.resume
    particles = list(PARTICLES) if args.particle == "all" else [check_particle(args.particle)]
    if args.workers > 1 and len(particles) == 1:
        raise InputError("--workers trains several particles at a time: it needs --particle all")
    source = make_source(args.data, args.tree, args.columns, args.p_unit)
    if len(particles) > 1:
        require_per(source, "{particle}", "--particle all trains each particle on its own sample")
    configs = []
    for particle in particles:
        run_dir = args.run_dir
        if run_dir and args.particle == "all":
            run_dir = str(Path(run_dir) / particle)
        configs.append(TrainConfig.from_preset(
            args.preset, particle=particle, data=args.data, run_dir=run_dir, seed=args.seed, device=args.device,
            tree=source.tree, columns=source.columns.spec(), p_unit=source.columns.p_unit,
            steps=args.steps, batch_size=args.batch_size, dll_basis=args.dll_basis, weights=args.weights,
            lr_decay=args.lr_decay, gp_every=args.gp_every, residual=args.residual, cond_every_layer=args.cond_every_layer,
            critic_features=args.critic_features, objective=args.objective, critic_dim=args.critic_dim,
            ema_decay=args.ema_decay, holdout=args.holdout, eval_every=args.eval_every,
            tie_patterns=args.tie_patterns, momentum_balance=args.momentum_balance,
            momentum_scaling=args.momentum_scaling,
            checkpoint_every=args.checkpoint_every, keep_every=args.keep_every, lr_g=args.lr, lr_c=args.lr,
            # an explicit --steps means that many steps: the preset's time budget only guards its own step count
            max_minutes=args.max_minutes if args.max_minutes is not None else (0.0 if args.steps else None),
        ))  # fmt: skip
    for config in configs:  # every option and output checked before any training starts
        # train() applies the run-directory reuse rules (--resume, --overwrite)
        check_run_path(default_run_dir(config), "--run-dir", inputs=[config.data])
        validate_config(config)
        if len(configs) > 1:  # every particle's sample is read and checked before the first one trains
            training_source(config).load(config.particle, "train")
    # the options given: a resumed run refuses those that differ from its saved settings
    given = {f"--{name.replace('_', '-')}": (name, getattr(args, name)) for name in RESUME_FIXED}
    given["--lr"] = ("lr_g", args.lr)
    requested = {option: item for option, item in given.items() if item[1] is not None}
    jobs = []
    for config in configs:
        # --particle all resumes the particles that have a run and starts the others
        started = (default_run_dir(config) / "checkpoints" / "last.pt").exists()
        resume = bool(args.resume) and (started or len(configs) == 1)
        if resume and args.steps is None:  # without --steps a resumed run goes on to its own total
            config = dataclasses.replace(config, steps=0)
        jobs.append((config, resume))
    if args.workers > 1:
        return train_in_parallel(jobs, args.workers, args.overwrite, requested)
    finished: list[str] = []
    for config, resume in jobs:
        try:
            run_dir = train(config, overwrite=args.overwrite, resume=resume, requested=requested)
        except (InputError, KeyboardInterrupt) as exc:
            if len(configs) == 1:
                raise
            left = [c.particle for c in configs[len(finished) :]]
            note = f" (finished and kept: {', '.join(finished) or 'none'}; not finished: {', '.join(left)})"
            if isinstance(exc, InputError):
                raise InputError(f"{exc}{note}") from None
            raise Interrupted(f"{exc}{note}", getattr(exc, "signum", 2)) from None
        finished.append(config.particle)
        print(f"checkpoint: {run_dir / 'checkpoints' / 'last.pt'}")
    return 0


def train_job(fields: dict, overwrite: bool, resume: bool, requested: Requested | None) -> Path:
    """One particle's training in a worker process (calogan.core.parallel): plain-data arguments, no progress bar."""
    return train(
        TrainConfig(**{**fields, "progress": False}), overwrite=overwrite, resume=resume, requested=requested
    )


def train_in_parallel(
    jobs: list[tuple[TrainConfig, bool]], workers: int, overwrite: bool, requested: Requested | None
) -> int:
    """Train (config, resume) jobs ``workers`` at a time; a stop says which particles finished, stopped or never started.

    With more particles at a time than CPU threads, each particle's time budget (``max_minutes``) is multiplied
    by how many share a thread, so that a preset's guard does not stop a run that is only sharing the CPU.
    """
    threads = threads_per_job(workers)
    names = [config.particle for config, _ in jobs]
    print(f"training {', '.join(names)}: {workers} at a time, {threads} CPU thread(s) each")
    stretch = sharing(min(workers, len(jobs)), threads)
    if stretch > 1:  # more particles than threads: each runs slower, so its time budget stretches alike
        jobs = [(dataclasses.replace(c, max_minutes=c.max_minutes * stretch), resume) for c, resume in jobs]
        budgets = sorted({c.max_minutes for c, _ in jobs if c.max_minutes})
        if budgets:
            print(f"{stretch:g} particles share each thread: time budget {', '.join(f'{b:g}' for b in budgets)} "
                  "min per particle")  # fmt: skip
    work = [
        Job(
            config.particle,
            "calogan.rich.train:train_job",
            (dataclasses.asdict(config), overwrite, resume, requested),
        )
        for config, resume in jobs
    ]

    def done(name: str, run_dir: Path) -> None:
        print(f"{name} finished; checkpoint: {Path(run_dir) / 'checkpoints' / 'last.pt'}")

    try:
        run_jobs(work, workers, on_done=done, threads=threads)
    except JobsStopped as exc:
        note = (
            f"(finished and kept: {', '.join(exc.finished) or 'none'}; stopped with last.pt, continue with --resume: "
            f"{', '.join(exc.stopped) or 'none'}; not started: {', '.join(exc.not_started) or 'none'})"
        )
        cause, where = exc.cause, f"{exc.failed}: " if exc.failed else ""
        if isinstance(cause, KeyboardInterrupt):
            raise Interrupted(f"{where}{cause} {note}".strip(), getattr(cause, "signum", 2)) from None
        if isinstance(cause, (InputError, TrainingDiverged)):
            raise type(cause)(f"{where}{cause} {note}") from None
        raise RuntimeError(f"{where}{type(cause).__name__}: {cause} {note}") from None
    return 0


#: Options that a resumed run cannot change (the TrainConfig fields of the same name).
RESUME_FIXED = (
    "batch_size", "dll_basis", "weights", "lr_decay", "gp_every", "residual", "cond_every_layer", "critic_features",
    "objective", "critic_dim", "ema_decay", "holdout", "eval_every", "tie_patterns", "momentum_balance",
    "momentum_scaling",
)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
