"""Lower-variance training weights for sWeighted samples: the sWeights' conditional expectation.

sWeights are unbiased but noisy: background-like tracks carry large positive and negative weights that cancel
only on average, so a critic sees noise where the signal density is zero. Regressing the sWeight on the
observables x (kinematics and DLLs) gives E[sWeight | x] = P(signal | x) when the fit variable is
independent of x within each component (the sPlot condition). These weights have the same expectation for
every function of x, lie in [0, 1] and have a larger effective sample size (Borisyak and Kazeev,
"Machine learning on data with sPlot background subtraction", JINST 14 (2019) P08020).
The regression is cross-fitted (each event predicted by a model that did not see it), so a
weight never learns its own event's noise.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import KFold

WEIGHT_MODES = ("expected", "sweights")
"""``expected``: cross-fitted E[sWeight | x], clipped to [0, 1]; ``sweights``: the raw sWeights."""


def expected_sweights(
    features: np.ndarray, sweights: np.ndarray, n_folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Cross-fitted gradient-boosting estimate of E[sWeight | features], clipped to [0, 1] (float64)."""
    x = np.asarray(features, np.float64)
    w = np.asarray(sweights, np.float64)
    out = np.empty_like(w)
    folds = KFold(n_splits=min(n_folds, len(w)), shuffle=True, random_state=seed)
    for fit_idx, predict_idx in folds.split(x):
        reg = HistGradientBoostingRegressor(
            max_iter=300,
            learning_rate=0.1,
            min_samples_leaf=100,
            early_stopping=True,
            validation_fraction=0.15,
            random_state=seed,
        )
        out[predict_idx] = reg.fit(x[fit_idx], w[fit_idx]).predict(x[predict_idx])
    return np.clip(out, 0.0, 1.0)


def n_effective(weights: np.ndarray) -> float:
    """Kish effective sample size (sum w)^2 / sum w^2 (0 for all-zero weights)."""
    w = np.asarray(weights, np.float64)
    s2 = float((w * w).sum())
    return float(w.sum() ** 2 / s2) if s2 > 0 else 0.0
