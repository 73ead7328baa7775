"""Evaluation plots written as PNG files (no pyplot state touched): PRD curves, statistics histograms, shower grids, energy response."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from calogan.core.runtime import atomic_write
from calogan.ecal.data import CELL_CENTRES
from calogan.ecal.physics import STAT_NAMES, energy_response


def subplots(*args, figsize=None, layout=None, **kwargs):
    """Like ``pyplot.subplots`` on a standalone Figure: no global backend or pyplot state is touched.

    So library plots work headless, inside notebooks (whose inline backend stays active) and in threads.
    """
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(*args, **kwargs)


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out ``fig`` and write it as a PNG atomically (a kill never leaves a truncated plot)."""
    fig.tight_layout()
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))


def plot_prd(curves: dict, path: Path, title: str = "PRD curves") -> Path:
    """PRD curves (recall vs precision) of each named PRDResult, AUC in the legend."""
    fig, ax = subplots(figsize=(5, 5))
    for name, res in curves.items():
        if res is not None:
            ax.plot(res.precision, res.recall, label=f"{name} (AUC {res.auc:.3f} ± {res.auc_std:.3f})")
    ax.set(xlabel="precision", ylabel="recall", xlim=(0, 1.02), ylim=(0, 1.02), title=title)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_statistics(stats_true: np.ndarray, stats_gen: np.ndarray, path: Path, names=None) -> Path:
    """24-panel histograms of the physical statistics, real vs generated (shared binning per panel)."""
    names = list(names or STAT_NAMES)
    fig, axes = subplots(4, 6, figsize=(18, 11))
    for k, ax in enumerate(axes.ravel()):
        t, g = stats_true[:, k], stats_gen[:, k]
        lo, hi = np.percentile(np.concatenate([t, g]), [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 40)
        ax.hist(t, bins=bins, histtype="stepfilled", alpha=0.4, label="real", density=True)
        ax.hist(g, bins=bins, histtype="step", lw=1.5, label="generated", density=True)
        ax.set_title(names[k], fontsize=9)
        ax.set_ylabel("density", fontsize=7)
        ax.tick_params(labelsize=7)
    axes.ravel()[0].legend(fontsize=8)
    fig.suptitle(
        "Physical statistics (widths in cm, asymmetries and sparsity dimensionless), 0.5–99.5% range"
    )
    return save_png(fig, path)


def plot_showers(
    true_images: np.ndarray, gen_images: np.ndarray, path: Path, n: int = 6, seed: int = 0
) -> Path:
    """Grid of real (top row) vs generated (bottom row) showers for the same conditions, log colour scale."""
    idx = np.random.default_rng(seed).choice(len(true_images), size=min(n, len(true_images)), replace=False)
    fig, axes = subplots(2, len(idx), figsize=(3.2 * len(idx), 5.8), squeeze=False, layout="constrained")
    ext = (CELL_CENTRES[0] - 0.5, CELL_CENTRES[-1] + 0.5, CELL_CENTRES[0] - 0.5, CELL_CENTRES[-1] + 0.5)
    for col, i in enumerate(idx):
        vmax = max(float(true_images[i].max()), float(gen_images[i].max()), 1e-3)
        norm = LogNorm(vmin=vmax * 1e-5, vmax=vmax)
        for row, (imgs, label) in enumerate(((true_images, "real"), (gen_images, "generated"))):
            ax = axes[row, col]
            im = ax.imshow(
                np.clip(imgs[i], vmax * 1e-5, None), origin="lower", extent=ext, norm=norm, cmap="viridis"
            )
            ax.set_title(f"{label} #{i}", fontsize=9)
            ax.set_xlabel("x [cm]", fontsize=8)
            if col == 0:
                ax.set_ylabel("y [cm]", fontsize=8)
            ax.tick_params(labelsize=7)
        cbar = fig.colorbar(im, ax=axes[:, col], shrink=0.5, location="bottom")
        cbar.set_label("energy [a.u.]", fontsize=8)
        cbar.ax.tick_params(labelsize=7)
    fig.suptitle("Showers for identical conditions: real (top) vs generated (bottom)")
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))


def plot_energy_response(true_images, gen_images, momentum, path: Path, bins: int = 10) -> Path:
    """Mean energy response (sum/|p|) and resolution (std/mean) vs |p|, real vs generated."""
    p = np.linalg.norm(np.asarray(momentum, np.float64), axis=1)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    centres = np.sqrt(edges[:-1] * edges[1:])
    fig, (a1, a2) = subplots(1, 2, figsize=(10, 4))
    for images, label, marker in ((true_images, "real", "o"), (gen_images, "generated", "s")):
        r = energy_response(images, momentum)
        cnt = np.bincount(which, minlength=len(centres))
        mean = np.bincount(which, weights=r, minlength=len(centres)) / np.maximum(cnt, 1)
        var = np.bincount(which, weights=r**2, minlength=len(centres)) / np.maximum(cnt, 1) - mean**2
        std = np.sqrt(np.clip(var, 0, None))
        a1.errorbar(centres, mean, yerr=std / np.sqrt(np.maximum(cnt, 1)), marker=marker, ls="-", label=label)
        a2.plot(centres, std / np.where(mean > 0, mean, np.nan), marker=marker, label=label)
    a1.set(
        xscale="log", xlabel="|p| [GeV]", ylabel="mean image sum / |p| [a.u./GeV]", title="Energy response"
    )
    a2.set(xscale="log", xlabel="|p| [GeV]", ylabel="σ / mean of sum/|p|", title="Energy resolution")
    for ax in (a1, a2):
        ax.legend()
        ax.grid(alpha=0.3)
    return save_png(fig, path)


def make_all_plots(results: dict, out_dir: Path) -> list[Path]:
    """Write every evaluation plot for each split's :class:`calogan.metrics.scoring.ScoreResult`."""
    out_dir = Path(out_dir)
    written = []
    for split, r in results.items():
        curves = {"AUC_img (embeddings)": r.prd_img, "AUC_phys (statistics)": r.prd_phys}
        if r.prd_phys_standardised is not None:
            curves["AUC_phys standardised"] = r.prd_phys_standardised
        true, gen = r.true, r.gen_images
        written += [
            plot_prd(curves, out_dir / f"{split}_prd.png", title=f"PRD, {split} split (generated vs true)"),
            plot_statistics(r.stats_true, r.stats_gen, out_dir / f"{split}_statistics.png"),
            plot_showers(true.energy, gen, out_dir / f"{split}_showers.png"),
            plot_energy_response(true.energy, gen, true.momentum, out_dir / f"{split}_energy_response.png"),
        ]
    return written
