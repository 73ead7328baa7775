"""Predictions: seeded, batch-size independent, streamed, atomic, validated."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from calogan.core.errors import InputError
from calogan.core.runtime import atomic_torch_save, run_cli
from calogan.ecal.data import CaloData, load_npz, load_prediction, save_npz, split_path
from calogan.ecal.models import CHECKPOINT_FORMAT, build_generator, load_generator
from calogan.ecal.predict import generate, main, predict_with_generator, write_prediction_streamed


class StandInGenerator(torch.nn.Module):
    """A tiny generator with the calogan.ecal.models interface: forward(noise, raw (B,6)) -> (B,30,30) >= 0."""

    noise_dim = 8

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.0, 0.0, 0.0, 0.0, 30.0]))
        self.register_buffer("std", torch.tensor([2.7, 2.7, 3.0, 3.0, 25.0]))
        self.net = torch.nn.Sequential(
            torch.nn.Linear(self.noise_dim + 6, 32), torch.nn.LeakyReLU(0.2), torch.nn.Linear(32, 900)
        )

    def forward(self, noise, conditions):
        cont = (conditions[:, :5] - self.mean) / self.std
        h = self.net(torch.cat([noise, cont, conditions[:, 5:]], dim=1))
        scale = 165.0 * conditions[:, 2:5].norm(dim=1, keepdim=True)
        return (torch.softmax(h, dim=1) * scale).reshape(-1, 30, 30)


def fake_split(n: int, seed: int) -> CaloData:
    """Random but valid conditions (no images), like data_val.npz / data_test.npz."""
    rng = np.random.default_rng(seed)
    point = np.concatenate([rng.normal(0, 2.7, (n, 2)), np.zeros((n, 1))], axis=1).astype(np.float32)
    momentum = np.concatenate([rng.normal(0, 3, (n, 2)), rng.uniform(1, 100, (n, 1))], axis=1).astype(
        np.float32
    )
    pdg = rng.choice([11, 22], n).astype(np.int64)
    return CaloData(point=point, momentum=momentum, pdg=pdg)


def write_fake_data(directory, n_val: int = 150, n_test: int = 130):
    """data_val.npz and data_test.npz with random conditions."""
    save_npz(split_path(directory, "val"), fake_split(n_val, 1).to_arrays())
    save_npz(split_path(directory, "test"), fake_split(n_test, 2).to_arrays())
    return directory


def save_small_checkpoint(path, model: str = "shower"):
    """A calogan-checkpoint-v1 file with a small untrained calogan.ecal.models generator (as calogan.ecal.train writes)."""
    torch.manual_seed(0)
    config = {"model": model, "noise_dim": 8, "latent": 16, "gen_channels": 8}
    ema = build_generator(config).state_dict()
    raw = {k: v + 0.01 if v.is_floating_point() else v for k, v in ema.items()}
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model_config": config,
        "generator": raw,
        "generator_ema": ema,
        "step": 7,
    }
    return atomic_torch_save(path, ckpt)


@pytest.fixture(scope="module")
def standin():
    torch.manual_seed(0)
    return StandInGenerator().eval()


def test_generate_is_seeded_and_batch_size_independent(standin):
    data = fake_split(300, 0)
    a = generate(standin, data, batch_size=1024, seed=5, device="cpu")
    b = generate(standin, data, batch_size=7, seed=5, device="cpu")
    c = generate(standin, data, batch_size=1024, seed=6, device="cpu")
    assert a.shape == (300, 30, 30) and a.dtype == np.float32
    assert np.isfinite(a).all() and (a >= 0).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * a.max())
    assert not np.allclose(a, c)
    # same order: event i's energy scale follows event i's momentum
    np.testing.assert_allclose(a.sum(axis=(1, 2)), 165.0 * np.linalg.norm(data.momentum, axis=1), rtol=1e-3)


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_compiled_backends_match_eager(backend):
    torch.manual_seed(1)
    gen = build_generator({"model": "shower", "noise_dim": 8, "latent": 16, "gen_channels": 8}).eval()
    data = fake_split(200, 3)
    eager = generate(gen, data, batch_size=64, seed=2, device="cpu", backend="eager")
    fast = generate(gen, data, batch_size=64, seed=2, device="cpu", backend=backend)
    assert fast.shape == eager.shape and fast.dtype == np.float32
    assert np.abs(fast - eager).max() <= 1e-4 * eager.max()


def test_unknown_backend_is_a_clear_error(standin):
    with pytest.raises(InputError, match="--backend: unknown backend 'jax'"):
        generate(standin, fake_split(4, 0), backend="jax")


def test_predict_writes_both_files_identically_per_seed(standin, tmp_path):
    data_dir = write_fake_data(tmp_path / "data")
    out1 = predict_with_generator(standin, data_dir, tmp_path / "p1", seed=3, batch_size=64, progress=False)
    out2 = predict_with_generator(standin, data_dir, tmp_path / "p2", seed=3, batch_size=64, progress=False)
    assert [p.name for p in out1] == ["data_val_prediction.npz", "data_test_prediction.npz"]
    for p1, p2, n in zip(out1, out2, (150, 130)):
        assert p1.read_bytes() == p2.read_bytes()
        images = load_prediction(p1, n_expected=n)
        with np.load(p1, allow_pickle=False) as npz:
            assert npz.files == ["EnergyDeposit"] and npz["EnergyDeposit"].dtype == np.float32
        assert images.shape == (n, 30, 30)
    val = np.load(out1[0])["EnergyDeposit"]
    test = np.load(out1[1])["EnergyDeposit"]
    assert not np.allclose(val[:100], test[:100])  # splits get different noise streams
    # refuse to overwrite without --overwrite, and keep the old files untouched
    before = out1[0].read_bytes()
    with pytest.raises(InputError, match="already exists"):
        predict_with_generator(standin, data_dir, tmp_path / "p1", seed=4, progress=False)
    assert out1[0].read_bytes() == before
    predict_with_generator(standin, data_dir, tmp_path / "p1", seed=4, overwrite=True, progress=False)
    assert out1[0].read_bytes() != before


def test_streamed_writer_leaves_nothing_on_failure(tmp_path):
    def batches():
        yield np.ones((4, 30, 30), np.float32)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_prediction_streamed(tmp_path / "x.npz", batches(), 10, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_nan_generator_is_reported(tmp_path):
    class NaNGen(StandInGenerator):
        def forward(self, noise, conditions):
            return torch.full((noise.shape[0], 30, 30), float("nan"))

    data_dir = write_fake_data(tmp_path / "data", 20, 20)
    with pytest.raises(InputError, match="NaN"):
        predict_with_generator(NaNGen(), data_dir, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "data_val_prediction.npz").exists()


def test_bad_data_files(standin, tmp_path):
    data_dir = write_fake_data(tmp_path / "data", 20, 20)
    split_path(data_dir, "test").unlink()
    with pytest.raises(InputError, match="data_test.npz: file not found"):
        predict_with_generator(standin, data_dir, tmp_path / "out", progress=False)
    bad = fake_split(20, 3).to_arrays()
    bad["ParticleMomentum"][0, 2] = np.nan
    save_npz(split_path(data_dir, "test"), bad)
    with pytest.raises(InputError, match="NaN"):
        predict_with_generator(standin, data_dir, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


def test_predict_cli_bad_checkpoint(tmp_path, capsys):
    data_dir = write_fake_data(tmp_path / "data", 20, 20)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"\x00garbage")
    out = tmp_path / "o"
    # once through the real `python -m` entry point, then in-process (same run_cli wrapper)
    proc = run_module("calogan.predict", "--checkpoint", str(bad), "--data", str(data_dir), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and bad.name in proc.stderr
    capsys.readouterr()
    for ckpt in (tmp_path / "missing.pt", save_small_checkpoint(tmp_path / "ok.pt")):
        argv = ["--checkpoint", str(ckpt), "--data", str(tmp_path / "nodata"), "--out", str(out)]
        assert run_cli(main, argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and (
            "missing.pt" in err or "data_val.npz: file not found" in err
        ), err
    assert not out.exists()


def test_predict_cli_end_to_end_with_checkpoint(tmp_path, capsys):
    """The predict CLI on a real calogan.ecal.models checkpoint: EMA weights, seeded, valid files."""
    data_dir = write_fake_data(tmp_path / "data", 70, 50)
    ckpt = save_small_checkpoint(tmp_path / "best.pt")
    argv = [
        "--checkpoint",
        str(ckpt),
        "--data",
        str(data_dir),
        "--seed",
        "2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "out"),
    ]
    assert run_cli(main, argv) == 0
    val = load_prediction(tmp_path / "out" / "data_val_prediction.npz", n_expected=70)
    load_prediction(tmp_path / "out" / "data_test_prediction.npz", n_expected=50)
    ema, _ = load_generator(ckpt, ema=True)
    raw, _ = load_generator(ckpt, ema=False)
    data = load_npz(split_path(data_dir, "val"), require_energy=False)
    expected = generate(ema, data, seed=(2, 0), device="cpu")
    np.testing.assert_allclose(val, expected, rtol=1e-5, atol=1e-6 * expected.max())
    assert not np.allclose(val, generate(raw, data, seed=(2, 0), device="cpu"), rtol=1e-3)
    capsys.readouterr()
    assert run_cli(main, argv) == 2
    assert "already exists" in capsys.readouterr().err
