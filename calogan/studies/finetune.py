"""Physics-targeted fine-tuning of a trained generator: ``python -m calogan.finetune``.

Starting from a training checkpoint, WGAN-GP training continues with an extra generator loss per target
statistic: ``energy_response`` is matched directly (it is differentiable); the competition statistics
(asymmetries, widths, sparsity levels) are predicted by a surrogate regressor that keeps learning on real and
generated images, and the generator matches the surrogate's predictions on its images to the real values at
the same conditions (Rogachev & Ratnikov, arXiv:2207.06329). The report compares before/after.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ks_2samp, wasserstein_distance
from tqdm import tqdm

from calogan.core.errors import InputError
from calogan.core.gan import EMA, gradient_penalty
from calogan.core.runtime import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    progress_disabled,
    seed_everything,
    select_device,
    torch_load_safe,
)
from calogan.ecal.data import CaloData, load_npz, require_file, sha256_file, split_path
from calogan.ecal.models import build_critic, build_generator, check_checkpoint, critic_features
from calogan.ecal.physics import (
    energy_response,
    momentum_bins,
    momentum_quantile_bins,
    momentum_quantile_edges,
    physical_statistics,
)
from calogan.ecal.predict import generate
from calogan.metrics.embedder import load_embedder
from calogan.metrics.evaluate import score_arrays
from calogan.metrics.plots import subplots
from calogan.studies.surrogate import (
    DIRECT_TARGETS,
    LOSSES,
    TARGET_COLUMNS,
    TARGET_NAMES,
    distribution_loss,
    energy_response_t,
    parse_targets,
    surrogate_step,
    target_labels,
    target_values,
    train_surrogate,
)


@dataclass
class FinetuneConfig:
    """Knobs of one fine-tuning run (presets set them; the CLI overrides some)."""

    steps: int = 600
    batch_size: int = 64
    n_critic: int = 1  # as the quick training preset (TTUR: critic lr above the generator's)
    gp_weight: float = 10.0
    lr_g: float = 1e-4
    lr_c: float = 4e-4
    ema_decay: float = 0.99
    weight: float = 1.0
    loss: str = "wasserstein"
    n_bins: int = 4
    surrogate_pretrain: int = 300
    eval_events: int = 5000
    clusters: int = 20
    runs: int = 10
    seed: int = 0


PRESETS: dict[str, dict] = {
    "tiny": dict(
        steps=4, batch_size=32, n_critic=1, surrogate_pretrain=20, eval_events=300, clusters=5, runs=2
    ),
    "quick": dict(),
    "full": dict(steps=3000, batch_size=128, surrogate_pretrain=2000, eval_events=0, clusters=100, runs=20),
}


def load_checked_checkpoint(checkpoint: str | os.PathLike, data_dir: str | os.PathLike) -> dict:
    """Load a training checkpoint and refuse it (InputError) when it was trained on other data."""
    ckpt = check_checkpoint(torch_load_safe(checkpoint), checkpoint)
    train_path = require_file(split_path(data_dir, "train"))
    if ckpt.get("data_sha256") not in (None, sha256_file(train_path)):
        raise InputError(f"{checkpoint}: trained on other data than {train_path} (sha256 differs)")
    return ckpt


# ------------------------------------------------------------------ comparison report


def statistic_table(images: np.ndarray, data: CaloData, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-event values (N, k) of each named statistic (sparsity: its 20 levels; widths in natural units)."""
    out: dict[str, np.ndarray] = {}
    stats = None
    for name in names:
        if name == "energy_response":
            out[name] = energy_response(images, data.momentum)[:, None]
        else:
            stats = physical_statistics(images, data.point, data.momentum) if stats is None else stats
            out[name] = stats[:, TARGET_COLUMNS[name]]
    return out


def distances(gen: np.ndarray, real: np.ndarray, bins: np.ndarray, n_bins: int) -> dict:
    """W1 and KS statistic (mean over the k columns) gen vs real, overall and per energy bin."""

    def pair(g: np.ndarray, r: np.ndarray) -> tuple[float, float]:
        w1 = np.mean([wasserstein_distance(g[:, j], r[:, j]) for j in range(g.shape[1])])
        ks = np.mean([ks_2samp(g[:, j], r[:, j]).statistic for j in range(g.shape[1])])
        return float(w1), float(ks)

    w1, ks = pair(gen, real)
    per_bin = [pair(gen[bins == b], real[bins == b]) for b in range(n_bins)]
    return {"w1": w1, "ks": ks, "w1_bins": [p[0] for p in per_bin], "ks_bins": [p[1] for p in per_bin]}


def plot_histograms(path: Path, title: str, real: np.ndarray, samples: dict[str, np.ndarray]) -> Path:
    """One PNG: histograms of real and of each generated sample (first column of each)."""
    lo, hi = np.quantile(real[:, 0], [0.005, 0.995])
    edges = np.linspace(lo, hi if hi > lo else lo + 1, 41)
    fig, ax = subplots(figsize=(5, 3.6))
    ax.hist(real[:, 0], edges, histtype="stepfilled", alpha=0.3, color="k", label="real", density=True)
    for label, values in samples.items():
        ax.hist(values[:, 0], edges, histtype="step", lw=1.5, label=label, density=True)
    ax.set_xlabel(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
    return path


def score_images(images: np.ndarray, data: CaloData, embedder, cfg: FinetuneConfig, device) -> dict:
    """The competition score of images against data (calogan.metrics.evaluate.score_arrays), JSON-safe subset."""
    res = score_arrays(images, data, embedder=embedder, clusters=cfg.clusters, runs=cfg.runs, seed=1337,
                       ceiling=True, device=device)  # fmt: skip
    keep = ("score", "auc_img", "auc_phys", "score_std", "ceiling")
    return {k: (None if res.get(k) is None else float(res[k])) for k in keep if k in res}


def load_data_embedder(data_dir: str | os.PathLike, device):
    """DATA/embedder.safetensors when it exists (tied to the training data), else None (AUC_phys only)."""
    path = Path(data_dir) / "embedder.safetensors"
    if not path.exists():
        return None
    return load_embedder(path, sha256_file(split_path(data_dir, "train")), device=device)


# ------------------------------------------------------------------ the fine-tuning loop


def _real_targets(train: CaloData, surrogate_names: list[str]) -> np.ndarray | None:
    if not surrogate_names:
        return None
    return target_values(physical_statistics(train.energy, train.point, train.momentum), surrogate_names)


def finetune(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    targets: Sequence[str],
    out_dir: str | os.PathLike,
    cfg: FinetuneConfig | None = None,
    device: str | None = "auto",
    progress: bool = True,
) -> dict:
    """Fine-tune the checkpoint's generator on the target statistics; write OUT/{checkpoint.pt, report.md, ...}."""
    cfg = cfg or FinetuneConfig()
    names = list(targets)
    ckpt = load_checked_checkpoint(checkpoint, data_dir)
    train = load_npz(require_file(split_path(data_dir, "train")), require_energy=True)
    val = load_npz(require_file(split_path(data_dir, "val", "solution")), require_energy=True)
    out_dir = Path(out_dir)
    dev = select_device(device)
    seed_everything(cfg.seed)

    mcfg = ckpt["model_config"]
    generator, critic = build_generator(mcfg).to(dev), build_critic(mcfg).to(dev)
    try:
        generator.load_state_dict(ckpt["generator"])
        critic.load_state_dict(ckpt["critic"])
    except (RuntimeError, KeyError) as exc:
        raise InputError(f"{checkpoint}: weights do not fit the architecture ({str(exc)[:150]})") from None
    ema = EMA(generator, cfg.ema_decay)
    ema.load_state_dict(ckpt["generator_ema"])
    before = copy.deepcopy(ema.model).eval()

    sur_names = [n for n in names if n not in DIRECT_TARGETS]
    images = torch.from_numpy(train.energy).to(dev)
    conds = torch.from_numpy(train.conditions()).to(dev)
    real_t = _real_targets(train, sur_names)
    surrogate = opt_s = None
    if sur_names:
        surrogate = train_surrogate(train.energy, train.conditions(), real_t, steps=cfg.surrogate_pretrain,
                                    seed=cfg.seed, device=dev, progress=progress)  # fmt: skip
        opt_s = torch.optim.Adam(surrogate.parameters(), lr=5e-4)
        real_t_dev = torch.from_numpy(real_t).to(dev)
    response = energy_response_t(images, conds)
    resp_scale = float(response.std().clamp_min(1e-6))
    edges = torch.as_tensor(momentum_quantile_edges(train.p_abs, cfg.n_bins), dtype=torch.float32, device=dev)

    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_g, betas=(0.0, 0.9))
    opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.lr_c, betas=(0.0, 0.9))
    sampler = torch.Generator(device="cpu").manual_seed(cfg.seed)
    history = []

    def batch() -> torch.Tensor:
        return torch.randint(0, images.shape[0], (cfg.batch_size,), generator=sampler).to(dev)

    generator.train()
    for step in tqdm(range(cfg.steps), desc="finetune", disable=progress_disabled(progress)):
        for _ in range(cfg.n_critic):
            idx = batch()
            real, cond = images[idx], conds[idx]
            with torch.no_grad():
                fake = generator(torch.randn(len(idx), generator.noise_dim, device=dev), cond)
            f_real, f_fake = critic_features(real, cond), critic_features(fake, cond)
            wdist = critic(f_real, cond).mean() - critic(f_fake, cond).mean()
            gp, _ = gradient_penalty(critic, f_real, f_fake, cond, weight=cfg.gp_weight)
            opt_c.zero_grad(set_to_none=True)
            (gp - wdist).backward()
            opt_c.step()
        idx = batch()
        cond = conds[idx]
        bins = momentum_bins(cond, edges)
        fake = generator(torch.randn(len(idx), generator.noise_dim, device=dev), cond)
        adv = -critic(critic_features(fake, cond), cond).mean()
        phys = torch.zeros((), device=dev)
        if surrogate is not None:
            pred = surrogate.standardised(fake, cond)
            real_std = (real_t_dev[idx] - surrogate.target_mean) / surrogate.target_std
            phys = phys + distribution_loss(cfg.loss, pred, real_std, bins, cfg.n_bins, seed=step)
        if "energy_response" in names:
            g, r = energy_response_t(fake, cond) / resp_scale, response[idx] / resp_scale
            phys = phys + distribution_loss(cfg.loss, g[:, None], r[:, None], bins, cfg.n_bins, seed=step)
        opt_g.zero_grad(set_to_none=True)
        (adv + cfg.weight * phys).backward()
        opt_g.step()
        ema.update(generator)
        if surrogate is not None:  # keep the surrogate accurate on real and on the current generated images
            surrogate_step(surrogate, opt_s, images[idx], cond, real_t_dev[idx])
            fake_np = fake.detach().clamp_min(0).cpu().numpy()
            sub = train.subset(idx.cpu().numpy())
            fake_t = target_values(physical_statistics(fake_np, sub.point, sub.momentum), sur_names)
            surrogate_step(surrogate, opt_s, fake.detach(), cond, torch.from_numpy(fake_t).to(dev))
        history.append(
            {
                "step": step,
                "adv": float(adv.detach()),
                "phys": float(phys.detach()),
                "wdist": float(wdist.detach()),
            }
        )

    new_ckpt = dict(ckpt)
    new_ckpt.update(
        generator=generator.state_dict(), generator_ema=ema.state_dict(), critic=critic.state_dict(),
        opt_g=opt_g.state_dict(), opt_c=opt_c.state_dict(), step=int(ckpt["step"]) + cfg.steps,
        finetune={"targets": names, "config": asdict(cfg), "source": str(checkpoint)},
    )  # fmt: skip
    result = compare_generators(before, ema.model.eval(), val, names, data_dir, out_dir, cfg, dev)
    result.update(targets=names, config=asdict(cfg), checkpoint=str(checkpoint), history_tail=history[-5:])
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(out_dir / "checkpoint.pt", new_ckpt)
    atomic_write_json(out_dir / "results.json", result)
    atomic_write_text(out_dir / "report.md", render_report(result))
    return result


def compare_generators(
    before, after, val: CaloData, names, data_dir, out_dir: Path, cfg: FinetuneConfig, dev
) -> dict:
    """Targeted-statistic distances (overall and per |p| bin) and the overall score, before vs after."""
    if cfg.eval_events and len(val) > cfg.eval_events:
        val = val.subset(np.random.default_rng(cfg.seed).choice(len(val), cfg.eval_events, replace=False))
    gens = {
        k: generate(g, val, seed=cfg.seed + 1, device=dev) for k, g in (("before", before), ("after", after))
    }
    bins, p_edges = momentum_quantile_bins(val.p_abs, cfg.n_bins)
    real = statistic_table(val.energy, val, names)
    tables = {k: statistic_table(v, val, names) for k, v in gens.items()}
    out: dict = {"n_events": len(val), "p_bin_edges": p_edges, "statistics": {}}
    for name in names:
        entry = {k: distances(tables[k][name], real[name], bins, cfg.n_bins) for k in gens}
        w1b, w1a = entry["before"]["w1"], entry["after"]["w1"]
        entry["w1_change"] = (w1a - w1b) / w1b if w1b > 0 else None
        col = 10 if name == "sparsity" else 0
        label = (
            name if name in DIRECT_TARGETS else target_labels([name])[col].replace("log1p(", "").rstrip(")")
        )
        plot_histograms(out_dir / f"hist_{name}.png", label,
                        real[name][:, col : col + 1], {k: t[name][:, col : col + 1] for k, t in tables.items()})  # fmt: skip
        entry["plot"] = f"hist_{name}.png"
        out["statistics"][name] = entry
    embedder = load_data_embedder(data_dir, dev)
    out["score"] = {k: score_images(v, val, embedder, cfg, dev) for k, v in gens.items()}
    out["score_uses_embedder"] = embedder is not None
    return out


def render_report(result: dict) -> str:
    """Markdown report of a fine-tuning run."""
    edges = result["p_bin_edges"]
    lines = [
        "# Fine-tuning report",
        "",
        f"Targets: {', '.join(result['targets'])}; loss `{result['config']['loss']}`, weight "
        f"{result['config']['weight']}, {result['config']['steps']} steps; evaluated on {result['n_events']} "
        "validation events (EMA generators before and after, same noise seed).",
        "",
        "## Targeted statistics: distance to real (lower is better)",
        "",
        "| statistic | |p| bin (GeV) | W1 before | W1 after | KS before | KS after |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in result["statistics"].items():
        b, a = e["before"], e["after"]
        lines.append(f"| {name} | all | {b['w1']:.4g} | {a['w1']:.4g} | {b['ks']:.3f} | {a['ks']:.3f} |")
        for i in range(len(b["w1_bins"])):
            rng = f"{edges[i]:.1f}–{edges[i + 1]:.1f}"
            lines.append(
                f"| | {rng} | {b['w1_bins'][i]:.4g} | {a['w1_bins'][i]:.4g} | {b['ks_bins'][i]:.3f} | {a['ks_bins'][i]:.3f} |"
            )
    lines += ["", "Change of W1 (all events): " + ", ".join(
        f"{n} {100 * e['w1_change']:+.1f}%" for n, e in result["statistics"].items() if e["w1_change"] is not None)]  # fmt: skip
    lines += ["", "## Overall score (min of the PRD AUCs; ± its std over clustering runs)", "",
              "| model | score | ± std | AUC_img | AUC_phys | real-vs-real ceiling |", "|---|---|---|---|---|---|"]  # fmt: skip

    def fmt(v) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for k, s in result["score"].items():
        lines.append(f"| {k} | {fmt(s.get('score'))} | {fmt(s.get('score_std'))} | {fmt(s.get('auc_img'))} | "
                     f"{fmt(s.get('auc_phys'))} | {fmt(s.get('ceiling'))} |")  # fmt: skip
    if not result.get("score_uses_embedder"):
        lines += ["", "No DATA/embedder.safetensors: the score is AUC_phys only."]
    lines += ["", "## Histograms", ""] + [f"![{n}]({e['plot']})" for n, e in result["statistics"].items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m calogan.finetune", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="training checkpoint (best.pt / last.pt)")
    p.add_argument("--data", default="data", help="data directory the checkpoint was trained on")
    p.add_argument("--target", required=True, help="comma list of: " + ", ".join(TARGET_NAMES))
    p.add_argument("--weight", type=float, default=None, help="weight of the physics loss (default 1)")
    p.add_argument(
        "--loss", choices=LOSSES, default=None, help="distribution-matching loss (default wasserstein)"
    )
    p.add_argument("--preset", choices=tuple(PRESETS), default="quick")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: parse options, validate them, run :func:`finetune` and print a summary."""
    args = build_parser().parse_args(argv)
    names = parse_targets(args.target)
    cfg = FinetuneConfig(**PRESETS[args.preset], seed=args.seed)
    for key in ("weight", "loss", "steps"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if cfg.steps < 0 or cfg.weight < 0:
        raise InputError("--steps and --weight must be >= 0")
    require_file(Path(args.checkpoint), hint="pass a checkpoint written by `python -m calogan.train`")
    result = finetune(args.checkpoint, args.data, names, args.out, cfg, args.device, progress=True)
    for name, e in result["statistics"].items():
        print(f"{name}: W1 {e['before']['w1']:.4g} -> {e['after']['w1']:.4g}")
    s = result["score"]
    print(
        f"score: {s['before'].get('score')} -> {s['after'].get('score')}; report: {Path(args.out) / 'report.md'}"
    )
    return 0
