"""Embedder: training, safetensors round trip, data-hash check, train-and-cache, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from calogan.core.errors import InputError
from calogan.core.runtime import run_cli
from calogan.ecal.data import load_npz, save_npz, sha256_file, split_path
from calogan.metrics.embedder import Embedder, load_embedder, load_or_train_embedder, main, train_embedder


@pytest.fixture(scope="module")
def small_train_dir(tiny_data_dir, tmp_path_factory):
    """A folder with the first 400 training events of the tiny data set."""
    out = tmp_path_factory.mktemp("emb_data")
    data = load_npz(split_path(tiny_data_dir, "train"), require_energy=True).subset(slice(0, 400))
    save_npz(split_path(out, "train"), data.to_arrays())
    return out


@pytest.fixture(scope="module")
def trained(small_train_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("emb") / "e.safetensors"
    model = train_embedder(small_train_dir, out=path, epochs=1, batch_size=64, progress=False)
    return model, path


def test_embedding_shape_and_determinism(trained, tiny_data_dir):
    model, _ = trained
    images = load_npz(split_path(tiny_data_dir, "val", "solution"), require_energy=True).energy[:50]
    a, b = model.embed(images), model.embed(images, batch_size=7)
    assert a.shape == (50, 64) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # batching does not matter in eval mode
    assert a.std(axis=0).max() > 0  # the embedding varies between images


def test_round_trip_and_metadata(trained, small_train_dir, tiny_data_dir):
    model, path = trained
    loaded = load_embedder(path, expected_sha256=sha256_file(split_path(small_train_dir, "train")))
    images = load_npz(split_path(tiny_data_dir, "val", "solution"), require_energy=True).energy[:20]
    np.testing.assert_array_equal(model.embed(images), loaded.embed(images))
    assert loaded.meta["n_train"] == 400
    np.testing.assert_allclose(loaded.normalizer.mean, model.normalizer.mean)


def test_hash_mismatch_refused_unless_allowed(trained):
    _, path = trained
    with pytest.raises(InputError, match="allow-embedder-mismatch"):
        load_embedder(path, expected_sha256="0" * 64)
    assert isinstance(load_embedder(path, expected_sha256="0" * 64, allow_mismatch=True), Embedder)


def test_bad_embedder_file(tmp_path):
    bad = tmp_path / "e.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable embedder"):
        load_embedder(bad)
    with pytest.raises(InputError, match="not found"):
        load_embedder(tmp_path / "missing.safetensors")


def test_load_or_train_caches(small_train_dir, tmp_path, capsys):
    save_npz(
        split_path(tmp_path, "train"),
        load_npz(split_path(small_train_dir, "train")).subset(slice(0, 128)).to_arrays(),
    )
    model = load_or_train_embedder(tmp_path, epochs=1, batch_size=64, progress=False)
    assert "training one" in capsys.readouterr().err
    assert (tmp_path / "embedder.safetensors").is_file()
    again = load_or_train_embedder(tmp_path, progress=False)  # now loaded, not retrained
    assert capsys.readouterr().err == ""
    assert again.meta["data_sha256"] == model.meta["data_sha256"]


def test_cli(small_train_dir, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    assert (
        run_cli(
            main, ["--data", str(small_train_dir), "--out", str(out), "--epochs", "1", "--max-events", "64"]
        )
        == 0
    )
    assert out.is_file()
    assert run_cli(main, ["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "data_train.npz" in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()
