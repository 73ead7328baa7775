"""Train the conditional WGAN-GP on data_train.npz: ``python -m calogan.train``.

The ECAL shower task on the shared adversarial engine (:mod:`calogan.core.engine`): the critic reads
log energy fractions (and optionally sqrt fractions for the core) with the conditions, an optional
energy-response term pulls the per-|p| response towards the real one, and the EMA generator is evaluated
periodically on a hold-out slice of the *training* file. ``best.pt`` is the checkpoint with the lowest
two-sample distance on that hold-out (see :func:`evaluate_generator`); the competition score is logged
beside it. Multi-process data parallel under ``torchrun`` (gloo on CPU, nccl on GPU), rank 0 writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from calogan.core import options
from calogan.core.engine import (
    ENGINE_DOMAINS,
    AdversarialEngine,
    AdversarialTask,
    Batch,
    EngineSettings,
    RunDirectory,
    TrainingDiverged,
    budget_stop_message,
    check_domains,
    check_objective,
    dist_info,
)
from calogan.core.errors import InputError
from calogan.core.gan import binned_wasserstein, energy_score
from calogan.core.rundir import Requested, RunSetup, check_run_path, deadline, run_path, with_defaults
from calogan.core.runtime import keep_freed_memory, run_cli, seed_everything, select_device
from calogan.ecal.data import (
    ENERGY_UNITS_PER_GEV,
    CaloData,
    ConditionNormalizer,
    load_npz,
    require_file,
    sha256_file,
    split_path,
)
from calogan.ecal.models import (
    CHECKPOINT_FORMAT,
    MODELS,
    build_critic,
    build_generator,
    check_checkpoint,
    critic_features,
    log_energy_ratio,
    model_config,
)
from calogan.ecal.physics import momentum_bins, momentum_quantile_edges
from calogan.ecal.predict import generate
from calogan.ecal.soft_stats import radial_profile, rank_profile, shower_summary
from calogan.metrics.embedder import load_embedder, train_embedder
from calogan.metrics.plots import plot_showers, plot_statistics
from calogan.metrics.scoring import EvalSettings, score_images
from calogan.metrics.two_sample import holdout_distance

__all__ = ["PRESETS", "TrainConfig", "TrainingDiverged", "make_config", "parse_set", "train", "main"]


@dataclass
class TrainConfig(EngineSettings):
    """Every knob of a training run (the engine's settings and the shower task's); ``--set key=value`` any."""

    # the engine's settings (EngineSettings), with this trainer's defaults where they differ
    eval_every: int = 500
    # the shower task's settings
    preset: str = "quick"
    data: str = "data"
    run_dir: str = ""  # default runs/<name>
    name: str = ""  # default: the preset name
    model: str = "shower"  # shower | baseline2019
    instance_noise: float = 0.0  # std of Gaussian noise on the critic's inputs, annealed linearly to 0
    # energy-response term: weight of a per-|p|-bin 1-D Wasserstein distance between log(E/165|p|) of the
    # generated and the real showers of the same batch (same conditions); 0 = pure WGAN-GP
    response_weight: float = 0.0
    response_bins: int = 4
    response_power: int = 1  # 1: Wasserstein-1; 2: squared Wasserstein-2 (pulls harder on the tails)
    # shower-statistics term: weight of the per-|p|-bin W1 between the differentiable shower summaries
    # (asymmetries, widths, 20 sparsity levels, core fractions; calogan.ecal.soft_stats) of generated and real
    # showers of the same batch, each column in units of its real standard deviation
    stats_weight: float = 0.0
    # cell-spectrum term: weight of the per-|p|-bin W1 between the log energy fractions of the k-th hottest cell
    # (fixed ranks, calogan.ecal.soft_stats.rank_profile) of generated and real showers, in real-std units
    rank_weight: float = 0.0
    # radial term: weight of the per-|p|-bin W1 between the log energy fractions in rings around each shower's
    # energy centroid (calogan.ecal.soft_stats.radial_profile) of generated and real showers, in real-std units
    radial_weight: float = 0.0
    # conditional energy-score terms: a second generated shower per real one (same conditions) and the
    # energy score (calogan.core.gan.energy_score), a proper scoring rule for the distribution at each
    # condition; on log(E/(scale |p|)) in units of its real std within its |p| bin, and on the shower summary
    energy_score_weight: float = 0.0
    summary_score_weight: float = 0.0
    # architecture
    noise_dim: int = 32
    latent: int = 64
    gen_channels: int = 16
    cell_noise: bool = True
    gen_pad: int = 0  # shower shape spread over the window + gen_pad cells per side: leakage from geometry
    noise_modulation: bool = False  # per-cell noise amplitude from the cell's features (core vs tails)
    logit_noise: bool = False  # per-cell noise on each cell's log energy (log-normal fluctuations)
    cell_gates: bool = False  # each cell: hit or background log energy, chosen by a relaxed Bernoulli draw
    hard_gates: bool = False  # with cell_gates: an exact 0/1 draw (straight-through gradient)
    critic_channels: int = 16
    critic_hidden: int = 128
    critic_core: bool = False  # extra critic channel sqrt(energy fraction) that makes the shower core visible
    critic_summary: bool = False  # the critic's head also reads the shower summary and the cell rank profile
    # data and evaluation
    max_train: int = 0  # 0 = all events of the training file (minus the hold-out)
    holdout: int = 2000  # events of data_train.npz kept out of training, used for the periodic evaluation
    eval_clusters: int = 20
    eval_runs: int = 10
    eval_embedder: bool = True  # use DATA/embedder.safetensors for AUC_img when it exists
    plots: bool = True
    tensorboard: bool = True
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0 = torch's default)
    extra: dict = field(default_factory=dict)


PRESETS: dict[str, dict] = {
    "tiny": dict(
        steps=6, batch_size=16, n_critic=2, holdout=200, eval_every=3, eval_clusters=5, eval_runs=2,
        checkpoint_every=2, log_every=1, noise_dim=8, latent=16, gen_channels=4, critic_channels=4,
        critic_hidden=16, plots=False, tensorboard=False, eval_embedder=False, threads=1,
    ),
    # quick: every choice measured on this preset (docs/training.md), and checked on the robustness suite of
    # benchmarks/bench_robustness.py (six data configurations, docs/results.md)
    "quick": dict(
        steps=3000, batch_size=64, holdout=2000, eval_every=500, eval_clusters=20, eval_runs=10, max_minutes=11.0,
        n_critic=1, lr_g=2e-4, lr_c=4e-4, gp_every=4,  # TTUR, one critic step, lazy penalty
        critic_core=True, response_weight=5.0, stats_weight=5.0, gen_pad=4, noise_modulation=True, cell_gates=True,
        energy_score_weight=2.0, summary_score_weight=2.0,
    ),
    # long: the quick recipe at batch 128 with EMA 0.999, sized to end within 2 hours of an idle 2-core CPU
    "long": dict(
        steps=20000, batch_size=128, holdout=5000, eval_every=2500, eval_clusters=50, eval_runs=10,
        max_minutes=115.0, checkpoint_every=500, n_critic=1, lr_g=2e-4, lr_c=4e-4, gp_every=4, ema_decay=0.999,
        critic_core=True, response_weight=5.0, stats_weight=5.0, gen_pad=4, noise_modulation=True, cell_gates=True,
        energy_score_weight=2.0, summary_score_weight=2.0,
    ),
    # full: the quick recipe scaled up for one GPU (batch, widths, steps)
    "full": dict(
        steps=30000, batch_size=256, holdout=5000, eval_every=2000, eval_clusters=50, eval_runs=20,
        checkpoint_every=500, n_critic=1, lr_g=2e-4, lr_c=4e-4, gp_every=4, ema_decay=0.999,
        noise_dim=64, latent=128, gen_channels=32, critic_channels=32, critic_hidden=256,
        critic_core=True, response_weight=5.0, stats_weight=5.0, gen_pad=4, noise_modulation=True, cell_gates=True,
        energy_score_weight=2.0, summary_score_weight=2.0,
    ),
}  # fmt: skip


# ---------------------------------------------------------------- config handling


def make_config(preset: str = "quick", **overrides) -> TrainConfig:
    """The config of a preset with field overrides applied (unknown preset/field -> InputError)."""
    if preset not in PRESETS:
        raise InputError(f"--preset: unknown preset '{preset}' (use {', '.join(PRESETS)})")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(f"unknown config field(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    cfg = TrainConfig(preset=preset, **values)
    validate_config(cfg)
    return cfg


def parse_set(items: Sequence[str]) -> dict:
    """Parse ``key=value`` strings into typed config overrides (types from TrainConfig)."""
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise InputError(f"--set: expected KEY=VALUE with KEY a config field, got '{item}'")
        kind = types[key]
        try:
            if kind == "bool":
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(raw)
                out[key] = raw.lower() in ("1", "true", "yes")
            elif kind == "int":
                out[key] = int(raw)
            elif kind == "float":
                out[key] = float(raw)
                if not math.isfinite(out[key]):
                    raise ValueError(raw)
            elif kind == "str":
                out[key] = raw
            else:
                raise ValueError("not settable")
        except ValueError:
            raise InputError(
                f"--set {key}: bad value '{raw}' (expected {'a finite number' if kind == 'float' else kind})"
            ) from None
    return out


#: domains of the numeric config fields, the engine's (ENGINE_DOMAINS) and the shower task's:
#: name -> (kind, minimum, minimum inclusive, maximum, maximum inclusive)
FIELD_DOMAINS: dict[str, tuple] = {
    **ENGINE_DOMAINS,
    **{name: ("int", 1, True, None, True) for name in ("response_bins", "eval_runs")},
    # network widths: bounded, so that a typo is one line, not an allocation failure
    **{name: ("int", 1, True, options.MAX_WIDTH, True) for name in (
        "noise_dim", "latent", "gen_channels", "critic_channels", "critic_hidden",
    )},
    **{name: ("int", 0, True, None, True) for name in ("max_train", "gen_pad", "threads")},
    "holdout": ("int", 10, True, None, True),
    "eval_clusters": ("int", 2, True, None, True),
    "response_power": ("int", 1, True, 2, True),
    **{name: ("float", 0.0, True, None, True) for name in (
        "instance_noise", "response_weight", "stats_weight", "rank_weight", "radial_weight",
        "energy_score_weight", "summary_score_weight",
    )},
}  # fmt: skip


def validate_config(cfg: TrainConfig) -> None:
    """Reject impossible settings with one clear line naming the field (before anything is written)."""
    if cfg.model not in MODELS:
        raise InputError(f"--model: unknown model '{cfg.model}' (use {' or '.join(MODELS)})")
    run_path(cfg.run_dir, cfg.name or cfg.preset)  # a --name stays under runs/
    check_domains(cfg, FIELD_DOMAINS)
    check_objective(cfg.objective)
    if cfg.hard_gates and not cfg.cell_gates:
        raise InputError("hard_gates: needs cell_gates=true (it makes the cell gates' draw exact)")
    if cfg.eval_clusters > cfg.holdout:
        raise InputError(
            f"eval_clusters: must be an integer in [2, holdout = {cfg.holdout}], got {cfg.eval_clusters}"
        )


def resumed_config(saved: dict, requested: TrainConfig) -> TrainConfig:
    """The saved run's config, with the requested total steps, device and data folder (a new object)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    return dataclasses.replace(
        cfg, steps=requested.steps or cfg.steps, device=requested.device, data=requested.data or cfg.data
    )


def response_loss(
    fake: torch.Tensor, real: torch.Tensor, cond: torch.Tensor, edges: torch.Tensor, power: int = 1
) -> torch.Tensor:
    """Per-|p|-bin 1-D Wasserstein distance of log(E/165|p|) between generated and real showers (same rows).

    The critic sees the energy ratio too, but on a small CPU budget the generator's per-energy response and
    resolution converge slowly; this direct term (an energy-conservation loss in the spirit of the CHEP 2018
    LHCb calorimeter GAN) pulls them towards the real distribution in each momentum bin. power=2 uses the
    squared W2 distance, which bounds the difference of the spreads.
    """
    bins = momentum_bins(cond, edges)
    return binned_wasserstein(log_energy_ratio(fake, cond), log_energy_ratio(real, cond), bins, power=power)


# ---------------------------------------------------------------- evaluation


def evaluate_generator(
    generator, holdout: CaloData, cfg: TrainConfig, embedder, device, plots_dir: Path | None, step: int
) -> dict:
    """Score the generator on the held-out training events (reduced K/R); optionally write plots."""
    gen = generate(generator, holdout, batch_size=512, seed=cfg.seed, device=device)
    settings = EvalSettings(clusters=cfg.eval_clusters, runs=cfg.eval_runs, seed=1337)
    scored = score_images(gen, holdout, embedder, settings)
    result = scored.summary
    if plots_dir is not None:
        try:
            plots_dir.mkdir(parents=True, exist_ok=True)
            plot_showers(holdout.energy, gen, plots_dir / f"showers_step{step:06d}.png")
            plot_statistics(scored.stats_true, scored.stats_gen, plots_dir / f"statistics_step{step:06d}.png")
        except Exception as exc:  # noqa: BLE001 - plots must never kill a training run
            print(f"warning: plotting failed at step {step}: {exc}", file=sys.stderr)
    out = {k: result.get(k) for k in ("score", "auc_img", "auc_phys", "score_std", "ceiling")}
    out["standardised_score"] = result.get("standardised", {}).get("score")
    ceiling = out.get("ceiling") or 0.0
    fraction = out["score"] / ceiling if ceiling > 0 else None
    # without an embedder the score is AUC_phys alone: reported under its own name, never as the fraction
    out["fraction_of_ceiling" if embedder is not None else "fraction_of_ceiling_phys_only"] = fraction
    out |= holdout_distance(gen, holdout, scored.stats_gen, scored.stats_true)
    out["selection"] = -out["w1_scaled_mean"]  # best.pt: the smallest mean standardised W1 (docs/training.md)
    return out


def _load_embedder(cfg: TrainConfig, device, run_dir: Path):
    """The data's embedder for the periodic score's AUC_img: DATA/embedder.safetensors, trained when absent.

    Without it the periodic score would be AUC_phys alone, half of the competition score. It is cached in the
    data folder (where ``evaluate`` looks for it), or in the run directory when that folder is read-only.
    """
    if not cfg.eval_embedder:
        return None
    path = Path(cfg.data) / "embedder.safetensors"
    if not path.exists() and not os.access(cfg.data, os.W_OK):
        path = run_dir / "embedder.safetensors"
    if path.exists():
        return load_embedder(path, sha256_file(split_path(cfg.data, "train")), device=device)
    print(f"note: no embedder at {path}; training one for the periodic score (cached there)", file=sys.stderr)
    return train_embedder(cfg.data, out=path, device=device, progress=True).to(device)


# ---------------------------------------------------------------- the shower task


class ShowerTask(AdversarialTask):
    """ECAL showers: real images and conditions of the training split, critic on log-fraction features."""

    format = CHECKPOINT_FORMAT

    def __init__(self, cfg: TrainConfig, mcfg: dict, train_data: CaloData, holdout: CaloData, data_sha: str,
                 device: torch.device, run: RunDirectory, evaluate: bool):  # fmt: skip
        self.cfg, self.mcfg, self.holdout, self.data_sha, self.device = cfg, mcfg, holdout, data_sha, device
        self.generator = build_generator(mcfg).to(device)
        self.critic = build_critic(mcfg).to(device)
        self.units_per_gev = float(mcfg.get("units_per_gev", ENERGY_UNITS_PER_GEV))
        self.images = torch.from_numpy(train_data.energy).to(device)
        self.conds = torch.from_numpy(train_data.conditions()).to(device)
        edges = momentum_quantile_edges(train_data.p_abs, cfg.response_bins)
        self.response_edges = torch.as_tensor(edges, dtype=torch.float32, device=device)
        # the real showers' summaries and rank profiles, once; generated ones are compared per batch
        self.summaries = self.summary_scale = self.profiles = self.profile_scale = None
        self.rings = self.ring_scale = None
        if cfg.stats_weight > 0:
            self.summaries, self.summary_scale = self._real_columns(shower_summary)
        if cfg.rank_weight > 0:
            self.profiles, self.profile_scale = self._real_columns(lambda im, c: rank_profile(im))
        if cfg.radial_weight > 0:
            self.rings, self.ring_scale = self._real_columns(lambda im, c: radial_profile(im))
        if cfg.summary_score_weight > 0 and self.summaries is None:
            self.summaries, self.summary_scale = self._real_columns(shower_summary)
        self.energy_ratio_sd = None
        if cfg.energy_score_weight > 0:  # the real log energy ratio's std in each |p| bin: the score's unit
            ratio = log_energy_ratio(self.images, self.conds, self.units_per_gev).squeeze(1)
            which = momentum_bins(self.conds, self.response_edges)
            self.energy_ratio_sd = torch.stack(
                [ratio[which == k].std() for k in range(cfg.response_bins)]
            ).clamp_min(1e-4)
        self.embedder = _load_embedder(cfg, device, run.path) if evaluate else None
        self.plots_dir = run.path / "plots" if cfg.plots else None
        self.writer = _tensorboard(run.path) if (cfg.tensorboard and evaluate) else None

    def _real_columns(self, fn) -> tuple[torch.Tensor, torch.Tensor]:
        """fn(images, conditions) over the training showers in chunks, and each column's std (the W1 unit)."""
        with torch.no_grad():
            values = torch.cat([fn(self.images[i : i + 4096], self.conds[i : i + 4096])
                                for i in range(0, len(self.images), 4096)])  # fmt: skip
        return values, values.std(0).clamp_min(1e-6)

    def sample(self, rng: torch.Generator, batch_size: int) -> Batch:
        idx = torch.randint(0, self.images.shape[0], (batch_size,), generator=rng).to(self.device)
        return Batch(self.images[idx], self.conds[idx], index=idx)

    def critic_view(self, events: torch.Tensor, cond: torch.Tensor, step: int) -> torch.Tensor:
        features = critic_features(events, cond, self.units_per_gev)
        sigma = self.cfg.instance_noise * max(0.0, 1.0 - step / self.cfg.steps)
        return features + sigma * torch.randn_like(features) if sigma > 0 else features

    def extra_generator_losses(self, fake: torch.Tensor, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        cfg, terms = self.cfg, {}
        if cfg.response_weight > 0:
            term = response_loss(fake, batch.real, batch.cond, self.response_edges, cfg.response_power)
            terms["response"] = cfg.response_weight * term
        bins = momentum_bins(batch.cond, self.response_edges)
        if cfg.stats_weight > 0:
            fake_s = shower_summary(fake, batch.cond) / self.summary_scale
            real_s = self.summaries[batch.index] / self.summary_scale
            terms["statistics"] = cfg.stats_weight * binned_wasserstein(fake_s, real_s, bins)
        if cfg.energy_score_weight > 0 or cfg.summary_score_weight > 0:
            terms |= self._energy_scores(fake, batch, bins)
        if cfg.rank_weight > 0:
            fake_r = rank_profile(fake) / self.profile_scale
            real_r = self.profiles[batch.index] / self.profile_scale
            terms["rank_profile"] = cfg.rank_weight * binned_wasserstein(fake_r, real_r, bins)
        if cfg.radial_weight > 0:
            fake_r = radial_profile(fake) / self.ring_scale
            real_r = self.rings[batch.index] / self.ring_scale
            terms["radial_profile"] = cfg.radial_weight * binned_wasserstein(fake_r, real_r, bins)
        return terms

    def _energy_scores(self, fake: torch.Tensor, batch: Batch, bins: torch.Tensor) -> dict[str, torch.Tensor]:
        """The conditional energy-score terms, from ``fake`` and a second draw on the same conditions."""
        cfg, cond, terms = self.cfg, batch.cond, {}
        second = self.generator(torch.randn(len(cond), self.generator.noise_dim, device=cond.device), cond)
        if cfg.energy_score_weight > 0:
            unit = self.energy_ratio_sd[bins].unsqueeze(1)
            ratio = lambda images: log_energy_ratio(images, cond, self.units_per_gev) / unit  # noqa: E731
            terms["energy_score"] = cfg.energy_score_weight * energy_score(
                ratio(fake), ratio(second), ratio(batch.real)
            )
        if cfg.summary_score_weight > 0:
            summary = lambda images: shower_summary(images, cond) / self.summary_scale  # noqa: E731
            real = self.summaries[batch.index] / self.summary_scale
            terms["summary_score"] = cfg.summary_score_weight * energy_score(
                summary(fake), summary(second), real
            )
        return terms

    def evaluate(self, generator, step: int) -> dict:
        result = evaluate_generator(generator, self.holdout, self.cfg, self.embedder, self.device,
                                    self.plots_dir, step)  # fmt: skip
        if self.writer is not None:
            for key, value in result.items():
                if isinstance(value, int | float):
                    self.writer.add_scalar(f"eval/{key}", value, step)
        return result

    def checkpoint_fields(self) -> dict:
        return {"config": dataclasses.asdict(self.cfg), "model_config": self.mcfg,
                "normalizer": self.mcfg["normalizer"], "data_sha256": self.data_sha}  # fmt: skip


def _tensorboard(run_dir: Path):
    """A SummaryWriter under run_dir/tensorboard when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


# ---------------------------------------------------------------- training


def train(
    cfg: TrainConfig,
    overwrite: bool = False,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    requested: Requested | None = None,
) -> Path:
    """Train per ``cfg`` (or continue the run in ``resume``); returns the run directory. ``cfg`` is not modified.

    ``requested`` ({option: (field, value)}, the options given on the command line) is refused on resume where
    it differs from the run's recorded settings.
    """
    keep_freed_memory()
    rank, world = dist_info()
    path = resume if resume is not None else run_path(cfg.run_dir, cfg.name or cfg.preset)
    with RunSetup(path, resume=resume is not None, overwrite=overwrite, allowed=RESUME_CHANGES) as setup:
        # phase 1: configuration (a resumed run takes its saved config)
        saved = None
        if setup.resuming:
            saved = setup.resume(check_checkpoint, requested, recorded=partial(with_defaults, TrainConfig))
            cfg = resumed_config(saved["config"], cfg)
        else:
            validate_config(cfg)

        # phase 2: data, hold-out split (deterministic in the seed, identical on every rank), model config
        train_path = require_file(split_path(cfg.data, "train"))
        data = load_npz(train_path, require_energy=True)
        data_sha = sha256_file(train_path)
        setup.check_same_data(saved, data_sha, train_path)
        if len(data) < cfg.holdout + cfg.batch_size:
            raise InputError(
                f"{train_path}: {len(data)} events, need > holdout ({cfg.holdout}) + batch ({cfg.batch_size})"
            )
        perm = np.random.default_rng(cfg.seed).permutation(len(data))
        holdout = data.subset(np.sort(perm[: cfg.holdout]))
        train_idx = perm[cfg.holdout :][: cfg.max_train or None]
        train_data = data.subset(np.sort(train_idx))
        mcfg = saved["model_config"] if saved is not None else _model_config(cfg, train_data)

        # phase 3: processes, device, run directory
        own_group = world > 1 and not torch.distributed.is_initialized()
        if own_group:
            torch.distributed.init_process_group(
                "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
            )
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        device = select_device(cfg.device)
        if device.type == "cuda" and world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        run = setup.start(dataclasses.asdict(cfg))
        if world > 1:
            torch.distributed.barrier()

        # phase 4: models and engine, then train (the budget counts from here: the training loop)
        seed_everything(cfg.seed)
        task = ShowerTask(cfg, mcfg, train_data, holdout, data_sha, device, run, evaluate=rank == 0)
        budget = deadline(cfg.max_minutes, time.perf_counter())
        engine = AdversarialEngine(
            task, cfg, run, device, progress=progress, deadline=budget, description="train"
        )
        if saved is not None:
            engine.load(saved)
        try:
            engine.fit()
            if own_group:  # every rank finishes before rank 0, which hosts the rendezvous store, shuts down
                torch.distributed.barrier()
        finally:
            if task.writer is not None:
                task.writer.close()
            if own_group:  # an explicit shutdown: a group left to the interpreter's exit can abort a process
                torch.distributed.destroy_process_group()
    return run.path


#: The options a resumed run may change (every other setting is the run's own).
RESUME_CHANGES = "--steps, --device and --data"


#: The TrainConfig fields that define the networks (stored in every checkpoint's model config).
ARCHITECTURE_FIELDS: tuple[str, ...] = (
    "noise_dim", "latent", "gen_channels", "cell_noise", "gen_pad", "noise_modulation", "logit_noise", "cell_gates",
    "hard_gates", "critic_channels", "critic_hidden", "critic_core", "critic_summary",
)  # fmt: skip


def _model_config(cfg: TrainConfig, train_data: CaloData) -> dict:
    """The architecture of a new run, with the condition normaliser fitted on its training events."""
    sizes = {k: getattr(cfg, k) for k in ARCHITECTURE_FIELDS}
    if cfg.model == "baseline2019":
        sizes |= {
            "noise_dim": 10,
            "energy_scale": float(np.percentile(train_data.energy.max(axis=(1, 2)), 50)),
        }
    else:
        sizes["units_per_gev"] = fit_energy_scale(train_data)
        sizes["zero_threshold"] = fit_zero_threshold(train_data)
    return model_config(cfg.model, ConditionNormalizer.fit(train_data.conditions()), **sizes)


def fit_zero_threshold(data: CaloData, min_zero_fraction: float = 0.05) -> float:
    """The data's readout threshold: the 0.1 % quantile of the non-zero cell energies when at least
    ``min_zero_fraction`` of the cells read exactly 0 (a zero-suppressed readout), else 0 (no threshold)."""
    cells = data.energy.reshape(-1)
    positive = cells[cells > 0]
    if len(positive) == 0 or 1.0 - len(positive) / len(cells) < min_zero_fraction:
        return 0.0
    return float(np.quantile(positive, 0.001))


def fit_energy_scale(data: CaloData) -> float:
    """The data's energy scale: the median visible energy per GeV of |p| (165 on the competition files)."""
    total = data.energy.reshape(len(data), -1).sum(axis=1, dtype=np.float64)
    ratio = total / np.maximum(data.p_abs, 1e-6)
    positive = ratio[ratio > 0]
    if len(positive) == 0:
        raise InputError(f"{data.path}: every training shower is empty (no energy scale to fit)")
    return float(np.median(positive))


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = options.ArgumentParser(prog="python -m calogan.train", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", help=f"one of {', '.join(PRESETS)} (default quick)")
    parser.add_argument("--data", default=None, help="folder with data_train.npz (default: data)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--name", default=None, help="run name: writes runs/NAME (default: the preset name)")
    where.add_argument("--run-dir", default=None, help="explicit run directory")
    where.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=options.seed, default=None)
    parser.add_argument(
        "--steps", type=options.count(1), default=None, help="generator steps (with --resume: new total)"
    )
    parser.add_argument("--model", default=None, help="generator architecture (default shower)")
    parser.add_argument("--batch-size", type=options.count(1), default=None)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = parse_set(args.set)
    labels = {key: key for key in overrides}  # how a refusal names each option: the --set field, or the flag
    for key in ("data", "device", "seed", "steps", "model", "batch_size", "name", "run_dir"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
            labels[key] = f"--{key.replace('_', '-')}"
    try:
        if args.resume:
            # every other option given must match the run's settings: ignoring it would train otherwise than asked
            changeable = ("steps", "device", "data")
            fixed = {labels[k]: (k, v) for k, v in sorted(overrides.items()) if k not in changeable}
            requested = TrainConfig(steps=overrides.get("steps", 0), device=overrides.get("device", "auto"),
                                    data=overrides.get("data", ""))  # fmt: skip
            run_dir = train(requested, overwrite=args.overwrite, resume=args.resume, requested=fixed)
        else:
            cfg = make_config(args.preset, **overrides)
            if args.print_config:
                print(json.dumps(dataclasses.asdict(cfg), indent=2))
                return 0
            # a file or an unwritable folder is refused now; train() applies the reuse rules
            inputs = [split_path(cfg.data, "train"), Path(cfg.data) / "embedder.safetensors"]
            check_run_path(run_path(cfg.run_dir, cfg.name or cfg.preset), "--run-dir", inputs)
            run_dir = train(cfg, overwrite=args.overwrite)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"run directory: {run_dir}")
    stopped = budget_stop_message(RunDirectory(run_dir).last_stop())
    if stopped:
        print(stopped)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
