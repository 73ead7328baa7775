"""RICH export: the graph's special functions and interpolation, TorchScript/ONNX parity with the eager model, bad inputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from scipy import special

from calogan.core.runtime import run_cli
from calogan.rich import SENTINEL
from calogan.rich import export as rich_export
from calogan.rich import train as rich_train
from calogan.rich.data import load_sample, no_rich_probability, sample_path
from calogan.rich.models import load_rich_model


@pytest.fixture(scope="module")
def rich_dir(rich_kaon_dir):
    return rich_kaon_dir


@pytest.fixture(
    scope="module",
    params=[(False, False), (True, False), (True, True)],
    ids=["continuous", "tie-patterns", "ties-momentum-scaling"],
)
def tiny_ckpt(rich_dir, rich_kaon_run, tmp_path_factory, request):
    ties, scaling = request.param
    if ties and scaling:  # the suite's shared run: the same settings
        return rich_kaon_run / "checkpoints" / "last.pt"
    run = tmp_path_factory.mktemp("rich_export_run")
    cfg = rich_train.TrainConfig.from_preset(
        "tiny", particle="kaon", data=str(rich_dir), run_dir=str(run), steps=15, weights="sweights",
        tie_patterns=ties, momentum_scaling=scaling,
    )  # fmt: skip
    cfg.progress = False
    return rich_train.train(cfg) / "checkpoints" / "last.pt"


def test_normal_functions_match_scipy():
    p = np.concatenate(
        [np.geomspace(1e-300, 0.5, 2000), 1 - np.geomspace(1e-16, 0.5, 2000), np.linspace(0.01, 0.99, 99)]
    )
    got = rich_export.ndtri(torch.from_numpy(p)).numpy()
    np.testing.assert_allclose(got, special.ndtri(p), rtol=1e-14)
    z = np.linspace(-37.0, 37.0, 20001)
    np.testing.assert_allclose(
        rich_export.ndtr(torch.from_numpy(z)).numpy(), special.ndtr(z), rtol=1e-12, atol=0
    )


def test_interp_matches_numpy_with_ties_and_out_of_range():
    rng = np.random.default_rng(0)
    xp = np.sort(np.round(rng.normal(size=(3, 200)), 1), axis=1)  # many tied knots
    fp = np.sort(rng.uniform(size=(3, 200)), axis=1)
    x = np.concatenate([rng.normal(size=(3, 500)) * 1.5, xp[:, ::7]], axis=1)  # include exact knots
    got = rich_export.interp(torch.from_numpy(x), torch.from_numpy(xp), torch.from_numpy(fp)).numpy()
    want = np.stack([np.interp(x[i], xp[i], fp[i]) for i in range(3)])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n", [2, 3, 8, 1000, 1024])
def test_interp_at_every_knot_count_and_the_equally_spaced_lookup(n):
    """The search reaches every segment whatever n (powers of two included); equally spaced knots (sklearn's
    references) take the search-free lookup, which agrees with numpy to rounding, knots and ends included."""
    rng = np.random.default_rng(n)
    fp = np.sort(np.round(rng.normal(size=(2, n)), 1), axis=1)  # tied values, as quantiles have
    xp = np.sort(rng.uniform(size=(2, n)), axis=1)
    x = np.concatenate([rng.uniform(-0.1, 1.1, (2, 400)), xp, [[0.0, 1.0], [1.0, 0.0]]], axis=1)
    t = torch.from_numpy
    want = np.stack([np.interp(x[i], xp[i], fp[i]) for i in range(2)])
    np.testing.assert_array_equal(rich_export.interp(t(x), t(xp), t(fp)).numpy(), want)
    grid = np.broadcast_to(np.linspace(0, 1, n), (2, n)).copy()
    assert rich_export.equally_spaced(grid) == (n >= 3) and not rich_export.equally_spaced(xp)
    want = np.stack([np.interp(x[i], grid[i], fp[i]) for i in range(2)])
    got = rich_export.interp_uniform(t(x), t(grid), t(fp)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_export_parity_torchscript_onnx_and_eager(tiny_ckpt, rich_dir, tmp_path, capsys):
    """Same inputs and noise: the eager RichModel, the module built from its parts, TorchScript and ONNX agree."""
    model = load_rich_model(tiny_ckpt)
    assert model.dll_basis == "emu"  # the from_basis step is not the identity
    assert (model.scaling is not None) == model.meta["config"]["momentum_scaling"]
    real = load_sample(sample_path(rich_dir, "kaon", "test"))
    inputs = real.inputs[:700]
    noise = np.random.default_rng(1).standard_normal((len(inputs), model.noise_dim)).astype(np.float32)
    noise[:50, : model.generator.noise_dim] *= 4.0  # beyond the output transform's fitted range
    eager = model.generate(inputs, noise=noise, no_rich=False)
    assert np.isfinite(eager).all() and (eager > SENTINEL).all()
    with torch.no_grad():
        module = rich_export.ExportedRichGenerator.from_model(model)
        built = module(torch.from_numpy(inputs), torch.from_numpy(noise)).numpy()
    np.testing.assert_allclose(built, eager, rtol=1e-4, atol=1e-4)
    for fmt, name in (("torchscript", "kaon.pt"), ("onnx", "kaon.onnx")):
        out = tmp_path / name
        args = ["--checkpoint", str(tiny_ckpt), "--format", fmt, "--out", str(out)]
        assert run_cli(rich_export.main, args) == 0
        assert "parity vs eager" in capsys.readouterr().out
        for n in (len(inputs), 3):  # dynamic batch axis
            exported = rich_export.run_exported(out, fmt, inputs[:n], noise[:n])
            assert exported.dtype == np.float32 and exported.shape == (n, 5)
            np.testing.assert_allclose(exported, eager[:n], rtol=1e-4, atol=1e-4)
            # exact ties (a model with tie patterns) come out of the graph on the same tracks
            np.testing.assert_array_equal(
                exported[:, 2:4] == exported[:, 3:5], eager[:n, 2:4] == eager[:n, 3:5]
            )
    if model.ties is not None:
        assert (eager[:, 2] == eager[:, 3]).any() and (eager[:, 3] == eager[:, 4]).any()
    # the no-RICH table beside the model (and in its metadata) reproduces RichModel.generate's -999 draw
    table = json.loads((tmp_path / "kaon.onnx.norich.json").read_text())
    extra = {rich_export.META_NAME: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        torch.jit.load(str(tmp_path / "kaon.pt"), _extra_files=extra)
    meta = json.loads(extra[rich_export.META_NAME])
    assert meta["no_rich"] == table and meta["particle"] == "kaon" and meta["noise_dim"] == noise.shape[1]
    assert meta["momentum_scaling"] == (model.scaling is not None)
    uniform = np.random.default_rng(7).random(len(inputs))
    np.testing.assert_array_equal(
        rich_export.no_rich_mask(table, inputs, uniform),
        uniform < no_rich_probability(model.no_rich_table, inputs),
    )
    full = model.generate(inputs, seed=7, noise=noise)
    exported = rich_export.run_exported(tmp_path / "kaon.onnx", "onnx", inputs, noise)
    exported[rich_export.no_rich_mask(table, inputs, uniform)] = SENTINEL
    np.testing.assert_allclose(exported, full, rtol=1e-4, atol=1e-4)


def test_export_refuses_existing_output_and_bad_checkpoints(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "kaon.pt"
    out.write_bytes(b"keep")
    args = ["--checkpoint", str(tiny_ckpt), "--format", "torchscript", "--out", str(out)]
    assert run_cli(rich_export.main, args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and str(out) in err and err.count("\n") == 1
    assert out.read_bytes() == b"keep" and not rich_export.norich_path(out).exists()
    assert run_cli(rich_export.main, [*args, "--overwrite"]) == 0
    assert out.stat().st_size > 1000 and rich_export.norich_path(out).exists()
    capsys.readouterr()

    ckpt = torch.load(tiny_ckpt, weights_only=True)
    first = next(iter(ckpt["generator_ema"]))
    ckpt["generator_ema"][first][0] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(ckpt, bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "something-else"}, foreign)
    for path, message in (
        (bad, "NaN/Inf value(s) in generator_ema"),
        (foreign, "not a calogan RICH checkpoint"),
    ):
        target = tmp_path / f"{path.stem}.onnx"
        assert (
            run_cli(rich_export.main, ["--checkpoint", str(path), "--format", "onnx", "--out", str(target)])
            == 2
        )
        err = capsys.readouterr().err
        assert message in err and str(path) in err and err.count("\n") == 1
        assert not target.exists()
    assert (
        run_cli(rich_export.main, ["--checkpoint", str(tiny_ckpt), "--format", "tflite", "--out", str(out)])
        == 2
    )
