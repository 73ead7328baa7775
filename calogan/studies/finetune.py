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
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ks_2samp, wasserstein_distance

from calogan.core import options
from calogan.core.engine import (
    ENGINE_OPTION_FIELDS,
    LIFT_BUDGET_OPTION,
    RUN_LENGTH_FIELDS,
    AdversarialEngine,
    AdversarialTask,
    Batch,
    EngineSettings,
    add_engine_options,
    add_run_length_options,
    check_engine_settings,
)
from calogan.core.errors import InputError
from calogan.core.rundir import Requested, RunSetup, check_run_path, deadline, with_defaults
from calogan.core.runtime import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    seed_everything,
    select_device,
)
from calogan.ecal.data import ENERGY_UNITS_PER_GEV, CaloData, load_npz, require_file, split_path
from calogan.ecal.models import (
    CHECKPOINT_FORMAT,
    build_critic,
    build_generator,
    check_checkpoint,
    critic_features,
    load_checked_checkpoint,
)
from calogan.ecal.physics import (
    energy_response,
    momentum_bins,
    momentum_quantile_bins,
    momentum_quantile_edges,
    physical_statistics,
)
from calogan.ecal.predict import generate
from calogan.ecal.soft_stats import energy_response_t
from calogan.metrics.embedder import load_data_embedder
from calogan.metrics.plots import save_png, subplots
from calogan.metrics.scoring import headline_scores
from calogan.studies.surrogate import (
    DIRECT_TARGETS,
    LOSSES,
    TARGET_COLUMNS,
    TARGET_NAMES,
    distribution_loss,
    parse_targets,
    surrogate_step,
    target_labels,
    target_values,
    train_surrogate,
)


@dataclass
class FinetuneConfig(EngineSettings):
    """Knobs of one fine-tuning run: the engine's settings and the physics losses' (presets set some)."""

    # the engine's settings (EngineSettings), with this trainer's defaults where they differ
    steps: int = 600
    n_critic: int = 1  # as the quick training preset (TTUR: critic lr above the generator's)
    lr_c: float = 4e-4
    ema_decay: float = 0.99
    # the physics losses' settings
    weight: float = 1.0
    loss: str = "wasserstein"
    n_bins: int = 4
    surrogate_pretrain: int = 300
    eval_events: int = 5000
    clusters: int = 20
    runs: int = 10


PRESETS: dict[str, dict] = {
    "tiny": dict(
        steps=4, batch_size=32, n_critic=1, surrogate_pretrain=20, eval_events=300, clusters=5, runs=2
    ),
    "quick": dict(),
    "full": dict(steps=3000, batch_size=128, surrogate_pretrain=2000, eval_events=0, clusters=100, runs=20),
}


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
    return save_png(fig, path, dpi=90)


# ------------------------------------------------------------------ the fine-tuning loop


class FinetuneTask(AdversarialTask):
    """The ECAL shower task with physics losses: the targets' distributions per |p| bin, matched to the real ones."""

    format = CHECKPOINT_FORMAT

    def __init__(self, source: dict, train: CaloData, names: list[str], cfg: FinetuneConfig,
                 fields: dict, device: torch.device, progress: bool):  # fmt: skip
        self.cfg, self.names, self.fields, self.device, self.train = cfg, names, fields, device, train
        mcfg = self.mcfg = source["model_config"]
        self.generator, self.critic = build_generator(mcfg).to(device), build_critic(mcfg).to(device)
        self.images = torch.from_numpy(train.energy).to(device)
        self.conds = torch.from_numpy(train.conditions()).to(device)
        self.surrogate_names = [n for n in names if n not in DIRECT_TARGETS]
        self.surrogate = self.opt_s = None
        if self.surrogate_names:
            real = target_values(
                physical_statistics(train.energy, train.point, train.momentum), self.surrogate_names
            )
            self.real_targets = torch.from_numpy(real).to(device)
            self.surrogate = train_surrogate(train.energy, train.conditions(), real, steps=cfg.surrogate_pretrain,
                                             seed=cfg.seed, device=device, progress=progress)  # fmt: skip
            self.opt_s = torch.optim.Adam(self.surrogate.parameters(), lr=5e-4)
        self.response = energy_response_t(self.images, self.conds)
        self.response_scale = float(self.response.std().clamp_min(1e-6))
        edges = momentum_quantile_edges(train.p_abs, cfg.n_bins)
        self.edges = torch.as_tensor(edges, dtype=torch.float32, device=device)

    def sample(self, rng: torch.Generator, batch_size: int) -> Batch:
        idx = torch.randint(0, self.images.shape[0], (batch_size,), generator=rng).to(self.device)
        return Batch(self.images[idx], self.conds[idx], index=idx)

    def critic_view(self, events: torch.Tensor, cond: torch.Tensor, step: int) -> torch.Tensor:
        return critic_features(events, cond, float(self.mcfg.get("units_per_gev", ENERGY_UNITS_PER_GEV)))

    def extra_generator_losses(self, fake: torch.Tensor, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        cfg, idx, cond = self.cfg, batch.index, batch.cond
        bins = momentum_bins(cond, self.edges)
        phys = torch.zeros((), device=self.device)
        if self.surrogate is not None:
            pred = self.surrogate.standardised(fake, cond)
            real = (self.real_targets[idx] - self.surrogate.target_mean) / self.surrogate.target_std
            phys = phys + distribution_loss(cfg.loss, pred, real, bins, cfg.n_bins, seed=step)
        if "energy_response" in self.names:
            g, r = (
                energy_response_t(fake, cond) / self.response_scale,
                self.response[idx] / self.response_scale,
            )
            phys = phys + distribution_loss(cfg.loss, g[:, None], r[:, None], bins, cfg.n_bins, seed=step)
        return {"physics": cfg.weight * phys}

    def after_generator_step(self, fake: torch.Tensor, batch: Batch, step: int) -> None:
        """Keep the surrogate accurate on real and on the current generated images."""
        if self.surrogate is None:
            return
        idx = batch.index
        surrogate_step(self.surrogate, self.opt_s, batch.real, batch.cond, self.real_targets[idx])
        sub = self.train.subset(idx.cpu().numpy())
        stats = physical_statistics(fake.clamp_min(0).cpu().numpy(), sub.point, sub.momentum)
        fake_targets = torch.from_numpy(target_values(stats, self.surrogate_names)).to(self.device)
        surrogate_step(self.surrogate, self.opt_s, fake, batch.cond, fake_targets)

    def checkpoint_fields(self) -> dict:
        return self.fields

    def extra_state(self) -> dict:
        if self.surrogate is None:
            return {}
        return {"surrogate": self.surrogate.state_dict(), "opt_surrogate": self.opt_s.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if self.surrogate is not None and state:
            self.surrogate.load_state_dict(state["surrogate"])
            self.opt_s.load_state_dict(state["opt_surrogate"])


def finetune(
    checkpoint: str | os.PathLike | None,
    data_dir: str | os.PathLike,
    targets: Sequence[str] | None,
    out_dir: str | os.PathLike,
    cfg: FinetuneConfig | None = None,
    device: str | None = "auto",
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    requested: Requested | None = None,
) -> dict:
    """Fine-tune the checkpoint's generator on the target statistics; write OUT/{checkpoint.pt, report.md, ...}.

    OUT is a run directory (config.json, metrics.jsonl, checkpoints/last.pt): ``resume`` continues an
    interrupted fine-tuning exactly (its saved checkpoint, targets and settings win, except the total steps,
    where ``cfg.steps`` 0 keeps the run's, and the run length and checkpoint intervals, which are ``cfg``'s;
    ``requested`` options that differ from them are refused); an existing OUT is replaced only with ``overwrite``.
    """
    cfg = cfg or FinetuneConfig()
    out_dir = Path(out_dir)
    with RunSetup(out_dir, resume=resume, overwrite=overwrite, allowed=RESUME_CHANGES) as setup:
        saved = None
        if resume:
            saved = setup.resume(_resumable, requested, recorded=_recorded_settings)
            info = saved["finetune"]
            checkpoint, targets = info["source"], info["targets"]
            length = {k: getattr(cfg, k) for k in RUN_LENGTH_FIELDS}  # how long and how often: the caller's
            cfg = dataclasses.replace(
                FinetuneConfig(**info["config"]), steps=cfg.steps or info["config"]["steps"], **length
            )
        check_engine_settings(cfg)
        names = list(targets or [])
        source = load_checked_checkpoint(checkpoint, data_dir)
        train = load_npz(require_file(split_path(data_dir, "train")), require_energy=True)
        val = load_npz(require_file(split_path(data_dir, "val", "solution")), require_energy=True)
        dev = select_device(device)
        seed_everything(cfg.seed)

        # the fine-tuned checkpoint stays a training checkpoint of the same model (predict, export, resume read it)
        fields = {
            k: source[k] for k in ("config", "model_config", "normalizer", "data_sha256") if k in source
        }
        fields["finetune"] = {"targets": names, "config": asdict(cfg), "source": str(checkpoint)}
        task = FinetuneTask(source, train, names, cfg, fields, dev, progress)
        run = setup.start({"checkpoint": str(checkpoint), "data": str(data_dir), **fields["finetune"]})
        budget = deadline(cfg.max_minutes, time.perf_counter())
        engine = AdversarialEngine(
            task, cfg, run, dev, progress, budget, description="finetune", lift_budget=LIFT_BUDGET_OPTION
        )
        try:
            engine.start_from(source)
            before = copy.deepcopy(engine.ema.model).eval()
        except (RuntimeError, KeyError) as exc:
            problem = str(exc)[:150]
            raise InputError(f"{checkpoint}: weights do not fit the architecture ({problem})") from None
        if saved is not None:
            engine.load(saved)
        engine.fit()

        final = engine.checkpoint()
        final["step"] = int(source["step"]) + engine.step  # generator steps since the start of training
        result = compare_generators(before, engine.ema.model.eval(), val, names, data_dir, out_dir, cfg, dev)
        result.update(targets=names, config=asdict(cfg), checkpoint=str(checkpoint),
                      history_tail=[json.loads(ln) for ln in run.log_path.read_text().splitlines()[-5:]])  # fmt: skip
        atomic_torch_save(out_dir / "checkpoint.pt", final)
        atomic_write_json(out_dir / "results.json", result)
        atomic_write_text(out_dir / "report.md", render_report(result))
    return result


#: The options a resumed fine-tuning may change (every other setting is the run's own).
RESUME_CHANGES = "--steps, --max-minutes, --checkpoint-every, --keep-every, --device and --data"


def _resumable(checkpoint: dict, path: Path) -> dict:
    """``checkpoint`` when it is a fine-tuning run's last.pt (else InputError)."""
    checkpoint = check_checkpoint(checkpoint, path)
    info = checkpoint.get("finetune")
    if not isinstance(info, dict) or not info:
        raise InputError(f"{path}: not a fine-tuning checkpoint (no 'finetune' entry)")
    return checkpoint


def _recorded_settings(recorded: dict) -> dict:
    """A fine-tuning run's config.json as flat settings: its source checkpoint, targets and FinetuneConfig."""
    config = recorded.get("config")
    return {**with_defaults(FinetuneConfig, config if isinstance(config, dict) else {}),
            **{k: recorded[k] for k in ("checkpoint", "targets") if k in recorded}}  # fmt: skip


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
    out["score"] = {
        k: headline_scores(v, val, embedder, cfg.clusters, cfg.runs, dev) for k, v in gens.items()
    }
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
    p = options.ArgumentParser(prog="python -m calogan.finetune", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="training checkpoint (best.pt / last.pt); required")
    p.add_argument("--data", default="data", help="data directory the checkpoint was trained on")
    p.add_argument("--target", default=None, help="comma list of: " + ", ".join(TARGET_NAMES) + "; required")
    p.add_argument(
        "--weight",
        type=options.nonnegative_float,
        default=None,
        help="weight of the physics loss (default 1)",
    )
    p.add_argument(
        "--loss", choices=LOSSES, default=None, help="distribution-matching loss (default wasserstein)"
    )
    p.add_argument("--preset", choices=tuple(PRESETS), default="quick")
    p.add_argument(
        "--steps", type=options.count(1), default=None, help="generator steps (with --resume: new total)"
    )
    p.add_argument("--out", default=None, help="output directory (a run directory); required")
    add_engine_options(p, ema_help="default 0.99")  # as in rich.train; calogan.train: --set FIELD=VALUE
    add_run_length_options(p, "default: none")
    p.add_argument("--seed", type=options.seed, default=None, help="random seed (default 0)")
    p.add_argument("--device", default="auto")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    where.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN_DIR",
        help="continue the interrupted fine-tuning in RUN_DIR (its checkpoint, targets and settings); "
        "the older --out RUN_DIR --resume is deprecated",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: parse options, validate them, run :func:`finetune` and print a summary."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if isinstance(args.resume, str):  # --resume RUN_DIR; a bare --resume (deprecated) resumes --out
        if args.out is not None and Path(args.out) != Path(args.resume):
            raise InputError(f"--resume {args.resume}: names another folder than --out {args.out}")
        args.out = args.resume
    missing = [
        f"--{k}"
        for k in (("out",) if args.resume else ("checkpoint", "target", "out"))
        if getattr(args, k) is None
    ]
    if missing:  # a resumed run takes its checkpoint and targets from the run
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    names = parse_targets(args.target) if args.target is not None else None
    cfg = FinetuneConfig(**PRESETS[args.preset], seed=args.seed or 0)
    for key in ("weight", "loss", "steps", *ENGINE_OPTION_FIELDS, *RUN_LENGTH_FIELDS):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.resume and args.steps is None:  # without --steps a resumed run goes on to its own total
        cfg.steps = 0
    # a file or an unwritable folder is refused now; finetune() applies --overwrite and --resume
    inputs = [args.checkpoint, *(split_path(args.data, *s) for s in (("train",), ("val", "solution")))]
    check_run_path(args.out, "--out", inputs)
    if args.checkpoint is not None:
        require_file(Path(args.checkpoint), hint="pass a checkpoint written by `python -m calogan.train`")
    # a resumed run refuses the options given that differ from its settings
    given = {"--checkpoint": ("checkpoint", args.checkpoint), "--target": ("targets", names),
             "--weight": ("weight", args.weight), "--loss": ("loss", args.loss), "--seed": ("seed", args.seed),
             **{f"--{k.replace('_', '-')}": (k, getattr(args, k)) for k in ENGINE_OPTION_FIELDS}}  # fmt: skip
    requested = {option: item for option, item in given.items() if item[1] is not None}
    result = finetune(args.checkpoint, args.data, names, args.out, cfg, args.device, progress=True,
                      overwrite=args.overwrite, resume=bool(args.resume), requested=requested)  # fmt: skip
    for name, e in result["statistics"].items():
        print(f"{name}: W1 {e['before']['w1']:.4g} -> {e['after']['w1']:.4g}")
    s = result["score"]
    print(
        f"score: {s['before'].get('score')} -> {s['after'].get('score')}; report: {Path(args.out) / 'report.md'}"
    )
    return 0
