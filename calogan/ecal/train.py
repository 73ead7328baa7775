"""Train the conditional WGAN-GP on data_train.npz (docs/training.md): ``python -m calogan.train``.

One readable loop: n_critic critic steps with the gradient penalty (per-sample norm, conditions fed to
the critic), one generator step, an EMA of the generator, periodic scoring of the EMA generator on a
held-out slice of the *training* file (reduced K/R, used to keep the best checkpoint), atomic checkpoints
that resume exactly (step, optimisers, EMA, RNG states). Multi-process data parallel under ``torchrun``:
each rank draws its own batches, gradients are averaged with all_reduce (gloo on CPU, nccl on GPU) and
rank 0 writes everything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from calogan.core.errors import InputError
from calogan.core.gan import EMA, binned_wasserstein, gradient_penalty
from calogan.core.runtime import (
    atomic_torch_save,
    atomic_write_json,
    keep_freed_memory,
    progress_disabled,
    seed_everything,
    select_device,
    torch_load_safe,
)
from calogan.ecal.data import ConditionNormalizer, load_npz, require_file, sha256_file, split_path
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
from calogan.metrics.embedder import load_embedder
from calogan.metrics.evaluate import score_arrays
from calogan.metrics.plots import plot_showers, plot_statistics


@dataclass
class TrainConfig:
    """Every knob of a training run; presets set some, ``--set key=value`` any."""

    preset: str = "quick"
    data: str = "data"
    run_dir: str = ""  # default runs/<name>
    name: str = ""  # default: the preset name
    model: str = "shower"  # shower | baseline2019
    steps: int = 1500  # generator steps
    batch_size: int = 64  # per process
    n_critic: int = 5
    gp_weight: float = 10.0
    lr_g: float = 1e-4
    lr_c: float = 1e-4
    beta1: float = 0.0
    beta2: float = 0.9
    ema_decay: float = 0.995
    instance_noise: float = 0.0  # std of Gaussian noise on the critic's inputs, annealed linearly to 0
    # energy-response term: weight of a per-|p|-bin 1-D Wasserstein distance between log(E/165|p|) of the
    # generated and the real showers of the same batch (same conditions); 0 = pure WGAN-GP
    response_weight: float = 0.0
    response_bins: int = 4
    response_power: int = 1  # 1: Wasserstein-1; 2: squared Wasserstein-2 (pulls harder on the tails)
    # architecture
    noise_dim: int = 32
    latent: int = 64
    gen_channels: int = 16
    cell_noise: bool = True
    gen_pad: int = 0  # shower shape spread over the window + gen_pad cells per side: leakage from geometry
    noise_modulation: bool = False  # per-cell noise amplitude from the cell's features (core vs tails)
    critic_channels: int = 16
    critic_hidden: int = 128
    critic_core: bool = False  # extra critic channel sqrt(energy fraction) that makes the shower core visible
    # data and evaluation
    max_train: int = 0  # 0 = all events of the training file (minus the hold-out)
    holdout: int = 2000  # events of data_train.npz kept out of training, used for the periodic score
    eval_every: int = 500
    eval_clusters: int = 20
    eval_runs: int = 10
    eval_embedder: bool = True  # use DATA/embedder.safetensors for AUC_img when it exists
    checkpoint_every: int = 100
    log_every: int = 10
    plots: bool = True
    tensorboard: bool = True
    max_minutes: float = (
        0.0  # wall-clock budget for the training loop (0 = none); ends with a final evaluation
    )
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0 = torch's default)
    extra: dict = field(default_factory=dict)


PRESETS: dict[str, dict] = {
    "tiny": dict(
        steps=6, batch_size=16, n_critic=2, holdout=200, eval_every=3, eval_clusters=5, eval_runs=2,
        checkpoint_every=2, log_every=1, noise_dim=8, latent=16, gen_channels=4, critic_channels=4,
        critic_hidden=16, plots=False, tensorboard=False, eval_embedder=False, threads=1,
    ),
    "quick": dict(
        steps=3000, batch_size=64, holdout=2000, eval_every=500, eval_clusters=20, eval_runs=10, max_minutes=11.0,
        n_critic=1, lr_g=2e-4, lr_c=4e-4,  # TTUR, one critic step: best score per CPU-minute (benchmarks/)
        critic_core=True, response_weight=5.0,  # both measured on this preset (README, Measured quality)
    ),
    "full": dict(
        steps=30000, batch_size=128, holdout=5000, eval_every=2000, eval_clusters=50, eval_runs=20,
        gen_channels=48, latent=128, critic_channels=32, critic_hidden=256, ema_decay=0.999, checkpoint_every=500,
        critic_core=True, response_weight=5.0,
    ),
}  # fmt: skip


class TrainingDiverged(RuntimeError):
    """A loss became NaN/Inf; the run stopped and the last good checkpoint was kept."""


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
            elif kind == "str":
                out[key] = raw
            else:
                raise ValueError("not settable")
        except ValueError:
            raise InputError(f"--set: bad value for {key} ({kind}): '{raw}'") from None
    return out


def validate_config(cfg: TrainConfig) -> None:
    """Reject impossible settings with one clear line."""
    if cfg.model not in MODELS:
        raise InputError(f"--model: unknown model '{cfg.model}' (use {' or '.join(MODELS)})")
    for name in (
        "steps",
        "batch_size",
        "n_critic",
        "eval_every",
        "checkpoint_every",
        "log_every",
        "noise_dim",
    ):
        if getattr(cfg, name) < 1:
            raise InputError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.holdout < 10:
        raise InputError(f"holdout must be >= 10 events, got {cfg.holdout}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise InputError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.response_power not in (1, 2):
        raise InputError(f"response_power must be 1 or 2, got {cfg.response_power}")
    if cfg.response_weight < 0 or cfg.response_bins < 1:
        raise InputError(
            f"response_weight must be >= 0 and response_bins >= 1, got {cfg.response_weight}, {cfg.response_bins}"
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


# ---------------------------------------------------------------- distributed helpers


def _dist_info() -> tuple[int, int]:
    """(rank, world size) from the torchrun environment; (0, 1) when not distributed."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _allreduce_grads(model: torch.nn.Module, world: int) -> None:
    """Average gradients over processes (explicit all_reduce: works with the penalty's double backward)."""
    if world <= 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)


def _broadcast_params(model: torch.nn.Module, world: int) -> None:
    if world <= 1:
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


# ---------------------------------------------------------------- run directory and checkpoints


def resolve_run_dir(cfg: TrainConfig) -> Path:
    """runs/<name> unless run_dir is given."""
    return Path(cfg.run_dir) if cfg.run_dir else Path("runs") / (cfg.name or cfg.preset)


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run dir; refuse an existing non-empty one unless overwrite (only a calogan run is wiped)."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise InputError(f"{run_dir}: run directory exists (pass --resume {run_dir} or --overwrite)")
        if not (run_dir / "config.json").exists():
            raise InputError(
                f"{run_dir}: exists and is not a calogan run directory; refusing to overwrite it"
            )
        shutil.rmtree(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)


def _rng_state(sampler: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "sampler": sampler.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, sampler: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    sampler.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (a killed run may have logged more)."""
    if not path.exists():
        return
    keep = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step
    ]
    path.write_text("".join(ln + "\n" for ln in keep))


# ---------------------------------------------------------------- evaluation


def evaluate_generator(
    generator, holdout, cfg: TrainConfig, embedder, device, plots_dir: Path | None, step: int
):
    """Score the generator on the held-out training events (reduced K/R); optionally write plots."""
    gen = generate(generator, holdout, batch_size=512, seed=cfg.seed, device=device)
    result, details = score_arrays(
        gen,
        holdout,
        embedder=embedder,
        clusters=cfg.eval_clusters,
        runs=cfg.eval_runs,
        seed=1337,
        ceiling=True,
        standardised=True,
        return_details=True,
    )
    if plots_dir is not None:
        try:
            plots_dir.mkdir(parents=True, exist_ok=True)
            plot_showers(holdout.energy, gen, plots_dir / f"showers_step{step:06d}.png")
            plot_statistics(
                details["stats_true"], details["stats_gen"], plots_dir / f"statistics_step{step:06d}.png"
            )
        except Exception as exc:  # noqa: BLE001 - plots must never kill a training run
            print(f"warning: plotting failed at step {step}: {exc}", file=sys.stderr)
    keep = ("score", "auc_img", "auc_phys", "score_std", "ceiling")
    out = {k: result.get(k) for k in keep}
    out["standardised_score"] = result.get("standardised", {}).get("score")
    ceiling = out.get("ceiling") or 0.0
    out["fraction_of_ceiling"] = out["score"] / ceiling if ceiling > 0 else None
    return out


def _load_embedder(cfg: TrainConfig, device):
    if not cfg.eval_embedder:
        return None
    path = Path(cfg.data) / "embedder.safetensors"
    if not path.exists():
        return None
    return load_embedder(path, sha256_file(split_path(cfg.data, "train")), device=device)


# ---------------------------------------------------------------- training


def train(
    cfg: TrainConfig,
    overwrite: bool = False,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Train per ``cfg`` (or continue the run in ``resume``); returns the run directory."""
    keep_freed_memory()
    rank, world = _dist_info()
    resume_ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        last = run_dir / "checkpoints" / "last.pt"
        if not last.exists():
            raise InputError(f"{last}: no checkpoint to resume from (is {run_dir} a calogan run directory?)")
        resume_ckpt = check_checkpoint(torch_load_safe(last), last)
        saved = {
            k: v for k, v in resume_ckpt["config"].items() if k in {f.name for f in dataclasses.fields(cfg)}
        }
        steps, device, data = cfg.steps, cfg.device, cfg.data
        cfg = TrainConfig(**saved)
        cfg.steps, cfg.device = (steps or cfg.steps), device
        cfg.data = data or cfg.data
    else:
        validate_config(cfg)
        run_dir = resolve_run_dir(cfg)

    train_path = require_file(split_path(cfg.data, "train"))
    data = load_npz(train_path, require_energy=True)
    data_sha = sha256_file(train_path)
    if resume_ckpt is not None and resume_ckpt.get("data_sha256") != data_sha:
        raise InputError(f"{train_path}: differs from the data the run in {run_dir} was trained on (sha256)")
    if len(data) < cfg.holdout + cfg.batch_size:
        raise InputError(
            f"{train_path}: {len(data)} events, need > holdout ({cfg.holdout}) + batch ({cfg.batch_size})"
        )

    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))

    # hold-out split: deterministic in the seed, identical on every rank
    perm = np.random.default_rng(cfg.seed).permutation(len(data))
    holdout = data.subset(np.sort(perm[: cfg.holdout]))
    train_idx = perm[cfg.holdout :]
    if cfg.max_train > 0:
        train_idx = train_idx[: cfg.max_train]
    train_data = data.subset(np.sort(train_idx))
    normalizer = ConditionNormalizer.fit(train_data.conditions())
    sizes = {
        k: getattr(cfg, k)
        for k in ("noise_dim", "latent", "gen_channels", "cell_noise", "gen_pad", "noise_modulation")
    }
    sizes |= {k: getattr(cfg, k) for k in ("critic_channels", "critic_hidden", "critic_core")}
    if cfg.model == "baseline2019":
        sizes |= {
            "noise_dim": 10,
            "energy_scale": float(np.percentile(train_data.energy.max(axis=(1, 2)), 50)),
        }
    mcfg = (
        resume_ckpt["model_config"]
        if resume_ckpt is not None
        else model_config(cfg.model, normalizer, **sizes)
    )

    if rank == 0 and resume_ckpt is None:
        prepare_run_dir(run_dir, overwrite)
        atomic_write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    if world > 1:
        torch.distributed.barrier()

    seed_everything(cfg.seed)
    generator = build_generator(mcfg).to(device)
    critic = build_critic(mcfg).to(device)
    _broadcast_params(generator, world)
    _broadcast_params(critic, world)
    ema = EMA(generator, cfg.ema_decay)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.lr_c, betas=(cfg.beta1, cfg.beta2))
    sampler = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    step, metrics = 0, {"best_score": None, "best_step": None, "history": []}
    if resume_ckpt is not None:
        generator.load_state_dict(resume_ckpt["generator"])
        ema.load_state_dict(resume_ckpt["generator_ema"])
        critic.load_state_dict(resume_ckpt["critic"])
        opt_g.load_state_dict(resume_ckpt["opt_g"])
        opt_c.load_state_dict(resume_ckpt["opt_c"])
        step, metrics = int(resume_ckpt["step"]), dict(resume_ckpt.get("metrics") or metrics)
        if world == 1:
            _set_rng_state(resume_ckpt["rng"], sampler)
        else:  # per-rank RNG streams are not stored: reseed deterministically from the step
            torch.manual_seed(cfg.seed + 7919 * step + rank)
            sampler.manual_seed(cfg.seed * 1000 + rank + 104729 * step)
        if rank == 0:
            _truncate_metrics(run_dir / "metrics.jsonl", step)

    images = torch.from_numpy(train_data.energy).to(device)
    conds = torch.from_numpy(train_data.conditions()).to(device)
    response_edges = torch.as_tensor(
        momentum_quantile_edges(train_data.p_abs, cfg.response_bins), dtype=torch.float32, device=device
    )
    embedder = _load_embedder(cfg, device) if rank == 0 else None
    plots_dir = run_dir / "plots" if cfg.plots else None
    writer = _tensorboard(run_dir) if (cfg.tensorboard and rank == 0) else None

    def checkpoint(path_names: Sequence[str]) -> None:
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "config": dataclasses.asdict(cfg),
            "model_config": mcfg,
            "normalizer": mcfg["normalizer"],
            "generator": generator.state_dict(),
            "generator_ema": ema.state_dict(),
            "critic": critic.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_c": opt_c.state_dict(),
            "step": step,
            "metrics": json.loads(json.dumps(metrics)),
            "data_sha256": data_sha,
            "rng": _rng_state(sampler),
        }
        for name in path_names:
            atomic_torch_save(run_dir / "checkpoints" / name, ckpt)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=sampler).to(device)
        return images[idx], conds[idx]

    n_noise = generator.noise_dim
    bar = _progress(step, cfg.steps, progress and rank == 0)
    log_path = run_dir / "metrics.jsonl"
    t_last, imgs_since = time.perf_counter(), 0
    deadline = time.perf_counter() + 60.0 * cfg.max_minutes if cfg.max_minutes > 0 else float("inf")
    generator.train()
    critic.train()
    while step < cfg.steps:
        sigma = cfg.instance_noise * max(0.0, 1.0 - step / cfg.steps)
        for _ in range(cfg.n_critic):
            real, cond = batch()
            with torch.no_grad():
                fake = generator(torch.randn(cfg.batch_size, n_noise, device=device), cond)
            f_real, f_fake = critic_features(real, cond), critic_features(fake, cond)
            if sigma > 0:
                f_real = f_real + sigma * torch.randn_like(f_real)
                f_fake = f_fake + sigma * torch.randn_like(f_fake)
            wdist = critic(f_real, cond).mean() - critic(f_fake, cond).mean()
            gp, norms = gradient_penalty(critic, f_real, f_fake, cond, weight=cfg.gp_weight)
            loss_c = -wdist + gp
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            _allreduce_grads(critic, world)
            opt_c.step()
        real, cond = batch()
        fake = generator(torch.randn(cfg.batch_size, n_noise, device=device), cond)
        f_fake = critic_features(fake, cond)
        if sigma > 0:
            f_fake = f_fake + sigma * torch.randn_like(f_fake)
        loss_g = -critic(f_fake, cond).mean()
        if cfg.response_weight > 0:
            loss_g = loss_g + cfg.response_weight * response_loss(
                fake, real, cond, response_edges, cfg.response_power
            )
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        _allreduce_grads(generator, world)
        losses = torch.stack([loss_c.detach(), loss_g.detach(), wdist.detach(), gp.detach()])
        if not bool(torch.isfinite(losses).all()):
            raise TrainingDiverged(
                f"loss became NaN/Inf at step {step + 1} (critic {losses[0].item()}, generator {losses[1].item()}); "
                f"stopped, last good checkpoint kept at {run_dir / 'checkpoints' / 'last.pt'} "
                "(try a lower --set lr_g=/lr_c= or a larger gp_weight)"
            )
        opt_g.step()
        ema.update(generator)
        step += 1
        imgs_since += cfg.batch_size * (cfg.n_critic + 1) * world
        if _budget_spent(deadline, world, device) and step < cfg.steps:
            if rank == 0:
                bar.write(f"time budget of {cfg.max_minutes} min reached at step {step}; final evaluation")
            cfg.steps = step  # the run ends here; its config records the steps actually trained
        if rank != 0:
            continue
        bar.update(1)
        record = None
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            values = losses.tolist()
            record = {
                "step": step,
                "loss_critic": values[0],
                "loss_generator": values[1],
                "wasserstein": values[2],
                "gradient_penalty": values[3],
                "grad_norm_mean": float(norms.mean()),
                "images_per_s": imgs_since / max(now - t_last, 1e-9),
                "time": time.time(),
            }
            t_last, imgs_since = now, 0
            bar.set_postfix(c=f"{values[0]:.3f}", g=f"{values[1]:.3f}", w=f"{values[2]:.3f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            ema.model.eval()
            result = evaluate_generator(ema.model, holdout, cfg, embedder, device, plots_dir, step)
            record = {
                **(record or {"step": step, "time": time.time()}),
                **{f"eval_{k}": v for k, v in result.items()},
            }
            metrics["history"].append({"step": step, **result})
            better = metrics["best_score"] is None or result["score"] > metrics["best_score"]
            if better:
                metrics["best_score"], metrics["best_step"] = result["score"], step
            metrics["last"] = result
            checkpoint(["last.pt", "best.pt"] if better else ["last.pt"])
            bar.write(f"step {step}: score {result['score']:.3f} (ceiling {result['ceiling']:.3f})")
        elif step % cfg.checkpoint_every == 0:
            checkpoint(["last.pt"])
        if record is not None:
            with open(log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            if writer is not None:
                for key, value in record.items():
                    if isinstance(value, int | float) and key not in ("step", "time"):
                        writer.add_scalar(key, value, step)
    bar.close()
    if writer is not None:
        writer.close()
    if world > 1:
        torch.distributed.barrier()
    return run_dir


def _budget_spent(deadline: float, world: int, device) -> bool:
    """Whether the wall-clock budget is spent (rank 0's clock decides for every process)."""
    if deadline == float("inf"):
        return False
    spent = time.perf_counter() > deadline
    if world > 1:
        flag = torch.tensor([float(spent)], device=device)
        dist.broadcast(flag, src=0)
        spent = bool(flag.item() > 0)
    return spent


def _progress(start: int, total: int, enabled: bool):
    return tqdm(
        total=total, initial=start, desc="train", disable=progress_disabled(enabled), dynamic_ncols=True
    )


def _tensorboard(run_dir: Path):
    """A SummaryWriter under run_dir/tensorboard when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m calogan.train", description=__doc__.splitlines()[0])
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
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="generator steps (with --resume: new total)")
    parser.add_argument("--model", default=None, help="generator architecture (default shower)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = parse_set(args.set)
    for key in ("data", "device", "seed", "steps", "model", "batch_size", "name", "run_dir"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    try:
        if args.resume:
            cfg = TrainConfig(steps=overrides.get("steps", 0), device=overrides.get("device", "auto"))
            cfg.data = overrides.get("data", "")
            run_dir = train(cfg, resume=args.resume)
        else:
            cfg = make_config(args.preset, **overrides)
            if args.print_config:
                print(json.dumps(dataclasses.asdict(cfg), indent=2))
                return 0
            run_dir = train(cfg, overwrite=args.overwrite)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"run directory: {run_dir}")
    return 0
