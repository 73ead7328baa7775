"""The CaloChallenge 2022 classifier conventions (code/evaluate.py of CaloChallenge/homepage), adapted to one layer.

CaloChallenge's classifier test trains a DNN to tell generated (label 0) from reference (label 1) showers on two
feature sets; this module holds those feature sets, written for one 30 × 30 ECAL layer whose particles arrive
at varying points and angles, the DNN, and the protocol's settings. The protocol itself (split, training,
calibration) is :func:`calogan.metrics.two_sample.cc_classifier_test`.

Adaptation to this detector:

- energies in MeV (``ENERGY_UNITS_PER_GEV`` units per GeV), incident energy E_inc = |p|; cells below the readout
  threshold of CaloChallenge's dataset 1 (1 MeV) are zeroed in both samples before any feature;
- lengths in cm divided by 10, which is CaloChallenge's mm divided by 100;
- CaloChallenge's showers all start on the calorimeter axis; here centres and radii are measured from the
  expected shower centre (impact point extrapolated to the shower depth), and the conditions (impact point,
  direction, particle type) are appended to both feature sets;
- one layer: the layer energy equals the total energy, so it enters once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from calogan.ecal.data import CELL_CENTRES, ENERGY_UNITS_PER_GEV, IMAGE_SIZE, PDG_PHOTON, CaloData
from calogan.ecal.physics import expected_centre

#: CaloChallenge's minimal readout per voxel for dataset 1, in MeV.
THRESHOLD_MEV = 1.0
#: Competition energy units per MeV.
UNITS_PER_MEV = ENERGY_UNITS_PER_GEV / 1000.0
#: Lengths in cm are divided by this (CaloChallenge divides mm by 100).
LENGTH_SCALE_CM = 10.0
_CHUNK = 4096

#: Names of the conditions appended to both feature sets, in column order.
CONDITION_NAMES: tuple[str, ...] = ("x/10cm", "y/10cm", "px/|p|", "py/|p|", "is_photon")
#: Names of the high-level features, in column order (CaloChallenge's set for one layer, then the conditions).
HIGH_LEVEL_NAMES: tuple[str, ...] = (
    "log10 E_inc", "log10 E_tot", "centre_x", "centre_y", "width_x", "width_y", "sparsity",
    "centre_r", "width_r",
) + CONDITION_NAMES  # fmt: skip


@dataclass(frozen=True)
class CCSettings:
    """The DNN and training settings of the protocol; the defaults are reduced for CPU (docs/metrics.md)."""

    width: int = 512  # hidden nodes per layer (CaloChallenge: 2048)
    layers: int = 2  # hidden h×h layers after the input layer (CaloChallenge: 2)
    epochs: int = 50  # as CaloChallenge
    lr: float = 2e-4
    batch_size: int = 1000

    def describe(self) -> dict:
        """JSON-friendly settings."""
        return asdict(self)


#: CaloChallenge's own settings (code/evaluate.py defaults).
PUBLISHED = CCSettings(width=2048, layers=2, epochs=50)
#: The evaluator's settings, a quarter of the published width for the CPU: with 25,000 events per class the
#: high-level AUC is within noise of :data:`PUBLISHED`'s; on a few thousand events per class it reads lower
#: (docs/metrics.md, "the reduced DNN against the published one").
DEFAULT = CCSettings()


def dnn(input_dim: int, settings: CCSettings = DEFAULT) -> torch.nn.Sequential:
    """CaloChallenge's DNN: Linear + LeakyReLU blocks (input layer, ``layers`` hidden layers), one logit out."""
    w = settings.width
    blocks: list[torch.nn.Module] = [torch.nn.Linear(input_dim, w), torch.nn.LeakyReLU()]
    for _ in range(settings.layers):
        blocks += [torch.nn.Linear(w, w), torch.nn.LeakyReLU()]
    return torch.nn.Sequential(*blocks, torch.nn.Linear(w, 1))


def _cells_mev(images: np.ndarray, rows: slice) -> np.ndarray:
    """(n, 900) float64 cell energies in MeV of ``rows``, zero below the readout threshold."""
    e = np.asarray(images[rows], np.float64).reshape(-1, IMAGE_SIZE * IMAGE_SIZE) / UNITS_PER_MEV
    return np.where(e < THRESHOLD_MEV, 0.0, e)


def cc_conditions(true: CaloData) -> np.ndarray:
    """(N, 5) float32: impact point / 10 cm, transverse direction px/|p|, py/|p|, and is_photon."""
    p = true.p_abs
    m = true.momentum.astype(np.float64)
    cond = [true.point[:, 0] / LENGTH_SCALE_CM, true.point[:, 1] / LENGTH_SCALE_CM, m[:, 0] / p, m[:, 1] / p,
            (true.pdg == PDG_PHOTON).astype(np.float64)]  # fmt: skip
    return np.stack(cond, axis=1).astype(np.float32)


def low_level_features(images: np.ndarray, true: CaloData) -> np.ndarray:
    """(N, 1 + 900 + 5) float32: log10 E_inc/MeV, the 900 thresholded cells / E_inc, the conditions."""
    e_inc = true.p_abs * 1000.0
    cells = np.empty((len(images), IMAGE_SIZE * IMAGE_SIZE), np.float32)
    for s in range(0, len(images), _CHUNK):
        rows = slice(s, s + _CHUNK)
        cells[rows] = _cells_mev(images, rows) / e_inc[rows, None]
    return np.concatenate([np.log10(e_inc)[:, None].astype(np.float32), cells, cc_conditions(true)], axis=1)


def high_level_features(images: np.ndarray, true: CaloData) -> np.ndarray:
    """(N, 14) float32 in the order of :data:`HIGH_LEVEL_NAMES` (energy-weighted centres and widths in x, y, r)."""
    centre = expected_centre(true.point, true.momentum)
    xs = np.broadcast_to(CELL_CENTRES[None, :], (IMAGE_SIZE, IMAGE_SIZE)).reshape(-1)  # columns are x
    ys = np.broadcast_to(CELL_CENTRES[:, None], (IMAGE_SIZE, IMAGE_SIZE)).reshape(-1)  # rows are y
    out = np.empty((len(images), 9), np.float64)
    for s in range(0, len(images), _CHUNK):
        rows = slice(s, s + _CHUNK)
        e = _cells_mev(images, rows)
        total = e.sum(axis=1)
        norm = total + 1e-16
        dx, dy = xs[None, :] - centre[rows, :1], ys[None, :] - centre[rows, 1:]
        r = np.sqrt(dx * dx + dy * dy)
        cols = []
        for d in (dx, dy, r):  # centre and width as CaloChallenge: sqrt(max(E[d²] - E[d]², 0))
            mean = (d * e).sum(axis=1) / norm
            cols.append((mean, np.sqrt(np.clip((d * d * e).sum(axis=1) / norm - mean**2, 0.0, None))))
        (cx, wx), (cy, wy), (cr, wr) = cols
        sparsity = 1.0 - (e > 0).mean(axis=1)
        out[rows] = np.stack(
            [np.log10(true.p_abs[rows] * 1000.0), np.log10(total + 1e-8), cx / LENGTH_SCALE_CM,
             cy / LENGTH_SCALE_CM, wx / LENGTH_SCALE_CM, wy / LENGTH_SCALE_CM, sparsity,
             cr / LENGTH_SCALE_CM, wr / LENGTH_SCALE_CM], axis=1,
        )  # fmt: skip
    return np.concatenate([out.astype(np.float32), cc_conditions(true)], axis=1)


FEATURE_SETS = {"high": high_level_features, "low": low_level_features}
