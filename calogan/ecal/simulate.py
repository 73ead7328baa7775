"""A vectorised, GFlash-like parametric LHCb ECAL shower simulator writing competition-format files (docs/data.md).

It makes the kit runnable without the original competition files. It is a parametric toy, not a Geant4
replacement: one layer of 30x30 cells (1 cm pitch), energies in competition units (ENERGY_UNITS_PER_GEV, ~165 per GeV).

Model, per event:
  * visible energy E_vis = response * |p| * (1 + N(0, a/sqrt(E) (+) b)), lost outside the window if it leaks;
  * a Gamma-distributed longitudinal profile (depth in X0) whose maximum grows with ln(E/Ec); per-event
    fluctuations of its shape; photons start later by an exponential conversion depth (mean 9/7 X0);
  * ``n_spots`` energy spots per event sampled along the particle direction (so inclined tracks are elongated
    and displaced by depth * (px/pz, py/pz)) with a two-component (core + tail) GFlash radial profile whose
    radii grow with depth; spot weights fluctuate (Gamma) so showers differ event by event;
  * a smooth, fluctuating low-level halo over the whole window (cross-talk / late soft particles) so that about
    half of the cells hold at least 1e-5 of the image sum, as in the competition set.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.runtime import atomic_write_json, make_temp_dir, progress_disabled
from calogan.ecal.data import (
    CELL_CENTRES,
    ENERGY_UNITS_PER_GEV,
    IMAGE_SIZE,
    N_CELLS,
    PDG_ELECTRON,
    PDG_PHOTON,
    CaloData,
    save_npz,
    sha256_file,
    split_path,
)

SIMULATOR_VERSION = "calogan-ecal-sim-1.0"
MANIFEST_NAME = "manifest.json"
DEFAULT_SIZES = {"train": 50250, "val": 50250, "test": 49500}
#: Events simulated per chunk: bounds memory and fixes the random streams (results do not depend on batching).
CHUNK_EVENTS = 4096


@dataclass(frozen=True)
class ShowerParams:
    """Every physical and kinematic parameter of the simulator, with its meaning and unit."""

    # --- kinematics (the competition's ranges, docs/data.md)
    p_min_gev: float = 2.0  # lower edge of the log-uniform |p| spectrum
    p_max_gev: float = 100.0  # upper edge of the log-uniform |p| spectrum
    pt_scale_gev: float = 2.5  # scale of the Student-t distributed px, py (mostly within ±7.5 GeV)
    pt_tail_dof: float = 3.0  # degrees of freedom of that Student-t (tails to tens of GeV at high |p|)
    max_sin_theta: float = 0.45  # geometric acceptance: p_T <= |p| * max_sin_theta (pz stays > 0)
    point_sd_cm: float = 2.7  # sd of the Gaussian x, y of the particle at the reference plane
    point_z_cm: float = 1252.0  # z of the ECAL reference plane (stored, unused by the metric)
    photon_fraction: float = 0.5  # fraction of photons (PDG 22); the rest are electrons (PDG 11)
    # --- energy scale and resolution
    response_per_gev: float = ENERGY_UNITS_PER_GEV  # visible units per GeV of particle energy
    stochastic_term: float = 0.10  # a in sigma/E = a/sqrt(E[GeV]) (+) b
    constant_term: float = 0.01  # b in sigma/E = a/sqrt(E[GeV]) (+) b
    noise_term_gev: float = 0.0  # c in sigma/E = a/sqrt(E) (+) b (+) c/E[GeV] (0 = no noise term)
    # --- longitudinal profile (GFlash, Grindhammer & Peters)
    radiation_length_cm: float = 1.75  # effective X0 of the Pb/scintillator shashlik stack (25 X0 ~ 42 cm)
    critical_energy_gev: float = 0.0095  # effective critical energy Ec of the stack
    front_depth_cm: float = 10.0  # distance from the reference plane to the first shower particle (electrons)
    t_max_offset_e: float = -0.5  # electron shower maximum t_max = ln(E/Ec) + offset [X0]
    t_max_offset_gamma: float = -0.5  # photon shower maximum offset from its conversion point [X0]
    conversion_length_x0: float = 9.0 / 7.0  # mean photon conversion depth [X0] (photons start later)
    gamma_shape_a0: float = 0.21  # GFlash shape alpha = a0 + a1 * ln(E/Ec) (alpha = 1 + beta * t_max)
    gamma_shape_a1: float = 0.492
    shape_fluctuation: float = 0.12  # per-event relative (lognormal) fluctuation of the Gamma shape alpha
    # --- radial profile (two components, radii in units of the Moliere radius, growing with depth)
    moliere_radius_cm: float = 3.5  # Moliere radius of the stack
    core_radius0: float = 0.10  # core radius at the shower start [R_M]
    core_radius_slope: float = 0.10  # core radius growth per unit tau = t / t_max [R_M]
    tail_radius0: float = 0.45  # tail radius at the shower start [R_M]
    tail_radius_slope: float = 0.35  # tail radius growth per unit tau [R_M]
    core_fraction0: float = 0.85  # probability that a spot belongs to the core at tau = 0
    core_fraction_slope: float = 0.25  # decrease of that probability per unit tau (deep spots are wider)
    radius_fluctuation: float = 0.12  # per-event relative (lognormal) fluctuation of both radii
    radial_quantile_cap: float = 0.98  # radial quantiles above this are not drawn (caps r at 7 R)
    n_spots: int = 96  # energy spots per event (more spots = smoother showers, slower)
    spot_weight_shape: float = 1.5  # Gamma shape of the spot weights (smaller = spikier showers)
    # --- low-level halo (makes ~half of the cells hold >= 1e-5 of the sum)
    halo_fraction: float = 0.035  # mean fraction of the visible energy in the smooth halo
    halo_fraction_spread: float = 0.5  # per-event lognormal spread of that fraction
    halo_length_cm: float = 5.0  # exponential fall-off length of the halo around the shower centre
    halo_cell_shape: float = 1.0  # Gamma shape of the per-cell halo fluctuation (1 = exponential)
    # --- readout (both 0 by default: no electronic noise, no threshold)
    cell_noise_units: float = 0.0  # sd of Gaussian electronic noise added to every cell (negative sums -> 0)
    zero_suppression_units: float = 0.0  # cells below this energy are read out as 0 (fewer faint cells)


def sample_conditions(
    n: int, rng: np.random.Generator, params: ShowerParams | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw (point (n,3) f32 cm, momentum (n,3) f32 GeV, pdg (n,) int64) resembling the competition set."""
    prm = params or ShowerParams()
    p = np.exp(rng.uniform(np.log(prm.p_min_gev), np.log(prm.p_max_gev), n))
    pt_xy = prm.pt_scale_gev * rng.standard_t(prm.pt_tail_dof, size=(n, 2))
    pt = np.hypot(pt_xy[:, 0], pt_xy[:, 1])
    pt_max = p * prm.max_sin_theta
    # Outside the acceptance: rescale p_T into [0.5, 1] * pt_max, keeping its direction.
    squeeze = np.where(pt > pt_max, pt_max * rng.uniform(0.5, 1.0, n) / np.maximum(pt, 1e-12), 1.0)
    pt_xy *= squeeze[:, None]
    pz = np.sqrt(np.maximum(p**2 - (pt_xy**2).sum(axis=1), 1e-6))
    momentum = np.column_stack([pt_xy, pz]).astype(np.float32)
    xy = rng.normal(0.0, prm.point_sd_cm, size=(n, 2))
    point = np.column_stack([xy, np.full(n, prm.point_z_cm)]).astype(np.float32)
    pdg = np.where(rng.random(n) < prm.photon_fraction, PDG_PHOTON, PDG_ELECTRON).astype(np.int64)
    return point, momentum, pdg


def _lognormal(rng: np.random.Generator, sigma: float, size) -> np.ndarray:
    """Mean-one lognormal factors with relative spread ~sigma."""
    return np.exp(rng.normal(-0.5 * sigma**2, sigma, size))


def _showers_chunk(
    point: np.ndarray, momentum: np.ndarray, pdg: np.ndarray, rng: np.random.Generator, prm: ShowerParams
) -> np.ndarray:
    """Simulate one chunk of events: (n, 30, 30) float32."""
    n, m = point.shape[0], prm.n_spots
    mom = momentum.astype(np.float64)
    p = np.linalg.norm(mom, axis=1)
    tx, ty = mom[:, 0] / mom[:, 2], mom[:, 1] / mom[:, 2]
    photon = pdg == PDG_PHOTON

    # Total visible energy with a/sqrt(E) (+) b resolution.
    rel = np.hypot(prm.stochastic_term / np.sqrt(p), prm.constant_term)
    if prm.noise_term_gev > 0:
        rel = np.hypot(rel, prm.noise_term_gev / p)
    e_vis = prm.response_per_gev * p * np.clip(1.0 + rel * rng.standard_normal(n), 0.05, None)

    # Longitudinal profile: Gamma(alpha, beta) in X0 from the shower start, alpha fluctuating per event.
    ln_y = np.log(np.maximum(p / prm.critical_energy_gev, 2.0))
    t_max = ln_y + np.where(photon, prm.t_max_offset_gamma, prm.t_max_offset_e)
    alpha = np.maximum(prm.gamma_shape_a0 + prm.gamma_shape_a1 * ln_y, 1.2) * _lognormal(
        rng, prm.shape_fluctuation, n
    )
    beta = (alpha - 1.0) / np.maximum(t_max, 0.5)
    start_x0 = np.where(photon, rng.exponential(prm.conversion_length_x0, n), 0.0)
    t = rng.gamma(alpha[:, None], 1.0, size=(n, m)) / beta[:, None]  # depth after the start [X0]
    depth_cm = prm.front_depth_cm + (start_x0[:, None] + t) * prm.radiation_length_cm

    # Radial profile: core/tail mixture, radii grow with tau = t / t_max; GFlash f(r) ~ 2rR^2/(r^2+R^2)^2.
    tau = t / np.maximum(t_max, 0.5)[:, None]
    r_scale = prm.moliere_radius_cm * _lognormal(rng, prm.radius_fluctuation, n)[:, None]
    core_r = (prm.core_radius0 + prm.core_radius_slope * tau) * r_scale
    tail_r = (prm.tail_radius0 + prm.tail_radius_slope * tau) * r_scale
    p_core = np.clip(prm.core_fraction0 - prm.core_fraction_slope * tau, 0.05, 1.0)
    radius = np.where(rng.random((n, m)) < p_core, core_r, tail_r)
    u = rng.uniform(0.0, prm.radial_quantile_cap, (n, m))
    r = radius * np.sqrt(u / (1.0 - u))
    phi = rng.uniform(0.0, 2.0 * np.pi, (n, m))
    x = point[:, 0:1] + depth_cm * tx[:, None] + r * np.cos(phi)
    y = point[:, 1:2] + depth_cm * ty[:, None] + r * np.sin(phi)

    # Spot weights: fluctuating shares of the shower (not halo) energy.
    w = rng.gamma(prm.spot_weight_shape, 1.0, (n, m))
    f_halo = np.clip(prm.halo_fraction * _lognormal(rng, prm.halo_fraction_spread, n), 0.0, 0.2)
    w *= ((1.0 - f_halo) * e_vis / w.sum(axis=1))[:, None]

    half = IMAGE_SIZE / 2.0
    ix = np.floor(x + half).astype(np.int64)
    iy = np.floor(y + half).astype(np.int64)
    inside = (ix >= 0) & (ix < IMAGE_SIZE) & (iy >= 0) & (iy < IMAGE_SIZE)
    flat = (np.arange(n)[:, None] * N_CELLS + iy * IMAGE_SIZE + ix)[inside]
    images = np.bincount(flat, weights=w[inside], minlength=n * N_CELLS).reshape(n, N_CELLS)

    # Smooth, fluctuating halo around the expected shower centre (energy outside the window is lost).
    mean_depth = prm.front_depth_cm + (start_x0 + alpha / beta) * prm.radiation_length_cm
    cx = (point[:, 0] + mean_depth * tx).astype(np.float32)
    cy = (point[:, 1] + mean_depth * ty).astype(np.float32)
    centres = CELL_CENTRES.astype(np.float32)
    dx2 = np.square(centres[None, :] - cx[:, None])  # (n, 30): squared x distance per column
    dy2 = np.square(centres[None, :] - cy[:, None])  # (n, 30): squared y distance per row
    dist = np.sqrt(dy2[:, :, None] + dx2[:, None, :]).reshape(n, N_CELLS)  # float32 keeps this fast
    halo = np.exp(dist * np.float32(-1.0 / prm.halo_length_cm))
    if prm.halo_cell_shape == 1.0:
        halo *= rng.standard_exponential((n, N_CELLS), dtype=np.float32)
    else:
        halo *= rng.gamma(prm.halo_cell_shape, 1.0 / prm.halo_cell_shape, (n, N_CELLS)).astype(np.float32)
    norm = 2.0 * np.pi * prm.halo_length_cm**2  # integral of exp(-r/L) over the plane, cells of 1 cm^2
    halo *= (f_halo * e_vis / norm).astype(np.float32)[:, None]
    images = images.astype(np.float32)
    images += halo
    if prm.cell_noise_units > 0:
        images += rng.normal(0.0, prm.cell_noise_units, images.shape).astype(np.float32)
        np.maximum(images, 0.0, out=images)
    if prm.zero_suppression_units > 0:
        images[images < prm.zero_suppression_units] = 0.0
    return images.reshape(n, IMAGE_SIZE, IMAGE_SIZE)


def simulate_showers(
    point: np.ndarray,
    momentum: np.ndarray,
    pdg: np.ndarray,
    rng: np.random.Generator,
    params: ShowerParams | None = None,
    chunk: int = CHUNK_EVENTS,
) -> np.ndarray:
    """Simulate the (N, 30, 30) float32 energy deposits of the given particles, chunk by chunk."""
    prm = params or ShowerParams()
    point, momentum, pdg = np.asarray(point), np.asarray(momentum), np.asarray(pdg)
    n = point.shape[0]
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        out[sl] = _showers_chunk(point[sl], momentum[sl], pdg[sl], rng, prm)
    return out


def _split_data(
    n: int, seed_seq: np.random.SeedSequence, prm: ShowerParams, progress: bool = False, desc: str = ""
) -> CaloData:
    """One split: conditions from the first child stream, then one independent stream per chunk of showers."""
    cond_seq, shower_seq = seed_seq.spawn(2)
    point, momentum, pdg = sample_conditions(n, np.random.default_rng(cond_seq), prm)
    energy = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    starts = range(0, n, CHUNK_EVENTS)
    chunk_seqs = shower_seq.spawn(len(starts))
    with tqdm(
        total=n, desc=desc or "simulate", unit="ev", disable=progress_disabled(progress), leave=False
    ) as bar:
        for start, seq in zip(starts, chunk_seqs, strict=True):
            sl = slice(start, start + CHUNK_EVENTS)
            energy[sl] = _showers_chunk(point[sl], momentum[sl], pdg[sl], np.random.default_rng(seq), prm)
            bar.update(energy[sl].shape[0])
    return CaloData(point=point, momentum=momentum, pdg=pdg, energy=energy)


def simulate_dataset(
    n: int, seed: int = 0, params: ShowerParams | None = None, progress: bool = False
) -> CaloData:
    """Simulate n events (conditions + images) reproducibly from one seed."""
    if n <= 0:
        raise InputError(f"n: need a positive number of events, got {n}")
    return _split_data(n, np.random.SeedSequence(seed), params or ShowerParams(), progress)


def output_paths(out_dir: str | os.PathLike) -> dict[str, Path]:
    """The five data files and the manifest written by :func:`write_dataset`."""
    out = Path(out_dir)
    return {
        "data_train.npz": split_path(out, "train"),
        "data_val.npz": split_path(out, "val"),
        "data_test.npz": split_path(out, "test"),
        "data_val_solution.npz": split_path(out, "val", "solution"),
        "data_test_solution.npz": split_path(out, "test", "solution"),
        MANIFEST_NAME: out / MANIFEST_NAME,
    }


def write_dataset(
    out_dir: str | os.PathLike,
    n_train: int = DEFAULT_SIZES["train"],
    n_val: int = DEFAULT_SIZES["val"],
    n_test: int = DEFAULT_SIZES["test"],
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    params: ShowerParams | None = None,
) -> dict:
    """Simulate train/val/test and write the five competition files plus a manifest; returns the manifest.

    All files are written to temporary names first and renamed at the end (the manifest last), so an
    interrupted run leaves no partial data set. Without ``overwrite`` nothing existing is touched: the
    existing manifest (or a note) is returned with ``"skipped": True``.
    """
    sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    for split, size in sizes.items():
        if size <= 0:
            raise InputError(f"--n-{split}: need a positive number of events, got {size}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    paths = output_paths(out)
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        names = ", ".join(p.name for p in existing)
        print(f"{out}: keeping existing files ({names}); pass --overwrite to replace them", file=sys.stderr)
        return _read_manifest(paths[MANIFEST_NAME]) | {"skipped": True}

    prm = params or ShowerParams()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output directory ({exc.strerror or exc})") from None
    # staged in one folder beside the manifest (.calogan-tmp-manifest.json.<pid>.<random>), removed on exit or,
    # after a kill, by the next run
    staging = make_temp_dir(paths[MANIFEST_NAME])
    temps: dict[str, Path] = {}
    t0 = time.perf_counter()
    try:
        for split, seq in zip(sizes, np.random.SeedSequence(seed).spawn(3), strict=True):
            data = _split_data(sizes[split], seq, prm, progress, desc=f"simulate {split}")
            arrays = data.to_arrays()
            if split == "train":
                temps["data_train.npz"] = save_npz(staging / "data_train.npz", arrays)
            else:
                conditions = {k: v for k, v in arrays.items() if k != "EnergyDeposit"}
                temps[f"data_{split}.npz"] = save_npz(staging / f"data_{split}.npz", conditions)
                temps[f"data_{split}_solution.npz"] = save_npz(staging / f"data_{split}_solution.npz", arrays)
            del data, arrays
        manifest = {
            "simulator_version": SIMULATOR_VERSION,
            "seed": int(seed),
            "sizes": sizes,
            "seconds": round(time.perf_counter() - t0, 2),
            "params": asdict(prm),
            "files": {
                name: {"sha256": sha256_file(tmp), "bytes": tmp.stat().st_size} for name, tmp in temps.items()
            },
        }
        for name, tmp in temps.items():
            os.replace(tmp, paths[name])
        temps.clear()
        atomic_write_json(paths[MANIFEST_NAME], manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _read_manifest(path: Path) -> dict:
    """The manifest of an existing data directory, or an empty dict if it has none or it is unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def shower_params(items: Sequence[str]) -> ShowerParams:
    """ShowerParams with ``KEY=VALUE`` overrides (finite numbers only; unknown fields -> InputError)."""
    known = {f.name: f for f in fields(ShowerParams)}
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise InputError(f"--set: expected KEY=VALUE with KEY a ShowerParams field, got '{item}'")
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            raise InputError(f"--set: {key} must be a finite number, got '{raw}'")
        values[key] = value
    values = {k: type(getattr(ShowerParams(), k))(v) for k, v in values.items()}
    return replace(ShowerParams(), **values)


def main(argv: Sequence[str] | None = None) -> int | None:
    """CLI: simulate the competition-format data set into --out (default data/)."""
    parser = options.ArgumentParser(
        prog="python -m calogan.simulate",
        description="Simulate LHCb-like ECAL showers into competition-format npz files (train/val/test + solutions).",
    )
    parser.add_argument("--out", default="data", help="output directory (default: data)")
    parser.add_argument(
        "--n-train", type=options.count(1), default=DEFAULT_SIZES["train"], help="training events"
    )
    parser.add_argument(
        "--n-val", type=options.count(1), default=DEFAULT_SIZES["val"], help="validation events"
    )
    parser.add_argument("--n-test", type=options.count(1), default=DEFAULT_SIZES["test"], help="test events")
    parser.add_argument(
        "--seed", type=options.seed, default=0, help="random seed (same seed = identical files)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a ShowerParams field (repeatable), e.g. --set moliere_radius_cm=4.55 --set photon_fraction=0.3",
    )
    args = parser.parse_args(argv)
    params = shower_params(args.set)
    # a file or an unwritable folder is refused now; write_dataset keeps existing files unless --overwrite
    options.check_output_dir(args.out, overwrite=True, option="--out", contents=())
    manifest = write_dataset(
        args.out,
        args.n_train,
        args.n_val,
        args.n_test,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=True,
        params=params,
    )
    if not manifest.get("skipped"):
        total = sum(manifest["sizes"].values())
        print(
            f"wrote {total} events to {args.out}/ in {manifest['seconds']:.1f} s (manifest: {MANIFEST_NAME})"
        )
    return 0
