"""RICH model options (residual, conditions in every layer, critic features, Cramér objective): build, train, load, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from calogan.core.errors import InputError
from calogan.core.gan import gradient_penalty
from calogan.core.runtime import run_cli
from calogan.rich import export as rich_export
from calogan.rich import train as rich_train
from calogan.rich.data import load_sample, sample_path
from calogan.rich.models import (
    STRUCTURE_OPTIONS,
    ConditionalMLP,
    RichCritic,
    RichGenerator,
    build_models,
    load_rich_model,
)

ALL_ON = dict.fromkeys(STRUCTURE_OPTIONS, True)
SIZES = {"noise_dim": 8, "hidden": 16, "depth": 3}


@pytest.fixture(scope="module")
def rich_dir(rich_kaon_dir):
    return rich_kaon_dir


@pytest.fixture(scope="module")
def structured_ckpt(rich_dir, tmp_path_factory):
    """A tiny kaon run with every structure option on (through the CLI flags)."""
    run = tmp_path_factory.mktemp("rich_models_run") / "kaon"
    argv = ["--particle", "kaon", "--data", str(rich_dir), "--preset", "tiny", "--steps", "12", "--run-dir",
            str(run), "--weights", "sweights", "--residual", "--cond-every-layer", "--critic-features"]  # fmt: skip
    assert run_cli(rich_train.main, argv) == 0
    return run / "checkpoints" / "last.pt"


def test_default_models_are_the_plain_mlps_with_the_same_initialisation():
    torch.manual_seed(3)
    g_old, c_old = build_models(SIZES)  # a model_config without the structure keys (older checkpoints)
    torch.manual_seed(3)
    g_new, c_new = build_models({**SIZES, **dict.fromkeys(STRUCTURE_OPTIONS, False)})
    assert isinstance(g_new.net, nn.Sequential) and isinstance(c_new.net, nn.Sequential)
    for old, new in ((g_old, g_new), (c_old, c_new)):
        assert list(old.state_dict()) == list(new.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    assert list(g_new.state_dict())[:2] == ["net.0.weight", "net.0.bias"]  # names of the first checkpoints


def test_cond_every_layer_reaches_the_output_past_the_first_layer():
    torch.manual_seed(0)
    g = RichGenerator(8, 16, 3, cond_every_layer=True)
    assert all(layer.in_features == 16 + 3 for layer in g.net.hidden) and g.net.out.in_features == 16 + 3
    with torch.no_grad():
        g.net.first.weight[:, 8:] = 0.0  # the first layer no longer sees the conditions
    noise = torch.randn(5, 8)
    a, b = g(noise, torch.zeros(5, 3)), g(noise, torch.ones(5, 3))
    assert not torch.allclose(a, b)  # they still arrive through the later layers
    plain = RichGenerator(8, 16, 3)
    with torch.no_grad():
        plain.net[0].weight[:, 8:] = 0.0
    torch.testing.assert_close(plain(noise, torch.zeros(5, 3)), plain(noise, torch.ones(5, 3)))


def test_residual_blocks_carry_the_input_past_zeroed_layers():
    torch.manual_seed(0)
    net = ConditionalMLP(4, 2, 16, 3, residual=True)
    with torch.no_grad():
        for layer in net.hidden:
            layer.weight.zero_()
            layer.bias.zero_()
    x = torch.randn(6, 4)
    torch.testing.assert_close(net(x), net.out(net.act(net.first(x))))  # identity skips
    plain = ConditionalMLP(4, 2, 16, 3, residual=False)
    plain.load_state_dict(net.state_dict())
    torch.testing.assert_close(plain(x), net.out(net.act(torch.zeros(6, 16))))  # no skip: the signal is lost


def test_critic_features_depend_on_conditions_and_keep_the_penalty_on_the_dlls():
    torch.manual_seed(0)
    critic = RichCritic(16, 3, residual=True, critic_features=True)
    assert critic.net.first.in_features == 5 + 3 + 3 * 2 * 4
    dlls, cond = torch.randn(32, 5), torch.randn(32, 3)
    assert critic(dlls, cond).shape == (32,)
    assert not torch.allclose(critic(dlls, cond), critic(dlls, cond + 0.05))
    penalty, norms = gradient_penalty(critic, dlls, torch.randn(32, 5), cond, 10.0)
    penalty.backward()
    assert norms.shape == (32,) and torch.isfinite(penalty)
    assert critic.net.first.weight.grad is not None and critic.net.first.weight.grad.abs().sum() > 0


def test_options_train_store_and_load(structured_ckpt):
    ckpt = torch.load(structured_ckpt, weights_only=True)
    assert ckpt["step"] == 12
    assert all(ckpt["model_config"][k] is True for k in STRUCTURE_OPTIONS)
    assert all(ckpt["config"][k] is True for k in STRUCTURE_OPTIONS)
    config_json = json.loads((structured_ckpt.parent.parent / "config.json").read_text())
    assert all(config_json[k] is True for k in STRUCTURE_OPTIONS)
    assert any(name.startswith("net.hidden.") for name in ckpt["generator_ema"])
    assert ckpt["critic"]["net.first.weight"].shape[1] == 5 + 3 + 24
    model = load_rich_model(structured_ckpt)
    assert model.generator.structured and model.generator.net.n_cond == 3 and model.generator.net.residual
    for name, tensor in model.generator.state_dict().items():
        assert torch.equal(tensor, ckpt["generator_ema"][name])
    inputs = np.array([[10.0, 3.0, 100.0], [50.0, 2.5, 300.0]], np.float32)
    dlls = model.generate(inputs, seed=1, no_rich=False)
    assert dlls.shape == (2, 5) and np.isfinite(dlls).all()
    np.testing.assert_array_equal(dlls, model.generate(inputs, seed=1, no_rich=False))


def test_resume_keeps_the_structure_options(rich_dir, tmp_path):
    def cfg(run, steps):
        config = rich_train.TrainConfig.from_preset("tiny", particle="kaon", data=str(rich_dir), run_dir=str(run),
                                                    steps=steps, weights="sweights", **ALL_ON)  # fmt: skip
        config.progress = False
        return config

    rich_train.train(cfg(tmp_path / "a", 6))
    rich_train.train(cfg(tmp_path / "b", 3))
    plain = rich_train.TrainConfig.from_preset("tiny", particle="kaon", data=str(rich_dir),
                                               run_dir=str(tmp_path / "b"), steps=6, weights="sweights")  # fmt: skip
    plain.progress = False
    rich_train.train(plain, resume=True)  # the saved config (options on) wins over the caller's
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert b["step"] == 6 and b["model_config"] == a["model_config"]
    for key in ("generator", "generator_ema", "critic"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"


def test_export_parity_with_the_options_on(structured_ckpt, rich_dir, tmp_path, capsys):
    model = load_rich_model(structured_ckpt)
    inputs = load_sample(sample_path(rich_dir, "kaon", "test")).inputs[:300]
    noise = (
        np.random.default_rng(2).standard_normal((len(inputs), model.generator.noise_dim)).astype(np.float32)
    )
    eager = model.generate(inputs, noise=noise, no_rich=False)
    formats = [("torchscript", "kaon.pt")]
    try:
        rich_export.require_onnx()
        formats.append(("onnx", "kaon.onnx"))
    except InputError:  # the onnx extra is optional
        pass
    for fmt, name in formats:
        out = tmp_path / name
        args = ["--checkpoint", str(structured_ckpt), "--format", fmt, "--out", str(out)]
        assert run_cli(rich_export.main, args) == 0
        assert "parity vs eager" in capsys.readouterr().out
        for n in (len(inputs), 4):
            exported = rich_export.run_exported(out, fmt, inputs[:n], noise[:n])
            np.testing.assert_allclose(exported, eager[:n], rtol=1e-4, atol=1e-4)


def test_cramer_objective_trains_a_vector_critic(rich_dir, tmp_path, capsys):
    run = tmp_path / "kaon"
    argv = ["--particle", "kaon", "--data", str(rich_dir), "--preset", "tiny", "--steps", "6", "--run-dir",
            str(run), "--objective", "cramer", "--critic-dim", "8", "--ema-decay", "0.9"]  # fmt: skip
    assert run_cli(rich_train.main, argv) == 0
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["config"]["objective"] == "cramer" and ckpt["model_config"]["critic_out"] == 8
    assert ckpt["config"]["ema_decay"] == 0.9
    _, critic = build_models(ckpt["model_config"])
    critic.load_state_dict(ckpt["critic"])
    assert critic(torch.zeros(4, 5), torch.zeros(4, 3)).shape == (4, 8)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(last["cramer_surrogate"]) and np.isfinite(last["loss_generator"])
    dlls = load_rich_model(run / "checkpoints" / "last.pt").generate(np.array([[10.0, 3.0, 100.0]]), seed=0)
    assert dlls.shape == (1, 5) and np.isfinite(dlls).all()
    bad = argv[:-6] + ["--objective", "hinge", "--overwrite"]
    assert run_cli(rich_train.main, bad) == 2
    assert "--objective: must be one of wgan-gp, cramer, got 'hinge'" in capsys.readouterr().err


def test_wgan_checkpoints_without_critic_out_still_load():
    generator, critic = build_models(SIZES)  # model_config of checkpoints written before the option
    assert critic(torch.zeros(2, 5), torch.zeros(2, 3)).shape == (2,)
