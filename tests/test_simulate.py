"""The built-in ECAL shower simulator: its physics (docs/data.md) on a few thousand events, seeding, files and CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import QuantileTransformer

from calogan.core.runtime import run_cli
from calogan.ecal import simulate
from calogan.ecal.data import CELL_CENTRES, KEY_ENERGY, load_npz, sha256_file
from calogan.ecal.physics import barycentre_residual, physical_statistics
from calogan.ecal.simulate import (
    ShowerParams,
    sample_conditions,
    simulate_dataset,
    simulate_showers,
    write_dataset,
)

N_EVENTS = 4000
DATA_FILES = (
    "data_train.npz",
    "data_val.npz",
    "data_test.npz",
    "data_val_solution.npz",
    "data_test_solution.npz",
)


@pytest.fixture(scope="module")
def sim():
    """A few thousand simulated events shared by the physics checks."""
    return simulate_dataset(N_EVENTS, seed=7)


def _contained(data, half_width: float = 6.0) -> np.ndarray:
    """Events whose expected shower centre lies well inside the 30x30 window."""
    c = data.point[:, :2] + 25.0 * data.momentum[:, :2] / data.momentum[:, 2:3]
    return (np.abs(c) < half_width).all(axis=1)


def test_arrays_have_competition_types_and_kinematics(sim):
    assert sim.energy.shape == (N_EVENTS, 30, 30) and sim.energy.dtype == np.float32
    assert sim.point.dtype == np.float32 and sim.momentum.dtype == np.float32
    assert np.isfinite(sim.energy).all() and (sim.energy >= 0).all()
    assert (sim.momentum[:, 2] > 0).all()
    assert set(np.unique(sim.pdg)) == {11, 22}
    assert 0.45 < (sim.pdg == 22).mean() < 0.55
    p = sim.p_abs
    assert p.min() >= 1.99 and p.max() <= 100.01
    # log-uniform: each decade-ish third of log|p| holds about a third of the events
    thirds = np.histogram(np.log(p), bins=3, range=(np.log(2), np.log(100)))[0] / N_EVENTS
    assert np.all(np.abs(thirds - 1 / 3) < 0.04)
    assert 0.9 < np.mean(np.abs(sim.momentum[:, :2]) < 7.5) < 1.0  # mostly within ±7.5 GeV, with tails
    assert np.allclose(sim.point[:, :2].std(axis=0), 2.7, atol=0.2)


def test_energy_response_and_resolution(sim):
    total = sim.energy.astype(np.float64).sum(axis=(1, 2))
    p = sim.p_abs
    ratio = total / p
    assert 150 < np.median(ratio) < 180
    cont = _contained(sim)
    spreads = []
    for lo, hi in [(2, 6), (6, 20), (20, 100)]:
        sel = cont & (p >= lo) & (p < hi)
        q16, q50, q84 = np.percentile(ratio[sel], [16, 50, 84])
        spreads.append((q84 - q16) / 2 / q50)
        expected = np.hypot(0.10 / np.sqrt(np.sqrt(lo * hi)), 0.01)
        assert 0.5 * expected < spreads[-1] < 2.5 * expected, (lo, hi, spreads[-1], expected)
    assert spreads[0] > spreads[1] > spreads[2]


def test_barycentre_follows_point_and_direction(sim):
    res = barycentre_residual(sim.energy, sim.point, sim.momentum)[_contained(sim)]
    rms = np.sqrt((res**2).mean(axis=0))
    assert (rms < 1.0).all(), rms
    assert (np.abs(res.mean(axis=0)) < 0.15).all()


def _along_over_perp(data) -> tuple[np.ndarray, np.ndarray]:
    """Energy-weighted rms extent along / across the transverse momentum, and tan(theta)."""
    e = data.energy.astype(np.float64)
    s = e.sum(axis=(1, 2))
    xx, yy = np.meshgrid(CELL_CENTRES, CELL_CENTRES)
    bx = (e * xx).sum(axis=(1, 2)) / s
    by = (e * yy).sum(axis=(1, 2)) / s
    t = data.momentum[:, :2].astype(np.float64) / data.momentum[:, 2:3]
    tan = np.linalg.norm(t, axis=1)
    u = t / np.maximum(tan, 1e-12)[:, None]
    dx, dy = xx[None] - bx[:, None, None], yy[None] - by[:, None, None]
    along = dx * u[:, 0, None, None] + dy * u[:, 1, None, None]
    perp = -dx * u[:, 1, None, None] + dy * u[:, 0, None, None]
    return np.sqrt((e * along**2).sum(axis=(1, 2)) / (e * perp**2).sum(axis=(1, 2))), tan


def test_inclined_tracks_give_elongated_showers(sim):
    ratio, tan = _along_over_perp(sim)
    cont = _contained(sim)
    straight = np.median(ratio[cont & (tan < 0.05)])
    inclined = np.median(ratio[cont & (tan > 0.3)])
    assert 0.93 < straight < 1.07
    assert inclined > 1.2 and inclined > straight + 0.15


def test_electrons_and_photons_distinguishable_but_not_trivially(sim):
    features = np.column_stack([physical_statistics(sim.energy, sim.point, sim.momentum), np.log(sim.p_abs)])
    y = sim.pdg == 22
    half = N_EVENTS // 2
    scaler = QuantileTransformer(n_quantiles=200, output_distribution="normal")
    clf = make_pipeline(scaler, LogisticRegression(max_iter=2000)).fit(features[:half], y[:half])
    auc = roc_auc_score(y[half:], clf.predict_proba(features[half:])[:, 1])
    assert 0.58 < auc < 0.85, auc


def test_sparsity_resembles_competition(sim):
    e = sim.energy.reshape(N_EVENTS, -1)
    frac = (e >= 1e-5 * e.sum(axis=1, keepdims=True)).mean(axis=1)
    assert 0.3 < frac.mean() < 0.7
    assert frac.std() > 0.03  # it varies from event to event


def test_same_conditions_give_different_shapes():
    point = np.zeros((2, 3), np.float32)
    momentum = np.tile(np.array([[1.0, -0.5, 20.0]], np.float32), (2, 1))
    imgs = simulate_showers(point, momentum, np.array([11, 11]), np.random.default_rng(0))
    a, b = imgs.astype(np.float64) / imgs.sum(axis=(1, 2), keepdims=True)
    assert np.abs(a - b).sum() > 0.1  # per-event shape fluctuations, not one template


def test_seeds_reproducible_and_different():
    a, b, c = simulate_dataset(300, seed=5), simulate_dataset(300, seed=5), simulate_dataset(300, seed=6)
    for key in ("point", "momentum", "pdg", "energy"):
        assert np.array_equal(getattr(a, key), getattr(b, key))
    assert not np.array_equal(a.energy, c.energy) and not np.array_equal(a.momentum, c.momentum)


def test_chunking_does_not_change_conditions_distribution():
    rng = np.random.default_rng(3)
    point, momentum, pdg = sample_conditions(50, rng, ShowerParams(photon_fraction=1.0))
    assert (pdg == 22).all() and point.shape == (50, 3) and momentum.shape == (50, 3)
    imgs = simulate_showers(point, momentum, pdg, np.random.default_rng(1), chunk=7)
    assert imgs.shape == (50, 30, 30) and imgs.dtype == np.float32


# ----------------------------------------------------------------------------- files and CLI


def test_write_dataset_files_and_manifest(tmp_path):
    manifest = write_dataset(tmp_path, n_train=200, n_val=100, n_test=80, seed=11, progress=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([*DATA_FILES, "manifest.json"])  # no temp files left behind
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert manifest["sizes"] == {"train": 200, "val": 100, "test": 80} and manifest["seed"] == 11
    assert manifest["simulator_version"] == simulate.SIMULATOR_VERSION
    for name in DATA_FILES:
        assert manifest["files"][name]["sha256"] == sha256_file(tmp_path / name)
    train = load_npz(tmp_path / "data_train.npz", require_energy=True)
    val = load_npz(tmp_path / "data_val.npz")
    sol = load_npz(tmp_path / "data_val_solution.npz", require_energy=True)
    with np.load(tmp_path / "data_test.npz", allow_pickle=False) as npz:
        assert KEY_ENERGY not in npz.files
    assert len(train) == 200 and len(val) == 100 and val.energy is None
    assert np.array_equal(val.momentum, sol.momentum) and np.array_equal(val.pdg, sol.pdg)
    assert not np.array_equal(train.momentum[:80], load_npz(tmp_path / "data_test.npz").momentum)


def test_existing_files_are_kept_without_overwrite(tmp_path, capsys):
    write_dataset(tmp_path, n_train=50, n_val=20, n_test=20, seed=1, progress=False)
    before = {n: sha256_file(tmp_path / n) for n in DATA_FILES}
    result = write_dataset(tmp_path, n_train=60, n_val=20, n_test=20, seed=2, progress=False)
    assert result["skipped"] is True and result["seed"] == 1
    assert "--overwrite" in capsys.readouterr().err
    assert before == {n: sha256_file(tmp_path / n) for n in DATA_FILES}
    write_dataset(tmp_path, n_train=60, n_val=20, n_test=20, seed=2, overwrite=True, progress=False)
    assert len(load_npz(tmp_path / "data_train.npz")) == 60


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_save(path, arrays, compress=False):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(path, arrays)

    real_save = simulate.save_npz
    monkeypatch.setattr(simulate, "save_npz", failing_save)
    with pytest.raises(OSError):
        write_dataset(tmp_path / "out", n_train=30, n_val=20, n_test=20, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_writes_files_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "calogan.simulate", "--out", str(out), "--n-train", "60"]
    cmd += ["--n-val", "30", "--n-test", "30", "--seed", "4"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([*DATA_FILES, "manifest.json"])
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0 and "keeping existing files" in second.stderr
    assert stamp == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


@pytest.mark.parametrize(
    "argv",
    [["--n-train", "0"], ["--n-val", "abc"], ["--n-test", "-5"], ["--seed", "x"], ["--bogus"]],
)
def test_cli_bad_options_exit_2(tmp_path, argv, capsys):
    assert run_cli(simulate.main, ["--out", str(tmp_path / "d"), *argv]) == 2
    assert not (tmp_path / "d").exists()
    assert "Traceback" not in capsys.readouterr().err


def test_cli_out_is_a_file_exits_2(tmp_path, capsys):
    target = tmp_path / "not_a_dir"
    target.write_text("x")
    assert (
        run_cli(simulate.main, ["--out", str(target), "--n-train", "5", "--n-val", "5", "--n-test", "5"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0]
    assert Path(target).read_text() == "x"
    assert (
        run_cli(
            simulate.main, ["--out", str(target / "sub"), "--n-train", "5", "--n-val", "5", "--n-test", "5"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {target}") and "is not a folder" in err[0]


def test_cli_set_changes_shower_params_and_records_them(tmp_path, capsys):
    out = tmp_path / "other"
    argv = ["--out", str(out), "--n-train", "200", "--n-val", "100", "--n-test", "100",
            "--set", "moliere_radius_cm=4.55", "--set", "halo_fraction=0.07", "--set", "photon_fraction=0.3"]  # fmt: skip
    assert run_cli(simulate.main, argv) == 0
    params = json.loads((out / "manifest.json").read_text())["params"]
    assert (params["moliere_radius_cm"], params["halo_fraction"], params["photon_fraction"]) == (
        4.55,
        0.07,
        0.3,
    )
    for bad in ("bogus=1", "halo_fraction=nan", "moliere_radius_cm"):
        assert run_cli(simulate.main, ["--out", str(tmp_path / "bad"), "--set", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--set" in err
    assert not (tmp_path / "bad").exists()
