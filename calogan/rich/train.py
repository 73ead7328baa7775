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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from calogan.core.errors import InputError
from calogan.core.gan import EMA, gradient_penalty
from calogan.core.runtime import (
    atomic_torch_save,
    atomic_write_json,
    progress_disabled,
    run_cli,
    seed_everything,
    select_device,
)
from calogan.ecal.data import sha256_file
from calogan.rich import PARTICLES
from calogan.rich.data import (
    QuantileNormal,
    check_dll_basis,
    check_particle,
    fit_no_rich_table,
    load_sample,
    model_inputs,
    normal_from_uniform,
    sample_path,
    to_basis,
)
from calogan.rich.models import CHECKPOINT_FORMAT, build_models
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
    "full": {"steps": 30000, "batch_size": 2048, "hidden": 256, "depth": 5, "noise_dim": 64, "n_critic": 5},
}


@dataclass
class TrainConfig:
    """Everything that defines a RICH training run (stored in config.json and in the checkpoint)."""

    particle: str = "pion"
    data: str = "data/rich"
    preset: str = "quick"
    run_dir: str | None = None
    seed: int = 0
    device: str = "auto"
    steps: int = 2500
    batch_size: int = 2048
    hidden: int = 128
    depth: int = 3
    noise_dim: int = 32
    n_critic: int = 3
    dll_basis: str = "emu"
    weights: str = "expected"
    lr_decay: bool = False
    checkpoint_every: int = 0  # also keep checkpoints/step_NNNNNN.pt every this many steps (0: only last.pt)
    # wall-clock budget from the start of train(), data and weights included; 0: none
    max_minutes: float = 0.0
    lr_g: float = 2e-4
    lr_c: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    gp_weight: float = 10.0
    ema_decay: float = 0.995
    log_every: int = 100
    progress: bool = True

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> TrainConfig:
        if preset not in PRESETS:
            raise InputError(f"--preset: unknown preset '{preset}' (use {', '.join(PRESETS)})")
        values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(preset=preset, **values)


def train(config: TrainConfig) -> Path:
    """Train one particle's GAN; writes run_dir/{config.json, metrics.jsonl, checkpoints/last.pt}."""
    if not config.max_minutes >= 0:  # also rejects NaN
        raise InputError(f"--max-minutes must be a number >= 0, got {config.max_minutes}")
    deadline = time.perf_counter() + 60.0 * config.max_minutes if config.max_minutes > 0 else float("inf")
    check_particle(config.particle)
    check_dll_basis(config.dll_basis)
    if config.weights not in WEIGHT_MODES:
        raise InputError(f"--weights: unknown mode '{config.weights}' (use one of {', '.join(WEIGHT_MODES)})")
    path = sample_path(config.data, config.particle, "train")
    sample = load_sample(path)
    run_dir = Path(config.run_dir or f"runs/rich_{config.particle}_{config.preset}")
    seed_everything(config.seed)
    device = select_device(config.device)

    rich = sample.subset(sample.has_rich)
    if len(rich) < 10 or rich.weights.sum() <= 0:
        raise InputError(f"{path}: too few tracks with RICH information to train on")
    qt_in = QuantileNormal.fit(model_inputs(rich.inputs), seed=config.seed)
    outputs = to_basis(rich.dlls, config.dll_basis)
    qt_out = QuantileNormal.fit(outputs, seed=config.seed)
    cond = torch.from_numpy(qt_in.transform(model_inputs(rich.inputs))).to(device)
    cdf_low, cdf_high = qt_out.uniform_bounds(outputs)  # equal except for tied values
    has_ties = bool((cdf_high > cdf_low).any())
    cdf_low = torch.from_numpy(cdf_low).to(device)
    cdf_step = torch.from_numpy(cdf_high).to(device) - cdf_low
    if config.weights == "expected":
        features = np.column_stack([model_inputs(rich.inputs), rich.dlls])
        train_weights = expected_sweights(features, rich.weights, seed=config.seed)
    else:
        train_weights = rich.weights.astype(np.float64)
    if train_weights.sum() <= 0:
        raise InputError(f"{path}: the {config.weights} training weights sum to <= 0")
    weight_info = {
        "mode": config.weights,
        "sum_sweights": float(rich.weights.sum()),
        "sum_train_weights": float(train_weights.sum()),
        "n_effective_sweights": n_effective(rich.weights),
        "n_effective_train_weights": n_effective(train_weights),
    }
    w = torch.from_numpy(train_weights.astype(np.float32)).to(device)
    w = w / w.mean()  # global normalisation: weighted means below are sum(w v) / batch_size

    model_config = {"noise_dim": config.noise_dim, "hidden": config.hidden, "depth": config.depth}
    gen, critic = build_models(model_config)
    gen, critic = gen.to(device), critic.to(device)
    ema = EMA(gen, config.ema_decay)
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr_g, betas=config.betas)
    opt_c = torch.optim.Adam(critic.parameters(), lr=config.lr_c, betas=config.betas)
    # optional linear decay of both learning rates to zero at the last step (one schedule step per gen step)
    decay = (lambda i: max(0.0, 1.0 - i / config.steps)) if config.lr_decay else (lambda i: 1.0)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, decay) for o in (opt_g, opt_c)]
    rng = torch.Generator(device="cpu").manual_seed(config.seed)

    def batch():
        idx = torch.randint(0, len(w), (config.batch_size,), generator=rng).to(device)
        u = cdf_low[idx]
        if has_ties:  # a fresh position inside each tied value's CDF step
            u = u + torch.rand(u.shape, generator=rng, dtype=u.dtype).to(device) * cdf_step[idx]
        return cond[idx], normal_from_uniform(u).float(), w[idx]

    def noise(n: int) -> torch.Tensor:
        return torch.randn(n, config.noise_dim, generator=rng).to(device)

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", dataclasses.asdict(config))
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("")

    def tensors(qn: QuantileNormal) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in qn.to_arrays().items()}

    fixed = {  # the parts of every checkpoint that do not change during training
        "format": CHECKPOINT_FORMAT,
        "particle": config.particle,
        "config": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()
        },
        "model_config": model_config,
        "qt_in": tensors(qt_in),
        "qt_out": tensors(qt_out),
        "no_rich_table": torch.from_numpy(fit_no_rich_table(sample)),
        "data_sha256": sha256_file(path),
    }

    def checkpoint(step: int) -> dict:
        """One self-contained checkpoint as of this step (weights_only-loadable)."""
        return fixed | {
            "generator": gen.state_dict(),
            "generator_ema": ema.state_dict(),
            "critic": critic.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_c": opt_c.state_dict(),
            "step": step,
            "metrics": {
                "train_seconds": round(time.perf_counter() - t0, 2),
                "weights": weight_info,
                "last": history[-1] if history else {},
            },
        }

    t0 = time.perf_counter()
    history: list[dict] = []
    step = 0
    bar = tqdm(
        range(1, config.steps + 1),
        desc=f"rich {config.particle}",
        disable=progress_disabled(config.progress),
    )
    for step in bar:
        for _ in range(config.n_critic):
            c, x, wb = batch()
            with torch.no_grad():
                fake = gen(noise(len(c)), c)
            gp, _ = gradient_penalty(critic, x, fake, c, config.gp_weight, sample_weight=wb.abs())
            wdist = (wb * critic(x, c)).mean() - (
                wb * critic(fake, c)
            ).mean()  # sWeighted E[D(real)] - E[D(fake)]
            loss_c = -wdist + gp
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()
        c, _, wb = batch()
        loss_g = -(wb * critic(gen(noise(len(c)), c), c)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        ema.update(gen)
        for schedule in schedules:
            schedule.step()
        out_of_time = step < config.steps and time.perf_counter() >= deadline
        if step % config.log_every == 0 or step == config.steps or out_of_time:
            rec = {"step": step, "wdist": wdist.item(), "gp": gp.item(), "loss_g": loss_g.item()}
            rec["elapsed_s"] = round(time.perf_counter() - t0, 2)
            history.append(rec)
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
            atomic_torch_save(run_dir / "checkpoints" / f"step_{step:06d}.pt", checkpoint(step))
        if out_of_time:
            bar.write(f"time budget of {config.max_minutes} min reached at step {step} of {config.steps}")
            break
    bar.close()

    atomic_torch_save(run_dir / "checkpoints" / "last.pt", checkpoint(step))
    return run_dir


def main(argv: Sequence[str] | None = None) -> int:
    """CLI wrapper of train()."""
    ap = argparse.ArgumentParser(prog="python -m calogan.rich.train", description=__doc__.splitlines()[0])
    ap.add_argument("--particle", required=True, help=f"one of {', '.join(PARTICLES)}")
    ap.add_argument("--data", required=True, help="folder with rich_{particle}_train.npz")
    ap.add_argument("--preset", default="quick", help="tiny | quick | full")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's number of generator steps")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-clock budget in minutes, 0 = none (quick preset: 4.5, lifted when --steps is given)",
    )
    ap.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="also keep checkpoints/step_NNNNNN.pt every N steps",
    )
    ap.add_argument("--lr", type=float, default=None, help="learning rate of generator and critic")
    ap.add_argument(
        "--lr-decay", action="store_true", default=None, help="decay learning rates linearly to 0"
    )
    ap.add_argument(
        "--weights", default=None, help="expected (default: E[sWeight | x], cross-fitted) | sweights"
    )
    ap.add_argument(
        "--dll-basis",
        default=None,
        help="emu (default: DLLe-DLLmu, rest raw) | adjacent (also p-K, bt-p) | raw",
    )
    args = ap.parse_args(argv)
    check_particle(args.particle)
    config = TrainConfig.from_preset(
        args.preset,
        particle=args.particle,
        data=args.data,
        run_dir=args.run_dir,
        seed=args.seed,
        device=args.device,
        steps=args.steps,
        batch_size=args.batch_size,
        dll_basis=args.dll_basis,
        weights=args.weights,
        lr_decay=args.lr_decay,
        checkpoint_every=args.checkpoint_every,
        lr_g=args.lr,
        lr_c=args.lr,
        # an explicit --steps means that many steps: the preset's time budget only guards its own step count
        max_minutes=args.max_minutes if args.max_minutes is not None else (0.0 if args.steps else None),
    )
    if config.steps < 1:
        raise InputError(f"--steps: must be positive, got {config.steps}")
    run_dir = train(config)
    print(f"checkpoint: {run_dir / 'checkpoints' / 'last.pt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
