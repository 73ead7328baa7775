"""Exported generators (TorchScript, ONNX) match the eager model and accept any batch size."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from test_predict import StandInGenerator, save_small_checkpoint

from calogan.core.errors import InputError
from calogan.core.runtime import run_cli
from calogan.ecal.export import (
    INPUT_NAMES,
    PARITY_RTOL,
    ParallelOnnxSession,
    RawInputGenerator,
    check_parity,
    example_inputs,
    export_generator,
    load_torchscript,
    main,
    onnx_session,
)
from calogan.ecal.models import load_generator


@pytest.fixture(scope="module")
def standin():
    torch.manual_seed(0)
    return StandInGenerator().eval()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_parity_and_dynamic_batch(standin, tmp_path, fmt):
    out = tmp_path / f"gen.{fmt}"
    path, err = export_generator(standin, out, fmt, meta={"checkpoint": "x.pt"})
    assert path == out and out.exists()
    assert err is not None and err <= PARITY_RTOL
    # independent re-check at batch sizes 1 and 257, values against the eager wrapper
    assert check_parity(standin, out, fmt, batch_sizes=(1, 257)) <= PARITY_RTOL
    inputs = example_inputs(3, standin.noise_dim, seed=7)
    if fmt == "torchscript":
        module, meta = load_torchscript(out)
        with torch.no_grad():
            got = module(*inputs).numpy()
        assert meta["noise_dim"] == standin.noise_dim and meta["checkpoint"] == "x.pt"
    else:
        session = onnx_session(out)
        got = session.run(
            None, {n: t.numpy() for n, t in zip(["point", "momentum", "pdg", "noise"], inputs)}
        )[0]
    assert got.shape == (3, 30, 30) and got.dtype == np.float32 and (got >= 0).all()


def test_parallel_onnx_session_matches_one_session(standin, tmp_path):
    """Chunked, threaded ONNX Runtime returns the single-session outputs in order, for any batch size."""
    pytest.importorskip("onnxruntime")
    out, _ = export_generator(standin, tmp_path / "gen.onnx", "onnx")
    single = onnx_session(out)
    parallel = ParallelOnnxSession(out, workers=2, chunk=8)
    try:
        for n in (1, 8, 37):
            feeds = {k: t.numpy() for k, t in zip(INPUT_NAMES, example_inputs(n, standin.noise_dim, seed=n))}
            want = single.run(None, feeds)[0]
            got = parallel.run(None, feeds)[0]
            assert got.shape == want.shape == (n, 30, 30)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.abs(want).max()))
    finally:
        parallel.close()
    with pytest.raises(InputError, match="chunk"):
        ParallelOnnxSession(out, chunk=0)
    with pytest.raises(InputError, match="file not found"):
        ParallelOnnxSession(tmp_path / "missing.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(InputError, match="broken.onnx: not a loadable ONNX model"):
        ParallelOnnxSession(tmp_path / "broken.onnx")


def test_wrapper_maps_pdg_and_point(standin):
    """The raw wrapper feeds (x, y, px, py, pz, is_photon) to the generator; z of the point is ignored."""
    point, momentum, pdg, noise = example_inputs(4, standin.noise_dim)
    pdg = torch.tensor([11.0, 22.0, -11.0, -22.0])
    wrapped = RawInputGenerator(standin)
    cond = torch.cat([point, momentum, torch.tensor([[0.0], [1.0], [0.0], [1.0]])], dim=1)
    expected = standin(noise, cond)
    point3 = torch.cat([point, torch.full((4, 1), 1234.0)], dim=1)
    assert torch.allclose(wrapped(point3, momentum, pdg, noise), expected)


def test_export_refuses_existing_and_bad_format(standin, tmp_path):
    out = tmp_path / "gen.pt"
    out.write_bytes(b"keep me")
    with pytest.raises(InputError, match="already exists"):
        export_generator(standin, out, "torchscript")
    assert out.read_bytes() == b"keep me"
    with pytest.raises(InputError, match="unknown format"):
        export_generator(standin, tmp_path / "g.x", "tflite")


def test_export_cli_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    for ckpt in (bad, tmp_path / "missing.pt"):
        assert run_cli(main, ["--checkpoint", str(ckpt), "--out", str(tmp_path / "g.pt")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ckpt.name in err
    assert not (tmp_path / "g.pt").exists()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_cli_real_generator(tmp_path, capsys, fmt):
    """The default calogan.ecal.models generator exports from a checkpoint and matches eager (fresh batch sizes)."""
    ckpt = save_small_checkpoint(tmp_path / "c.pt")
    out = tmp_path / f"g.{fmt}"
    assert run_cli(main, ["--checkpoint", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    assert "parity" in capsys.readouterr().out
    generator, _ = load_generator(ckpt)
    assert check_parity(generator, out, fmt, batch_sizes=(2, 65)) <= PARITY_RTOL
    assert run_cli(main, ["--checkpoint", str(ckpt), "--format", fmt, "--out", str(out)]) == 2


def test_onnx_without_the_extra_is_one_clear_error(standin, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(InputError, match=r"optional onnx extra .*pip install"):
        export_generator(standin, tmp_path / "g.onnx", "onnx")
    assert not (tmp_path / "g.onnx").exists()
