"""RICH sample I/O and preprocessing: validated loading, a pickle-free quantile transform, the no-RICH table."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import special
from sklearn.preprocessing import QuantileTransformer

from calogan.core.errors import InputError
from calogan.ecal.data import open_npz
from calogan.rich import DLL_COLUMNS, INPUT_COLUMNS, PARTICLES, SENTINEL, WEIGHT_COLUMN


@dataclass
class RichSample:
    """One calibration sample: inputs (N,3) = P, ETA, NTRACKS; dlls (N,5); signal sWeights (N,)."""

    inputs: np.ndarray
    dlls: np.ndarray
    weights: np.ndarray
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.weights)

    @property
    def has_rich(self) -> np.ndarray:
        """True where the track carries RICH information (no -999 sentinel)."""
        return (self.dlls > SENTINEL + 1.0).all(axis=1)

    def subset(self, index: np.ndarray | slice) -> RichSample:
        return RichSample(self.inputs[index], self.dlls[index], self.weights[index], self.path)


def check_particle(particle: str) -> str:
    """Return particle if known, else raise InputError (exit 2 in a CLI)."""
    if particle not in PARTICLES:
        raise InputError(f"--particle: unknown particle '{particle}' (use one of {', '.join(PARTICLES)})")
    return particle


def sample_path(data_dir: str | os.PathLike, particle: str, sample: str = "train") -> Path:
    """DIR/rich_{particle}_{sample}.npz (the layout written by calogan.rich.simulate)."""
    return Path(data_dir) / f"rich_{check_particle(particle)}_{sample}.npz"


def require_sample(path: str | os.PathLike) -> Path:
    """The path of a sample file that exists, else InputError naming it and the command that writes it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found (run `python -m calogan.rich.simulate --out DIR` first)")
    return path


def load_sample(path: str | os.PathLike) -> RichSample:
    """Load and validate one sample file: required columns, equal lengths, finite values, usable weights."""
    path = require_sample(path)
    return sample_from_arrays(open_npz(path), path)


def sample_from_arrays(arrays: dict[str, np.ndarray], path: Path, label: str | None = None) -> RichSample:
    """Validate contract-named columns (P in GeV) read from ``path`` into a RichSample; ``label`` names the
    source in messages (default: the path; e.g. FILE:TREE for a ROOT tree)."""
    path = Path(path)
    where = label or str(path)
    needed = INPUT_COLUMNS + DLL_COLUMNS + (WEIGHT_COLUMN,)
    missing = [c for c in needed if c not in arrays]
    if missing:
        raise InputError(f"{where}: missing column(s) {', '.join(missing)}")
    cols = {}
    for c in needed:
        a = arrays[c]
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.number):
            raise InputError(f"{where}: column '{c}' must be a 1-D numeric array, got {a.dtype} {a.shape}")
        if not np.isfinite(a).all():
            raise InputError(f"{where}: column '{c}' holds {int((~np.isfinite(a)).sum())} NaN/Inf values")
        cols[c] = a.astype(np.float32)
    lengths = {len(a) for a in cols.values()}
    if len(lengths) != 1:
        raise InputError(f"{where}: columns have different lengths {sorted(lengths)}")
    if len(cols[WEIGHT_COLUMN]) < 10:
        raise InputError(f"{where}: only {len(cols[WEIGHT_COLUMN])} rows, need at least 10")
    w = cols[WEIGHT_COLUMN]
    if not np.any(w != 0):
        raise InputError(f"{where}: all sWeights are zero")
    if w.sum() <= 0:
        raise InputError(f"{where}: sum of sWeights is {w.sum():.3g} (must be positive)")
    if (cols["P"] <= 0).any():
        raise InputError(f"{where}: column 'P' must be positive")
    inputs = np.stack([cols[c] for c in INPUT_COLUMNS], 1)
    dlls = np.stack([cols[c] for c in DLL_COLUMNS], 1)
    return RichSample(inputs, dlls, w, path)


def model_inputs(inputs: np.ndarray) -> np.ndarray:
    """Features fed to the quantile transform: log P, ETA, NTRACKS (float64)."""
    x = np.asarray(inputs, np.float64).copy()
    x[:, 0] = np.log(x[:, 0])
    return x


DLL_BASES = ("adjacent", "emu", "raw")
"""Output parameterisations of the GAN. ``adjacent`` models likelihood differences between neighbouring mass
hypotheses (e-mu, mu-pi, K-pi, p-K, below-threshold-p) instead of the five DLLs against the pion:
RichDLLe - RichDLLmu, RichDLLmu, RichDLLk, RichDLLp - RichDLLk, RichDLLbt - RichDLLp. Neighbours become
indistinguishable where both saturate (e and mu at high momentum: DLLe and DLLmu correlate at 0.99) or both are
below threshold (identical likelihoods: the difference is exactly zero for a large fraction of tracks, a point
mass the quantile transform reproduces exactly). A continuous generator cannot produce such ties or
near-deterministic relations between raw columns, but learns a small or zero difference easily. ``raw`` models
the five DLLs as they are; ``emu`` takes only the e-mu difference (no exact ties). All are exact,
unit-triangular linear maps."""

# (column, column it is taken relative to) in DLL_COLUMNS order, in the order they are undone:
# adjacent: e-mu, p-K, bt-p (mu and K stay against pi); emu: e-mu only
_BASIS_PAIRS = {"adjacent": ((0, 1), (3, 2), (4, 3)), "emu": ((0, 1),), "raw": ()}


def check_dll_basis(basis: str) -> str:
    """Return basis if known, else raise InputError."""
    if basis not in DLL_BASES:
        raise InputError(f"--dll-basis: unknown basis '{basis}' (use one of {', '.join(DLL_BASES)})")
    return basis


def to_basis(dlls: np.ndarray, basis: str) -> np.ndarray:
    """Map (N, 5) DLLs to the GAN's output parameterisation (float64)."""
    x = np.asarray(dlls, np.float64)
    y = x.copy()
    for col, ref in _BASIS_PAIRS[check_dll_basis(basis)]:
        y[:, col] = x[:, col] - x[:, ref]
    return y


def from_basis(y: np.ndarray, basis: str) -> np.ndarray:
    """Inverse of to_basis: (N, 5) parameterised outputs -> DLLs (float32); exact zeros give exact ties."""
    y = np.asarray(y, np.float64)
    dlls = y.copy()
    for col, ref in _BASIS_PAIRS[check_dll_basis(basis)]:
        dlls[:, col] = y[:, col] + dlls[:, ref]
    return dlls.astype(np.float32)


class QuantileNormal:
    """sklearn QuantileTransformer (to a normal) whose state is two plain arrays, so no pickle is needed."""

    def __init__(self, transformer: QuantileTransformer):
        self.qt = transformer

    @classmethod
    def fit(cls, x: np.ndarray, n_quantiles: int = 1000, seed: int = 0) -> QuantileNormal:
        """Fit on x (N, d)."""
        n_q = int(min(n_quantiles, len(x)))
        qt = QuantileTransformer(
            n_quantiles=n_q, output_distribution="normal", subsample=10**6, random_state=seed
        )
        return cls(qt.fit(np.asarray(x, np.float64)))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return self.qt.transform(np.asarray(x, np.float64)).astype(np.float32)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        return self.qt.inverse_transform(np.asarray(z, np.float64)).astype(np.float32)

    def uniform_bounds(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper CDF value (N, d) of each entry; they differ only for values tied in the fit.

        sklearn's transform maps a tied value to the middle of its CDF step, i.e. a point mass in the normal
        space that a continuous generator cannot match. Drawing u uniformly in [lower, upper] instead
        (``normal_from_uniform``) spreads the tie over its step; inverse_transform maps the whole step back
        to the tied value, so ties survive the round trip.
        """
        x = np.asarray(x, np.float64)
        q, r = self.qt.quantiles_, self.qt.references_
        upper = np.column_stack([np.interp(x[:, j], q[:, j], r) for j in range(x.shape[1])])
        lower = np.column_stack([-np.interp(-x[:, j], -q[::-1, j], -r[::-1]) for j in range(x.shape[1])])
        return lower, upper

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted state: quantiles (n_q, d) and references (n_q,)."""
        return {"quantiles": self.qt.quantiles_.copy(), "references": self.qt.references_.copy()}

    @classmethod
    def from_arrays(cls, quantiles: np.ndarray, references: np.ndarray) -> QuantileNormal:
        """Rebuild a fitted transformer from to_arrays() output (e.g. tensors from a checkpoint)."""
        q = np.asarray(quantiles, np.float64)
        qt = QuantileTransformer(n_quantiles=q.shape[0], output_distribution="normal")
        qt.quantiles_ = q
        qt.references_ = np.asarray(references, np.float64)
        qt.n_quantiles_ = q.shape[0]
        qt.n_features_in_ = q.shape[1]
        return cls(qt)


UNIFORM_CLIP = 1e-7  # sklearn's BOUNDS_THRESHOLD: CDF values are kept in [1e-7, 1 - 1e-7]


def normal_from_uniform(u):
    """Standard-normal quantile of CDF values u (numpy array or torch tensor), clipped as sklearn does."""
    if isinstance(u, np.ndarray):
        return special.ndtri(np.clip(u, UNIFORM_CLIP, 1 - UNIFORM_CLIP))
    return torch.special.ndtri(u.clamp(UNIFORM_CLIP, 1 - UNIFORM_CLIP))


# Binning of the no-RICH probability table: log-spaced P, uniform eta.
NORICH_P_EDGES = np.geomspace(1.0, 1000.0, 13)
NORICH_ETA_EDGES = np.linspace(1.0, 6.0, 21)


def fit_no_rich_table(sample: RichSample, min_weight: float = 20.0) -> np.ndarray:
    """Weighted fraction of tracks without RICH info per (P, eta) bin; sparse bins fall back to the total."""
    ip, ie = _norich_bins(sample.inputs)
    shape = (len(NORICH_P_EDGES) - 1, len(NORICH_ETA_EDGES) - 1)
    flat = ip * shape[1] + ie
    w = sample.weights.astype(np.float64)
    tot = np.bincount(flat, w, shape[0] * shape[1])
    miss = np.bincount(flat, w * ~sample.has_rich, shape[0] * shape[1])
    overall = float(np.clip((w * ~sample.has_rich).sum() / w.sum(), 0.0, 1.0))
    frac = np.where(tot > min_weight, miss / np.where(tot > 0, tot, 1.0), overall)
    return np.clip(frac, 0.0, 1.0).reshape(shape)


def no_rich_probability(table: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Look up the no-RICH probability of each track in a fit_no_rich_table() table."""
    ip, ie = _norich_bins(inputs)
    return np.asarray(table)[ip, ie]


def _norich_bins(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ip = np.clip(np.searchsorted(NORICH_P_EDGES, inputs[:, 0]) - 1, 0, len(NORICH_P_EDGES) - 2)
    ie = np.clip(np.searchsorted(NORICH_ETA_EDGES, inputs[:, 1]) - 1, 0, len(NORICH_ETA_EDGES) - 2)
    return ip, ie
