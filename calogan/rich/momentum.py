"""Momentum-aware training aids for the RICH GANs: balanced batches and momentum-dependent output scaling.

The DLL responses change fastest with momentum: above the Cherenkov thresholds the rings of neighbouring mass
hypotheses converge, and a pion's DLLk, spread over tens of units at 10 GeV, lies within a few units of 0 above
60 GeV. The marginal quantile transform of the outputs gives that narrow high-momentum band a sliver of its normal
range, so a small blur of the generator there becomes a wide tail in DLL units. Two remedies, both optional:

* :func:`momentum_sampling` draws training tracks more often where log P is thinly populated;
* :class:`MomentumScaling` standardises each output column by its median and spread in log-P bins before the
  quantile transform (and undoes it after generation), so the band is as wide as any other in the normal space.
  Its torch form for the exported graph is calogan.rich.export.MomentumRestore.
"""

from __future__ import annotations

import numpy as np
import torch

#: log-P bins, equal width between the 0.1 % and 99.9 % quantiles of the training tracks
MOMENTUM_BINS = 20
#: a bin sets a knot of the output scaling only with at least this many tracks (its neighbours interpolate)
MIN_BIN_TRACKS = 100
#: the scale of a column in a bin is at least this fraction of its scale over all tracks (guards point masses)
MIN_RELATIVE_SCALE = 0.02
#: interquartile range of a standard normal: IQR / this estimates the standard deviation robustly
NORMAL_IQR = 1.3489795


def log_p_bins(log_p: np.ndarray, n_bins: int = MOMENTUM_BINS) -> np.ndarray:
    """Bin index (0 .. n_bins-1) of each track; outliers beyond the 0.1 % / 99.9 % quantiles join the end bins."""
    lo, hi = np.quantile(log_p, [0.001, 0.999])
    inner = np.linspace(lo, hi, n_bins + 1)[1:-1]
    return np.searchsorted(inner, log_p)


def momentum_sampling(log_p: np.ndarray, alpha: float) -> torch.Tensor | None:
    """Per-track draw probabilities ~ (tracks in the same log-P bin)^-alpha, or None for alpha = 0 (uniform)."""
    if alpha == 0:
        return None
    bins = log_p_bins(np.asarray(log_p, np.float64))
    counts = np.bincount(bins, minlength=MOMENTUM_BINS)
    prob = counts[bins].astype(np.float64) ** -alpha
    return torch.from_numpy(prob / prob.sum())


class MomentumScaling:
    """y = (x - centre(log P)) / scale(log P), per output column; centre and scale piecewise linear in log P.

    Knots sit at the mean log P of each well-populated bin; between knots the values are interpolated and beyond
    the end knots they stay constant (``np.interp``). Centre: the median; scale: interquartile range / 1.349, at
    least MIN_RELATIVE_SCALE of the column's overall scale. Unweighted, like the quantile transform it precedes:
    it is a bijection for every momentum, so the choice changes the parameterisation, not the target.
    """

    def __init__(self, knots: np.ndarray, centre: np.ndarray, scale: np.ndarray):
        self.knots = np.asarray(knots, np.float64)  # (n,)
        self.centre = np.asarray(centre, np.float64)  # (n, d)
        self.scale = np.asarray(scale, np.float64)  # (n, d)

    @classmethod
    def fit(cls, log_p: np.ndarray, outputs: np.ndarray) -> MomentumScaling:
        """Fit on the training tracks' log P (N,) and outputs (N, d) in the GAN's basis."""
        log_p, outputs = np.asarray(log_p, np.float64), np.asarray(outputs, np.float64)
        bins = log_p_bins(log_p)
        q25, q75 = np.quantile(outputs, [0.25, 0.75], axis=0)
        floor = MIN_RELATIVE_SCALE * np.maximum((q75 - q25) / NORMAL_IQR, 1e-12)
        knots, centre, scale = [], [], []
        for b in range(MOMENTUM_BINS):  # a loop over 20 bins, not over tracks
            inside = bins == b
            if inside.sum() < MIN_BIN_TRACKS:
                continue
            lo, mid, hi = np.quantile(outputs[inside], [0.25, 0.5, 0.75], axis=0)
            knots.append(log_p[inside].mean())
            centre.append(mid)
            scale.append(np.maximum((hi - lo) / NORMAL_IQR, floor))
        if not knots:  # too few tracks for any bin: the overall median and spread, constant in log P
            centre = [np.median(outputs, axis=0)] * 2
            scale = [np.maximum((q75 - q25) / NORMAL_IQR, floor)] * 2
            knots = [np.median(log_p), np.median(log_p) + 1.0]
        elif len(knots) == 1:  # two knots keep the interpolation well defined (constant)
            knots, centre, scale = [knots[0], knots[0] + 1.0], centre * 2, scale * 2
        return cls(np.array(knots), np.array(centre), np.array(scale))

    def _at(self, log_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        log_p = np.asarray(log_p, np.float64)
        centre = np.column_stack([np.interp(log_p, self.knots, c) for c in self.centre.T])
        scale = np.column_stack([np.interp(log_p, self.knots, s) for s in self.scale.T])
        return centre, scale

    def standardise(self, outputs: np.ndarray, log_p: np.ndarray) -> np.ndarray:
        """(N, d) outputs -> (N, d) standardised values (float64)."""
        centre, scale = self._at(log_p)
        return (np.asarray(outputs, np.float64) - centre) / scale

    def restore(self, y: np.ndarray, log_p: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`standardise` (float64)."""
        centre, scale = self._at(log_p)
        return np.asarray(y, np.float64) * scale + centre

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted state: knots (n,), centre (n, d), scale (n, d)."""
        return {"knots": self.knots.copy(), "centre": self.centre.copy(), "scale": self.scale.copy()}

    @classmethod
    def from_arrays(cls, knots, centre, scale) -> MomentumScaling:
        """Rebuild from :meth:`to_arrays` output (numpy arrays or checkpoint tensors)."""
        return cls(*(np.asarray(a, np.float64) for a in (knots, centre, scale)))
