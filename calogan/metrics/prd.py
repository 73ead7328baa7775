"""Precision-recall for distributions (Sajjadi et al. 2018) as the competition computed it (docs/scoring.md), fast.

The union of the two samples is clustered R times with mini-batch k-means (K centres, 10 k-means++
initialisations each, the best kept by validation inertia, sklearn's MiniBatchKMeans update rule with
per-centre counts as learning rates, its random reassignment of starved centres and its early stopping on
the smoothed batch inertia). All R runs advance together as batched torch tensors, so each step is a few
batched matrix products instead of R sequential sklearn fits. ``compute_prd_sklearn`` is the straightforward
per-run sklearn implementation kept as the reference baseline for tests and benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import MiniBatchKMeans
from tqdm.auto import tqdm

from calogan.core.runtime import progress_disabled

DEFAULT_CLUSTERS = 100
DEFAULT_ANGLES = 1001
DEFAULT_RUNS = 100
DEFAULT_SEED = 1337
_ANGLE_EPS = 1e-10
_F_EPS = 1e-10


@dataclass
class PRDResult:
    """Run-averaged PRD curve with its summary numbers and their spread over the R clusterings."""

    precision: np.ndarray  # (num_angles,) averaged over runs
    recall: np.ndarray  # (num_angles,) averaged over runs
    auc: float  # area under the averaged curve (recall as a function of precision)
    auc_std: float  # standard deviation of the per-run AUCs
    aucs: np.ndarray  # (R,) per-run AUCs
    f8: float  # max over lambda of F_8 of the averaged curve (recall-weighted)
    f1_8: float  # max over lambda of F_1/8 of the averaged curve (precision-weighted)
    f8_std: float
    f1_8_std: float
    num_clusters: int
    num_runs: int
    seed: int
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-friendly scalar summary (no curves)."""
        d = asdict(self)
        for key in ("precision", "recall", "aucs", "extra"):
            d.pop(key)
        return d


# ---------------------------------------------------------------- the PRD formula


def prd_from_histograms(
    eval_dist: np.ndarray, ref_dist: np.ndarray, num_angles: int = DEFAULT_ANGLES, epsilon: float = _ANGLE_EPS
) -> tuple[np.ndarray, np.ndarray]:
    """PRD curve of two histograms; also accepts stacks (R, K) and returns (R, num_angles) curves.

    precision(λ) = Σ_k min(λ·ref[k], eval[k]), recall(λ) = precision(λ)/λ, λ = tan θ for num_angles angles
    θ in [ε, π/2 − ε]; both clipped to [0, 1].
    """
    eval_dist = np.asarray(eval_dist, dtype=np.float64)
    ref_dist = np.asarray(ref_dist, dtype=np.float64)
    if eval_dist.shape != ref_dist.shape:
        raise ValueError(f"prd_from_histograms: shapes differ {eval_dist.shape} vs {ref_dist.shape}")
    if not 3 <= num_angles <= 1e6:
        raise ValueError(f"prd_from_histograms: num_angles must be in [3, 1e6], got {num_angles}")
    slopes = np.tan(np.linspace(epsilon, math.pi / 2 - epsilon, num=num_angles))
    ev = eval_dist[..., None, :]  # (..., 1, K)
    rf = ref_dist[..., None, :]
    precision = np.minimum(rf * slopes[:, None], ev).sum(axis=-1)
    recall = precision / slopes
    return np.clip(precision, 0, 1), np.clip(recall, 0, 1)


def auc(precision: np.ndarray, recall: np.ndarray) -> float:
    """Trapezoidal area of recall as a function of precision, with sklearn.metrics.auc semantics."""
    x = np.asarray(precision, dtype=np.float64)
    y = np.asarray(recall, dtype=np.float64)
    dx = np.diff(x)
    direction = 1.0
    if np.any(dx < 0):
        if np.all(dx <= 0):
            direction = -1.0
        else:
            raise ValueError(f"auc: precision is not monotonic: {x}")
    return float(direction * np.sum(dx * (y[1:] + y[:-1]) / 2.0))


def f_beta_scores(precision: np.ndarray, recall: np.ndarray, beta: float = 8.0) -> tuple[float, float]:
    """(max F_β, max F_1/β) over the curve: recall-weighted and precision-weighted summaries."""
    p = np.asarray(precision, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)

    def fb(b: float) -> np.ndarray:
        return (1 + b**2) * p * r / (b**2 * p + r + _F_EPS)

    return float(fb(beta).max(axis=-1)), float(fb(1.0 / beta).max(axis=-1))


def _histograms(labels: np.ndarray, n_eval: int, num_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised label histograms of the eval part (first n_eval) and the ref part of each run, (R, K)."""
    labels = np.atleast_2d(labels)
    runs = labels.shape[0]
    offs = np.arange(runs)[:, None] * num_clusters

    def hist(part: np.ndarray) -> np.ndarray:
        counts = np.bincount((part + offs).ravel(), minlength=runs * num_clusters).reshape(runs, num_clusters)
        return counts / part.shape[1]

    return hist(labels[:, :n_eval]), hist(labels[:, n_eval:])


def _result(
    eval_hist: np.ndarray, ref_hist: np.ndarray, num_angles: int, num_clusters: int, seed: int, extra: dict
) -> PRDResult:
    """Per-run curves → averaged curve, AUC, F-scores and their spreads."""
    prec, rec = prd_from_histograms(eval_hist, ref_hist, num_angles)
    aucs = np.array([auc(p, r) for p, r in zip(prec, rec)])
    fs = np.array([f_beta_scores(p, r) for p, r in zip(prec, rec)])
    precision, recall = prec.mean(axis=0), rec.mean(axis=0)
    f8, f1_8 = f_beta_scores(precision, recall)
    return PRDResult(
        precision=precision,
        recall=recall,
        auc=auc(precision, recall),
        auc_std=float(aucs.std()),
        aucs=aucs,
        f8=f8,
        f1_8=f1_8,
        f8_std=float(fs[:, 0].std()),
        f1_8_std=float(fs[:, 1].std()),
        num_clusters=num_clusters,
        num_runs=len(aucs),
        seed=seed,
        extra=extra,
    )


def _check_inputs(eval_features, ref_features, enforce_balance: bool) -> tuple[np.ndarray, np.ndarray]:
    """2-d finite float arrays with the same dimension (and size when balance is enforced)."""
    ev = np.asarray(eval_features, dtype=np.float64)
    rf = np.asarray(ref_features, dtype=np.float64)
    ev = ev.reshape(len(ev), -1)
    rf = rf.reshape(len(rf), -1)
    if ev.shape[1] != rf.shape[1]:
        raise ValueError(f"PRD: feature dimensions differ ({ev.shape[1]} vs {rf.shape[1]})")
    if enforce_balance and len(ev) != len(rf):
        raise ValueError(f"PRD: sample sizes differ ({len(ev)} vs {len(rf)}); PRD needs balanced samples")
    if not (np.isfinite(ev).all() and np.isfinite(rf).all()):
        raise ValueError("PRD: features contain NaN or Inf")
    return ev, rf


# ---------------------------------------------------------------- batched mini-batch k-means


def _kmeans_pp(points: torch.Tensor, k: int, n_init: int, rng: torch.Generator) -> torch.Tensor:
    """n_init independent plain k-means++ seedings on each subset points (G, S, d) → centre indices (G, n_init, k).

    The n_init chains of one subset advance together, so each step is one (S, d) x (d, n_init) product.
    """
    g, s, _ = points.shape
    dev = points.device
    sq = (points * points).sum(-1)  # (G, S)
    gi = torch.arange(g, device=dev).view(g, 1)
    picks = torch.empty(g, n_init, k, dtype=torch.long, device=dev)

    def dist_to(pick: torch.Tensor) -> torch.Tensor:
        """Squared distances (G, n_init, S) from every subset point to the picked points (G, n_init)."""
        c = points[gi, pick]  # (G, n_init, d)
        return (
            sq.unsqueeze(1) + sq[gi, pick].unsqueeze(2) - 2 * torch.bmm(c, points.transpose(1, 2))
        ).clamp_min_(0)

    pick = torch.randint(0, s, (g, n_init), generator=rng, device=dev)
    picks[:, :, 0] = pick
    closest = dist_to(pick)
    for j in range(1, k):
        cum = closest.cumsum(2)
        u = torch.rand(g, n_init, 1, generator=rng, device=dev, dtype=cum.dtype) * cum[:, :, -1:]
        pick = torch.searchsorted(cum, u, right=True)[:, :, 0].clamp_max_(s - 1)
        picks[:, :, j] = pick
        closest = torch.minimum(closest, dist_to(pick))
    return picks


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for an index array of any shape, via index_select (several times faster on CPU)."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])


def _assign(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Label (G, n) of the nearest centre of every point of x (n, d) under each run's centres (G, K, d).

    |x|² is the same for every centre, so the argmin needs only |c|² − 2 x·c: one fused GEMM (addmm).
    """
    g, k, d = centres.shape
    flat = centres.reshape(g * k, d)
    closeness = torch.addmm((flat * flat).sum(-1), x, flat.T, beta=-1.0, alpha=2.0)  # 2 x·c − |c|²
    return _nearest(closeness.view(-1, g, k))[1].T  # (n, G, K) → labels (G, n)


def _nearest(closeness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, argmax) over the last axis of closeness = 2 x·c − |c|² (the nearest centre has the largest).

    A max-pool over the whole axis returns both at once and is vectorised on CPU, where argmin/argmax
    reduce one element at a time (measured 1.1 ms vs ~0.7 ms for 10 × 1024 × 100 values).
    """
    *lead, k = closeness.shape
    best, index = F.max_pool1d(closeness.reshape(-1, 1, k), k, return_indices=True)
    return best.view(lead), index.view(lead)


def batched_minibatch_kmeans_labels(
    data: torch.Tensor,
    num_clusters: int,
    num_runs: int,
    rng: torch.Generator,
    n_init: int = 10,
    batch_size: int = 1024,
    init_size: int | None = None,
    max_steps: int = 2000,
    max_no_improvement: int = 10,
    reassignment_ratio: float = 0.01,
) -> tuple[torch.Tensor, int]:
    """(labels (num_runs, n), steps taken by the slowest run) of num_runs mini-batch k-means fits of data (n, d)."""
    n, d = data.shape
    dev, dt = data.device, data.dtype
    g, k = num_runs, num_clusters
    data_sq = (data * data).sum(-1)  # |x|² of every point, gathered per mini-batch
    init_size = min(n, 3 * batch_size if init_size is None else init_size)
    bs = min(batch_size, n)
    runs = torch.arange(g, device=dev)

    # 1. n_init k-means++ seedings per run on a random subset, the best by inertia on a validation batch
    sub = _rows(data, torch.randint(0, n, (g, init_size), generator=rng, device=dev))  # (g, S, d)
    picks = _kmeans_pp(sub, k, n_init, rng)  # (g, n_init, k)
    cands = sub[runs.view(g, 1, 1), picks]  # (g, n_init, k, d)
    val = _rows(data, torch.randint(0, n, (g, bs), generator=rng, device=dev))  # (g, bs, d)
    c_sq = (cands * cands).sum(-1)  # (g, n_init, k)
    v_sq = (val * val).sum(-1)  # (g, bs)
    prod = torch.einsum("gbd,gikd->gibk", val, cands)
    inertia = (v_sq[:, None, :, None] + c_sq[:, :, None, :] - 2 * prod).amin(-1).clamp_min(0).sum(-1)
    centres = cands[runs, inertia.argmin(1)].clone()  # (g, k, d)

    # 2. mini-batch updates with per-centre counts, random reassignment and early stopping (sklearn's rules);
    #    cen, cnt, ... hold only the runs still being updated (act: their run indices), compacted when some stop
    cen = centres
    cnt = torch.zeros(g, k, dtype=dt, device=dev)
    ewa = torch.zeros(g, dtype=dt, device=dev)
    ewa_min = torch.full((g,), float("inf"), dtype=dt, device=dev)
    no_improve = torch.zeros(g, dtype=torch.long, device=dev)
    since_reassign = torch.zeros(g, dtype=torch.long, device=dev)
    act = runs.clone()
    alpha = min(1.0, bs * 2.0 / (n + 1))
    steps = 0
    offsets = runs.view(g, 1) * k  # run r's centres are rows r*k .. r*k+k-1 of the flattened (g*k, d) table
    ones = torch.ones(g * bs, dtype=dt, device=dev)
    for step in range(max_steps):
        a = act.numel()
        rows = torch.randint(0, n, (a, bs), generator=rng, device=dev)
        xb = _rows(data, rows)  # (a, bs, d)
        c_sq = (cen * cen).sum(-1).unsqueeze(1)
        closeness = torch.baddbmm(c_sq, xb, cen.transpose(1, 2), beta=-1.0, alpha=2.0)  # -(dist - |x|^2)
        part, lab = _nearest(closeness)
        best = (_rows(data_sq, rows) - part).clamp_min(0)
        flat_lab = (lab + offsets).view(-1)  # one label space over all runs: index_add is ~3x scatter_add
        bcount = torch.zeros(a * k, dtype=dt, device=dev).index_add_(0, flat_lab, ones).view(a, k)
        bsum = (
            torch.zeros(a * k, d, dtype=dt, device=dev).index_add_(0, flat_lab, xb.view(-1, d)).view(a, k, d)
        )
        new_cnt = cnt + bcount
        moved = (cen * cnt.unsqueeze(-1) + bsum) / new_cnt.clamp_min(1e-30).unsqueeze(-1)
        cen = torch.where((bcount > 0).unsqueeze(-1), moved, cen)
        cnt = new_cnt

        if reassignment_ratio > 0:
            since = since_reassign + 1
            due = (cnt == 0).any(1) | (since >= 10 * (1 + cnt.min(1).values.long()))
            starved = (cnt < reassignment_ratio * cnt.max(1, keepdim=True).values) & due[:, None]
            starved &= starved.cumsum(1) <= bs // 2  # sklearn's cap: at most half a batch of centres
            if bool(starved.any()):
                pick = torch.randint(0, bs, (a, k), generator=rng, device=dev)
                cen = torch.where(starved.unsqueeze(-1), xb[torch.arange(a, device=dev)[:, None], pick], cen)
                fed_min = torch.where(starved, torch.full_like(cnt, float("inf")), cnt).min(1).values
                cnt = torch.where(starved, fed_min[:, None].expand(-1, k), cnt)
            since_reassign = torch.where(due, torch.zeros_like(since), since)

        # early stopping on the exponentially weighted batch inertia
        batch_inertia = best.sum(1) / bs
        ewa = batch_inertia if step == 0 else ewa * (1 - alpha) + batch_inertia * alpha
        improved = ewa < ewa_min
        ewa_min = torch.where(improved, ewa, ewa_min)
        no_improve = torch.where(improved, torch.zeros_like(no_improve), no_improve + 1)
        steps = step + 1
        going = no_improve < max_no_improvement
        if step > 0 and not bool(going.all()):
            centres[act] = cen  # final centres of every run, the stopped ones' included
            act, cen, cnt = act[going], cen[going], cnt[going]
            ewa, ewa_min = ewa[going], ewa_min[going]
            no_improve, since_reassign = no_improve[going], since_reassign[going]
            if act.numel() == 0:
                break
            # the label offsets and unit weights shrink with the compacted state
            offsets, ones = offsets[: act.numel()], ones[: act.numel() * bs]
    if act.numel():
        centres[act] = cen

    # 3. labels of every point under the final centres
    labels = torch.empty(g, n, dtype=torch.long, device=dev)
    chunk = max(1, (1 << 23) // max(1, g * k))
    for start in range(0, n, chunk):
        labels[:, start : start + chunk] = _assign(data[start : start + chunk], centres)
    return labels, steps


def compute_prd(
    eval_features: np.ndarray,
    ref_features: np.ndarray,
    num_clusters: int = DEFAULT_CLUSTERS,
    num_angles: int = DEFAULT_ANGLES,
    num_runs: int = DEFAULT_RUNS,
    seed: int = DEFAULT_SEED,
    enforce_balance: bool = True,
    n_init: int = 10,
    batch_size: int = 1024,
    runs_per_batch: int = 10,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> PRDResult:
    """PRD of eval_features against ref_features: R batched mini-batch k-means clusterings of the union.

    Same algorithm as :func:`compute_prd_sklearn` (the reference implementation), seeded by ``seed``; the
    result is deterministic for a given seed, ``runs_per_batch`` and device.
    """
    ev, rf = _check_inputs(eval_features, ref_features, enforce_balance)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    union = np.concatenate([ev, rf], axis=0)
    union = union - union.mean(axis=0)  # centring keeps float32 distance arithmetic accurate
    data = torch.as_tensor(union, dtype=dtype, device=dev)
    rng = torch.Generator(device=dev)
    rng.manual_seed(int(seed))
    labels, steps = [], []
    group_sizes = [min(runs_per_batch, num_runs - s) for s in range(0, num_runs, runs_per_batch)]
    for g in tqdm(group_sizes, desc="PRD k-means", unit="batch", disable=progress_disabled(progress)):
        lab, st = batched_minibatch_kmeans_labels(
            data, num_clusters, g, rng, n_init=n_init, batch_size=batch_size
        )
        labels.append(lab.cpu())
        steps.append(st)
    lab = torch.cat(labels).numpy()
    eval_hist, ref_hist = _histograms(lab, len(ev), num_clusters)
    return _result(
        eval_hist,
        ref_hist,
        num_angles,
        num_clusters,
        int(seed),
        {"implementation": "torch-batched", "max_steps": steps},
    )


def compute_prd_sklearn(
    eval_features: np.ndarray,
    ref_features: np.ndarray,
    num_clusters: int = DEFAULT_CLUSTERS,
    num_angles: int = DEFAULT_ANGLES,
    num_runs: int = DEFAULT_RUNS,
    seed: int = DEFAULT_SEED,
    enforce_balance: bool = True,
    n_init: int = 10,
    progress: bool = False,
) -> PRDResult:
    """Reference baseline: one sklearn MiniBatchKMeans(n_clusters=K, n_init=10) fit per run, as in 2019."""
    ev, rf = _check_inputs(eval_features, ref_features, enforce_balance)
    union = np.concatenate([ev, rf], axis=0)
    rng = np.random.RandomState(seed)
    labels = []
    for _ in tqdm(range(num_runs), desc="PRD sklearn", disable=progress_disabled(progress)):
        km = MiniBatchKMeans(n_clusters=num_clusters, n_init=n_init, random_state=rng.randint(2**31 - 1))
        labels.append(km.fit(union).labels_)
    eval_hist, ref_hist = _histograms(np.stack(labels), len(ev), num_clusters)
    return _result(eval_hist, ref_hist, num_angles, num_clusters, int(seed), {"implementation": "sklearn"})
