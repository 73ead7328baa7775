"""Parametric RICH calibration samples (signal + background with sWeights) for e, mu, pi, K, p.

Physics model (every number below is a named constant of this module):

* Kinematics: eta ~ Normal(3.3, 0.75) truncated to [1.5, 5.5]; transverse momentum pT ~ LogNormal
  around a per-particle median (calibration channels are soft: D*->D0(K pi) pi, Lambda->p pi, J/psi->mumu,
  J/psi->ee); P = pT cosh(eta), kept in [3, 200] GeV. P and eta are therefore correlated as in real samples
  (forward tracks carry more momentum). nTracks ~ 1 + Gamma(2.2, 75) clipped to 600, busier for background.
  The ``transfer`` sample doubles the pT median (a harder spectrum, as in B -> J/psi K vs the calibration
  channel) with the same detector response.
* Detector response: two gas radiators (RICH1 C4F10, n-1 = 1.4e-3; RICH2 CF4, n-1 = 5e-4). For mass m the
  Cherenkov angle is arccos(1/(n beta)), zero below threshold (p < m / sqrt(n^2 - 1): pi 2.6/4.4, K 9.3/15.6,
  p 17.7/29.7 GeV); the expected photon yield is N0 sin^2(theta)/sin^2(theta_max). Observed photons are
  Poisson(signal yield + background), background growing with nTracks; the ring angle is measured with a
  per-photon resolution that worsens with nTracks and away from eta ~ 3.3; 3 % of rings are mis-associated
  (angle from a random ring). Each hypothesis h gets a log-likelihood = Poisson term on the photon count +
  Gaussian term on the angle (per-photon chi2 capped at 4, so a track cannot gain unbounded evidence); DLL_h = logL_h - logL_pi for h = e, mu, K, p, and DLLbt = logL(below threshold,
  background only) - logL_pi. So separation degrades at high momentum (angles converge) and high occupancy,
  and vanishes below threshold.
* Tracks without RICH information (outside the RICH acceptance at the eta edges, plus a 2 % base rate) carry
  the sentinel -999 in all five DLLs.
* Background: 40 % of candidates are combinatorial background (a pi/K/p/mu/e mixture, softer and in busier
  events) under a normalised mass variable in [-1, 1] (signal Normal(0, 0.08), background exponential).
  sWeights come from a real extended maximum-likelihood fit of the mass (scipy, vectorised) followed by the
  sPlot formula, so negative weights are present.

This is a plausibility model to make the toolkit runnable and testable, not a RICH simulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import optimize, special
from tqdm import tqdm

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.runtime import atomic_write_json, progress_disabled, run_cli
from calogan.rich import DLL_COLUMNS, PARTICLES, SAMPLES, SENTINEL
from calogan.rich.data import sample_path
from calogan.rich.io import (
    DEFAULT_TREE,
    FORMATS,
    ColumnMap,
    add_column_options,
    require_uproot,
    save_columns,
    to_file_names,
)

MASS_GEV = {"electron": 0.000511, "muon": 0.10566, "pion": 0.13957, "kaon": 0.49368, "proton": 0.93827}
HYPOTHESES = ("electron", "muon", "kaon", "proton")  # DLL_h = logL_h - logL_pion, in DLL_COLUMNS order
PT_MEDIAN_GEV = {"electron": 1.2, "muon": 1.5, "pion": 0.9, "kaon": 0.9, "proton": 1.1}
PT_LOG_SIGMA = 0.6
TRANSFER_PT_FACTOR = 2.0
ETA_MEAN, ETA_SIGMA, ETA_RANGE = 3.3, 0.75, (1.5, 5.5)
P_RANGE_GEV = (3.0, 200.0)
NTRACKS_SHAPE, NTRACKS_SCALE, NTRACKS_MAX = 2.2, 75.0, 600.0
BACKGROUND_NTRACKS_SCALE = 100.0
BACKGROUND_PT_FACTOR = 0.7
# (n - 1, saturated photon yield N0, per-photon angular resolution in rad) for RICH1 C4F10 and RICH2 CF4
RADIATORS = ((1.4e-3, 30.0, 1.6e-3), (5.0e-4, 22.0, 0.7e-3))
BACKGROUND_PHOTONS_PER_TRACK = 0.01
OCCUPANCY_RESOLUTION_SCALE = 500.0  # sigma *= 1 + nTracks / this
ETA_RESOLUTION_COEFF = 0.1  # sigma *= 1 + coeff (eta - ETA_MEAN)^2
MISASSOCIATION_PROB = 0.03
CHI2_CAP = 4.0
NO_RICH_BASE_PROB = 0.02
ACCEPTANCE_EDGES = (1.8, 5.0)  # eta below / above which RICH information is mostly missing
SIGNAL_FRACTION = 0.6
MASS_SIGMA, BACKGROUND_SLOPE = 0.08, -1.2
BACKGROUND_MIX = {"electron": 0.02, "muon": 0.03, "pion": 0.65, "kaon": 0.2, "proton": 0.1}


def sample_kinematics(
    n: int, pt_median: float, rng: np.random.Generator, ntracks_scale: float = NTRACKS_SCALE
) -> np.ndarray:
    """Draw (P, ETA, NTRACKS) for n tracks: eta and pT drawn, P = pT cosh(eta) kept in LHCb range."""
    out = np.empty((0, 2))
    while len(out) < n:
        m = 2 * (n - len(out)) + 100
        eta = rng.normal(ETA_MEAN, ETA_SIGMA, m)
        pt = pt_median * np.exp(rng.normal(0.0, PT_LOG_SIGMA, m))
        p = pt * np.cosh(eta)
        ok = (eta > ETA_RANGE[0]) & (eta < ETA_RANGE[1]) & (p > P_RANGE_GEV[0]) & (p < P_RANGE_GEV[1])
        out = np.concatenate([out, np.stack([p[ok], eta[ok]], 1)])
    ntracks = np.minimum(1.0 + np.round(rng.gamma(NTRACKS_SHAPE, ntracks_scale, n)), NTRACKS_MAX)
    return np.column_stack([out[:n], ntracks])


def _cherenkov(p: np.ndarray, mass: float | np.ndarray, n_minus_1: float) -> tuple[np.ndarray, np.ndarray]:
    """Cherenkov angle (rad, 0 below threshold) and sin^2(theta)/sin^2(theta_max) for momentum p."""
    n = 1.0 + n_minus_1
    beta = p / np.sqrt(p**2 + np.asarray(mass) ** 2)
    cos_t = np.clip(1.0 / (n * beta), -1.0, 1.0)
    theta = np.arccos(cos_t)
    theta_max = np.arccos(1.0 / n)
    return theta, np.sin(theta) ** 2 / np.sin(theta_max) ** 2


def rich_response(
    p: np.ndarray, eta: np.ndarray, ntracks: np.ndarray, true_mass: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Return (N, 5) DLLs (e, mu, K, p, bt vs pi) from a two-radiator likelihood model; -999 without RICH."""
    n_tr = len(p)
    loglik = np.zeros((n_tr, len(HYPOTHESES) + 2))  # columns: hypotheses..., pion, below-threshold
    masses = [MASS_GEV[h] for h in HYPOTHESES] + [MASS_GEV["pion"]]
    res_scale = (1.0 + ntracks / OCCUPANCY_RESOLUTION_SCALE) * (
        1.0 + ETA_RESOLUTION_COEFF * (eta - ETA_MEAN) ** 2
    )
    for n_minus_1, n0, sigma0 in RADIATORS:
        theta_max = np.arccos(1.0 / (1.0 + n_minus_1))
        theta_true, frac = _cherenkov(p, true_mass, n_minus_1)
        background = BACKGROUND_PHOTONS_PER_TRACK * ntracks + 0.05
        n_sig = rng.poisson(n0 * frac)
        n_obs = n_sig + rng.poisson(background)
        sigma = sigma0 * res_scale
        theta_meas = theta_true + rng.normal(0.0, 1.0, n_tr) * sigma / np.sqrt(np.maximum(n_sig, 1))
        lost = (n_sig == 0) | (rng.random(n_tr) < MISASSOCIATION_PROB)
        theta_meas = np.where(lost, rng.uniform(0.0, theta_max, n_tr), theta_meas)
        theta_h, frac_h = _cherenkov(p[:, None], np.asarray(masses)[None, :], n_minus_1)
        mu_h = n0 * frac_h + background[:, None]
        photons_h = n_obs[:, None] * (n0 * frac_h) / mu_h  # expected signal photons under h
        # per-photon chi2 saturates at CHI2_CAP: photons far from the expected ring count as background
        pull2 = ((theta_meas[:, None] - theta_h) / sigma[:, None]) ** 2
        angle = -0.5 * photons_h * np.minimum(pull2, CHI2_CAP)
        loglik[:, :-1] += n_obs[:, None] * np.log(mu_h) - mu_h + angle
        loglik[:, -1] += n_obs * np.log(background) - background
    dll = loglik[:, [0, 1, 2, 3, 5]] - loglik[:, [4]]
    no_rich = NO_RICH_BASE_PROB + 0.5 * special.expit((ACCEPTANCE_EDGES[0] - eta) / 0.1)
    no_rich = no_rich + 0.5 * special.expit((eta - ACCEPTANCE_EDGES[1]) / 0.1)
    dll[rng.random(n_tr) < no_rich] = SENTINEL
    return dll.astype(np.float32)


def _mass_pdfs(x: np.ndarray, mu: float, sigma: float, slope: float) -> tuple[np.ndarray, np.ndarray]:
    """Signal (truncated Gaussian) and background (truncated exponential) densities on [-1, 1]."""
    norm_s = special.ndtr((1 - mu) / sigma) - special.ndtr((-1 - mu) / sigma)
    f_s = np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi) * norm_s)
    if abs(slope) < 1e-8:
        f_b = np.full_like(x, 0.5)
    else:
        f_b = slope * np.exp(slope * x) / (np.exp(slope) - np.exp(-slope))
    return f_s, f_b


def splot_weights(mass: np.ndarray) -> tuple[np.ndarray, dict]:
    """Fit signal+background to the mass (extended ML) and return signal sWeights and the fit result."""
    n = len(mass)

    def nll(theta: np.ndarray) -> float:  # yields in units of n, NLL per candidate (well-scaled)
        ys, yb, mu, sigma, slope = theta
        f_s, f_b = _mass_pdfs(mass, mu, sigma, slope)
        return float(-np.log(np.maximum(ys * f_s + yb * f_b, 1e-300)).mean() + ys + yb)

    start = np.array([0.5, 0.5, 0.0, 0.1, -0.5])
    bounds = [(1e-4, 2.0), (1e-4, 2.0), (-0.5, 0.5), (0.01, 0.5), (-10.0, 10.0)]
    fit = optimize.minimize(
        nll, start, method="L-BFGS-B", bounds=bounds, options={"ftol": 1e-12, "gtol": 1e-9}
    )
    ys, yb, mu, sigma, slope = fit.x
    ns, nb = ys * n, yb * n
    f = np.stack(_mass_pdfs(mass, mu, sigma, slope), 1)  # (N, 2)
    denom = f @ np.array([ns, nb])
    v_inv = (f[:, :, None] * f[:, None, :] / denom[:, None, None] ** 2).sum(0)
    cov = np.linalg.inv(v_inv)
    weights = (f @ cov[0]) / denom
    info = {"n_signal": float(ns), "n_background": float(nb), "mu": float(mu), "sigma": float(sigma)}
    info.update(slope=float(slope), converged=bool(fit.success))
    return weights.astype(np.float32), info


def simulate_sample(
    particle: str, n: int, rng: np.random.Generator, transfer: bool = False
) -> dict[str, np.ndarray]:
    """Simulate n candidates (signal + background) of one calibration sample; returns column arrays."""
    if particle not in PARTICLES:
        raise InputError(f"--particle: unknown particle '{particle}' (use one of {', '.join(PARTICLES)})")
    pt_median = PT_MEDIAN_GEV[particle] * (TRANSFER_PT_FACTOR if transfer else 1.0)
    is_signal = rng.random(n) < SIGNAL_FRACTION
    n_sig = int(is_signal.sum())
    kin = np.empty((n, 3))
    kin[is_signal] = sample_kinematics(n_sig, pt_median, rng)
    kin[~is_signal] = sample_kinematics(
        n - n_sig, pt_median * BACKGROUND_PT_FACTOR, rng, BACKGROUND_NTRACKS_SCALE
    )
    names = list(BACKGROUND_MIX)
    bkg_type = rng.choice(len(names), size=n, p=np.array(list(BACKGROUND_MIX.values())))
    true_mass = np.where(is_signal, MASS_GEV[particle], np.array([MASS_GEV[k] for k in names])[bkg_type])
    dll = rich_response(kin[:, 0], kin[:, 1], kin[:, 2], true_mass, rng)
    mass = np.empty(n)
    mass[is_signal] = np.clip(rng.normal(0.0, MASS_SIGMA, n_sig), -0.999, 0.999)
    u = rng.random(n - n_sig)
    lo, hi = np.exp(-BACKGROUND_SLOPE), np.exp(BACKGROUND_SLOPE)
    mass[~is_signal] = np.log(lo + u * (hi - lo)) / BACKGROUND_SLOPE
    weights, _ = splot_weights(mass)
    cols = {"P": kin[:, 0], "ETA": kin[:, 1], "NTRACKS": kin[:, 2]}
    cols.update({name: dll[:, j] for j, name in enumerate(DLL_COLUMNS)})
    cols.update(sWeight=weights, Mass=mass, IsSignal=is_signal.astype(np.int8))
    return {k: (np.asarray(v, np.float32) if k != "IsSignal" else v) for k, v in cols.items()}


#: fewest candidates in a sample (every sample size option)
MIN_SAMPLE = 100


def write_samples(
    out_dir: str | Path,
    n: int = 50000,
    seed: int = 0,
    particles: Sequence[str] = PARTICLES,
    n_test: int | None = None,
    n_transfer: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    fmt: str = "npz",
    tree: str = DEFAULT_TREE,
    columns: ColumnMap | None = None,
) -> dict:
    """Write train/test/transfer samples per particle (test and transfer default to n // 2) plus a manifest.

    ``fmt`` 'root' writes rich_{particle}_{sample}.root files holding the TTree ``tree``; ``columns`` names
    the written contract columns and the unit of P (default: contract names, GeV).
    """
    sizes = {
        "train": options.check_int("--n", n, MIN_SAMPLE),
        "test": n // 2 if n_test is None else options.check_int("--n-test", n_test, MIN_SAMPLE),
        "transfer": n // 2
        if n_transfer is None
        else options.check_int("--n-transfer", n_transfer, MIN_SAMPLE),
    }
    options.check_int("--seed", seed, 0)
    out_dir = options.check_output_dir(out_dir, True, "--out", contents=())
    if fmt not in FORMATS:
        raise InputError(f"--format: unknown format '{fmt}' (use {' or '.join(FORMATS)})")
    columns = columns or ColumnMap()
    if fmt == "root":
        require_uproot()
    jobs = [(p, s) for p in particles for s in SAMPLES]
    paths = {job: sample_path(out_dir, *job).with_suffix(f".{fmt}") for job in jobs}
    existing = [path for path in paths.values() if path.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]}: already exists (pass --overwrite to replace)")
    manifest: dict = {"seed": seed, "sizes": sizes, "files": {}}
    if fmt == "root":
        manifest["tree"] = tree
    if columns.renamed or columns.p_unit != "GeV":
        manifest |= {"columns": columns.spec(), "p_unit": columns.p_unit}
    for p, s in tqdm(jobs, desc="rich samples", disable=progress_disabled(progress)):
        rng = np.random.default_rng([seed, PARTICLES.index(p), SAMPLES.index(s)])
        cols = simulate_sample(p, sizes[s], rng, transfer=(s == "transfer"))
        path = save_columns(paths[(p, s)], to_file_names(cols, columns), tree)
        w = cols["sWeight"]
        manifest["files"][path.name] = {
            "n": int(len(w)),
            "sum_sweight": float(w.sum()),
            "n_signal_true": int(cols["IsSignal"].sum()),
            "negative_weight_fraction": float((w < 0).mean()),
            "no_rich_fraction": float((cols["RichDLLk"] == SENTINEL).mean()),
        }
    atomic_write_json(out_dir / "rich_manifest.json", manifest)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: python -m calogan.rich.simulate --out DIR [--n N] [--seed S]."""
    ap = options.ArgumentParser(prog="python -m calogan.rich.simulate", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument(
        "--n",
        type=options.count(MIN_SAMPLE),
        default=50000,
        help=f"candidates in each train sample, >= {MIN_SAMPLE} (test/transfer: n/2)",
    )
    ap.add_argument("--n-test", type=options.count(MIN_SAMPLE), default=None, help="default n/2")
    ap.add_argument("--n-transfer", type=options.count(MIN_SAMPLE), default=None, help="default n/2")
    ap.add_argument("--seed", type=options.seed, default=0)
    ap.add_argument("--particles", nargs="+", default=list(PARTICLES), choices=PARTICLES)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument(
        "--format",
        type=options.choice(*FORMATS),
        default="npz",
        help="npz (default) or root: rich_{particle}_{sample}.root files, one TTree each (root extra)",
    )
    ap.add_argument(
        "--tree", default=None, help=f"with --format root: the tree name (default {DEFAULT_TREE})"
    )
    add_column_options(ap, "the written")
    args = ap.parse_args(argv)
    if args.tree and args.format != "root":
        raise InputError("--tree: goes with --format root")
    manifest = write_samples(
        args.out, args.n, args.seed, args.particles, args.n_test, args.n_transfer, args.overwrite,
        fmt=args.format, tree=args.tree or DEFAULT_TREE, columns=ColumnMap.parse(args.columns, args.p_unit),
    )  # fmt: skip
    for name, info in manifest["files"].items():
        print(f"{name}: n={info['n']} sum(sW)={info['sum_sweight']:.0f} true signal={info['n_signal_true']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
