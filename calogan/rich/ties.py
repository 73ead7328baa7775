"""Exact ties between DLL columns as an explicit discrete part of the RICH model.

Hypotheses below their Cherenkov threshold in every radiator have identical likelihoods, so neighbouring DLL
columns are often exactly equal (in the simulated samples DLLk = DLLp for ~30-40 % of the tracks, DLLp = DLLbt
for ~50-70 %). A continuous generator never produces an exact tie, and a classifier finds that at once. Here each
track gets a *tie pattern*: which neighbouring pairs of columns (``TIE_PAIRS``) are equal. The patterns seen in
the training sample are the classes of a small classifier on the kinematics (calogan.rich.models.TiePatternHead,
a sharp function of P near the thresholds). The GAN generates the DLLs given the pattern, and the tied columns
are then copied from their neighbour (:func:`apply_ties`), so the ties come back exact.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from calogan.core.fit import fit
from calogan.rich import DLL_COLUMNS

#: neighbouring raw DLL columns (RichDLLe, RichDLLmu, RichDLLk, RichDLLp, RichDLLbt) whose ties are modelled;
#: the second column of a tied pair takes the first one's value. (e, mu) is left to the ``emu`` basis, whose
#: DLLe - DLLmu column already makes that near-degeneracy easy to learn.
TIE_PAIRS: tuple[tuple[int, int], ...] = ((1, 2), (2, 3), (3, 4))
#: a pattern becomes a class of its own when at least this fraction of the training tracks shows it
MIN_PATTERN_FRACTION = 0.002


def tie_bits(dlls: np.ndarray) -> np.ndarray:
    """(N, len(TIE_PAIRS)) bool: which neighbouring pairs of columns are exactly equal."""
    return np.stack([dlls[:, a] == dlls[:, b] for a, b in TIE_PAIRS], axis=1)


def fit_patterns(dlls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tie patterns of a training sample: (patterns (K, len(TIE_PAIRS)) bool, label of each track (N,)).

    Pattern 0 is always "no tie". Patterns shown by fewer than MIN_PATTERN_FRACTION of the tracks are not
    modelled: those tracks are labelled 0 and their columns are generated as continuous values.
    """
    bits = tie_bits(dlls)
    seen, inverse, counts = np.unique(bits, axis=0, return_inverse=True, return_counts=True)
    none = np.zeros((1, len(TIE_PAIRS)), bool)
    frequent = [
        tuple(p)
        for p, c in zip(seen, counts, strict=True)
        if p.any() and c >= MIN_PATTERN_FRACTION * len(dlls)
    ]
    patterns = np.concatenate([none, np.array(frequent, bool).reshape(-1, len(TIE_PAIRS))])
    lookup = {tuple(p): k for k, p in enumerate(patterns)}
    labels_of_seen = np.array([lookup.get(tuple(p), 0) for p in seen])  # one entry per distinct pattern
    return patterns, labels_of_seen[inverse.reshape(-1)]


def masked_columns(patterns: np.ndarray) -> np.ndarray:
    """(K, 5) float: 1 for the basis columns the GAN generates under each pattern, 0 for the tied copies.

    The second column of a pair is stored in every output basis either raw or as its difference to the first
    (calogan.rich.data.DLL_BASES), so hiding that basis column from the critic hides exactly the tied value.
    """
    keep = np.ones((len(patterns), len(DLL_COLUMNS)))
    for pair, (_, second) in enumerate(TIE_PAIRS):
        keep[patterns[:, pair], second] = 0.0
    return keep


def apply_ties(dlls: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Copy each tied pair's first column into its second, in TIE_PAIRS order (chains such as k = p = bt work).

    ``dlls`` (B, 5) raw DLLs, ``bits`` (B, len(TIE_PAIRS)) of 0/1; torch ops only, so the export graph uses it too.
    """
    cols = list(dlls.unbind(1))
    for pair, (first, second) in enumerate(TIE_PAIRS):
        cols[second] = torch.where(bits[:, pair] > 0.5, cols[first], cols[second])
    return torch.stack(cols, 1)


def draw_patterns(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Pattern index per row from class logits (B, K) and one uniform draw per row (B,): inverse-CDF sampling.

    In float64 with elementary ops (exp, cumsum, comparison), so eager code and the exported graph agree.
    """
    z = logits.double()
    p = torch.exp(z - z.max(1, keepdim=True).values)
    cdf = torch.cumsum(p, 1) / p.sum(1, keepdim=True)
    return (uniform.double().unsqueeze(1) > cdf[:, :-1]).long().sum(1)


class TieModel(nn.Module):
    """The discrete part of a RICH model: conditions and one uniform draw per track -> (one-hot pattern, tie bits).

    ``head`` maps the normalised conditions (B, 3) to the patterns' logits (B, K).
    ``patterns`` (K, len(TIE_PAIRS)) are the modelled tie patterns (row 0: no tie); the one-hot pattern is
    appended to the GAN's conditions and the bits go to :func:`apply_ties` after the output transform.
    """

    def __init__(self, head: nn.Module, patterns: np.ndarray):
        super().__init__()
        self.head = head
        self.register_buffer("patterns", torch.as_tensor(np.asarray(patterns, np.float32)))

    @property
    def n_patterns(self) -> int:
        return int(self.patterns.shape[0])

    def forward(self, conditions: torch.Tensor, uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = draw_patterns(self.head(conditions), uniform)
        one_hot = (index.unsqueeze(1) == torch.arange(self.n_patterns, device=index.device)).float()
        return one_hot, one_hot @ self.patterns


def fit_pattern_head(
    head: nn.Module,
    conditions: torch.Tensor,
    labels: np.ndarray,
    weights: np.ndarray,
    seed: int = 0,
    steps: int = 3000,
    batch_size: int = 4096,
) -> nn.Module:
    """Train a TieModel's head in place by weighted cross-entropy (the training weights: signal tracks count).

    ``head`` maps the normalised conditions (N, 3) to the logits of the patterns; ``labels`` are each track's
    pattern (:func:`fit_patterns`). Trained on the CPU, so a seed gives the same head on every machine; the
    learning rate falls linearly to 0 so the last step is a settled one. Returns the head, on the CPU.
    """
    head = head.cpu()
    cond = conditions.detach().cpu().float()
    y = torch.from_numpy(np.asarray(labels, np.int64))
    w = torch.from_numpy(np.asarray(weights, np.float32))
    w = w / w.abs().mean()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return (nn.functional.cross_entropy(head(cond[idx]), y[idx], reduction="none") * w[idx]).mean()

    def linear(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / total)

    fit(head, batch_loss, len(y), batch_size=batch_size, lr=3e-3, seed=seed, steps=steps, schedule=linear)
    return head
