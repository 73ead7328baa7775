"""Generators and critic: shapes, non-negativity, conditioning, gradient penalty, export, loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calogan.core.errors import InputError
from calogan.core.gan import gradient_penalty
from calogan.ecal.models import (
    Baseline2019Generator,
    ShowerGenerator,
    build_critic,
    build_generator,
    critic_features,
    fractions_from_features,
    load_generator,
)

SMALL = {"noise_dim": 8, "latent": 16, "gen_channels": 4, "critic_channels": 4, "critic_hidden": 16}


def conditions(n: int, seed: int = 0) -> torch.Tensor:
    """Random raw conditions (x, y, px, py, pz, is_photon) like the competition's."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.randn(n, 2, generator=g) * 2.7
    pxy = torch.randn(n, 2, generator=g) * 3.0
    pz = torch.rand(n, 1, generator=g) * 99 + 1
    photon = (torch.rand(n, 1, generator=g) > 0.5).float()
    return torch.cat([xy, pxy, pz, photon], dim=1)


@pytest.mark.parametrize("model", ["shower", "baseline2019"])
def test_generator_shape_nonnegative_finite(model):
    torch.manual_seed(0)
    gen = build_generator({"model": model, **SMALL})
    cond = conditions(7)
    out = gen(torch.randn(7, gen.noise_dim), cond)
    assert out.shape == (7, 30, 30)
    assert torch.isfinite(out).all() and (out >= 0).all()


def test_shower_generator_energy_scale_and_conditioning():
    torch.manual_seed(0)
    gen = ShowerGenerator(**{k: SMALL[k] for k in ("noise_dim", "latent")}, channels=4).eval()
    cond = conditions(5)
    out = gen(torch.randn(5, gen.noise_dim), cond)
    # energy head starts at zero: the image sum is exactly 165 * |p| before training
    expected = 165.0 * cond[:, 2:5].norm(dim=1)
    torch.testing.assert_close(out.sum(dim=(1, 2)), expected, rtol=1e-4, atol=1e-2)
    # the particle type and the noise both change the shower
    flipped = cond.clone()
    flipped[:, 5] = 1 - flipped[:, 5]
    z = torch.randn(5, gen.noise_dim)
    assert not torch.allclose(gen(z, cond), gen(z, flipped))
    assert not torch.allclose(gen(z, cond), gen(torch.randn(5, gen.noise_dim), cond))


def test_padded_generator_keeps_only_the_window_part_of_the_shower():
    torch.manual_seed(0)
    sizes = {"noise_dim": 8, "latent": 16, "channels": 4}
    gen = ShowerGenerator(**sizes, pad=5, noise_modulation=True).eval()
    assert gen.noise_dim == 8 + 40 * 40  # per-cell noise over the padded grid
    cond = torch.tensor([[0.0, 0.0, 0.0, 0.0, 20.0, 0.0], [14.0, 0.0, 0.0, 0.0, 20.0, 0.0]])
    with torch.no_grad():
        out = gen(torch.randn(2, gen.noise_dim), cond)
    assert out.shape == (2, 30, 30) and (out >= 0).all()
    # before training the whole padded shower holds 165 |p|; the window keeps only its part of it
    window = out.sum(dim=(1, 2))
    assert (window < 0.9 * 165.0 * 20.0).all() and (window > 0).all()
    # without padding the window holds every unit of the shower's energy
    flat = ShowerGenerator(**sizes).eval()
    with torch.no_grad():
        total = flat(torch.randn(2, flat.noise_dim), cond).sum(dim=(1, 2))
    torch.testing.assert_close(total, torch.full((2,), 165.0 * 20.0), rtol=1e-4, atol=1e-2)


def test_logit_noise_draws_log_normal_cell_fluctuations_from_its_own_noise_block():
    torch.manual_seed(0)
    sizes = {"noise_dim": 8, "latent": 16, "channels": 4}
    gen = ShowerGenerator(**sizes, pad=1, logit_noise=True).eval()
    assert gen.noise_dim == 8 + 2 * 32 * 32  # conv-path cell noise, then the log-energy noise
    cond = torch.tensor([[0.0, 0.0, 0.0, 0.0, 20.0, 0.0]]).repeat(200, 1)
    z = torch.randn(200, gen.noise_dim)
    z_quiet = z.clone()
    z_quiet[:, 8 + 32 * 32 :] = 0.0  # the same showers without the log-energy noise
    with torch.no_grad():
        noisy, quiet = gen(z, cond), gen(z_quiet, cond)
    assert noisy.shape == (200, 30, 30) and (noisy > 0).all()
    # the cell-to-cell spread of log(noisy / quiet) is the initial amplitude, 0.5 in log units
    log_ratio = torch.log(noisy / quiet)
    spread = (log_ratio - log_ratio.mean(dim=(1, 2), keepdim=True)).std()
    assert 0.4 < spread.item() < 0.6


def test_cell_gates_choose_between_hit_and_background_per_cell_from_their_own_noise():
    torch.manual_seed(0)
    gen = ShowerGenerator(noise_dim=8, latent=16, channels=4, cell_gates=True).eval()
    assert gen.noise_dim == 8 + 2 * 30 * 30  # conv-path cell noise, then the gate draws
    cond = torch.tensor([[0.0, 0.0, 0.0, 0.0, 20.0, 0.0]]).repeat(100, 1)
    z = torch.randn(100, gen.noise_dim)
    lit, dark = z.clone(), z.clone()
    lit[:, 908:], dark[:, 908:] = 10.0, -10.0  # every gate open / every gate shut
    with torch.no_grad():
        mixed, all_hit, all_background = gen(z, cond), gen(lit, cond), gen(dark, cond)
    assert (mixed > 0).all()
    # at initialisation the background level is e^-2 below the hit level in every cell: shutting every gate
    # changes nothing after normalisation, while a random draw mixes the two levels cell by cell
    torch.testing.assert_close(all_hit, all_background, rtol=1e-4, atol=1e-6)
    log_ratio = torch.log(mixed / all_hit)
    levels = log_ratio - log_ratio.amax(dim=(1, 2), keepdim=True)
    assert ((levels > -0.3).float().mean() > 0.2) and ((levels < -1.7).float().mean() > 0.2)
    # hard gates: every cell exactly at one of the two levels, and the gate logits still get a gradient
    hard = ShowerGenerator(noise_dim=8, latent=16, channels=4, cell_gates=True, hard_gates=True)
    hard.load_state_dict(gen.state_dict())
    out = hard(z, cond)
    levels = torch.log(out / all_hit).detach()
    levels = levels - levels.amax(dim=(1, 2), keepdim=True)
    assert ((levels.abs() < 1e-4) | ((levels + 2.0).abs() < 1e-4)).all()
    out.pow(2).sum().backward()
    assert hard.gate.weight.grad.abs().sum() > 0


def test_generator_options_default_off_for_old_configs_and_old_weights_still_load():
    old_config = {"model": "shower", **SMALL}  # written before gen_pad / noise_modulation existed
    gen = build_generator(old_config)
    assert gen.pad == 0 and gen.noise_amp is None and gen.logit_amp is None and gen.gate is None
    assert not any("grid" in k for k in gen.state_dict())  # the padded grid is derived, not stored
    build_generator(old_config).load_state_dict(gen.state_dict())
    with pytest.raises(InputError, match="gen_pad"):
        build_generator({**old_config, "gen_pad": -1})


def test_baseline2019_layer_sizes():
    gen = Baseline2019Generator()
    linears = [m for m in gen.fc if isinstance(m, torch.nn.Linear)]
    assert [m.in_features for m in linears] == [15, 64, 128, 512]
    assert linears[-1].out_features == 256 * 9 * 9
    assert [m.out_channels for m in gen.deconv if isinstance(m, torch.nn.ConvTranspose2d)] == [
        256,
        128,
        64,
        32,
        16,
        1,
    ]


def test_critic_has_no_batchnorm_and_scores_per_sample():
    critic = build_critic(SMALL)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    cond = conditions(4)
    images = torch.rand(4, 30, 30) * 10
    feats = critic_features(images, cond)
    assert feats.shape == (4, 901)
    scores = critic(feats, cond)
    assert scores.shape == (4,)
    # per-sample: changing one image changes only its own score
    feats2 = feats.clone()
    feats2[0, :900] += 0.5
    changed = critic(feats2, cond) != scores
    assert changed.tolist() == [True, False, False, False]


def test_critic_core_channel_is_optional_and_sees_the_linear_fraction():
    assert build_critic(SMALL).conv[0].in_channels == 7  # old configs (no key) keep the old architecture
    critic = build_critic({**SMALL, "critic_core": True})
    assert critic.conv[0].in_channels == 8
    cond = conditions(3)
    images = torch.rand(3, 30, 30) * 10
    images.requires_grad_(True)
    scores = critic(critic_features(images, cond), cond)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    scores.sum().backward()
    assert torch.isfinite(images.grad).all()
    # the core channel recovers the energy fraction from the critic features to float precision
    feats = critic_features(images.detach(), cond)[:, :900]
    frac = fractions_from_features(feats)
    expected = images.detach().reshape(3, -1) / images.detach().reshape(3, -1).sum(1, keepdim=True)
    assert torch.allclose(frac, expected, atol=1e-6)


def test_critic_summary_reads_the_shower_statistics_and_keeps_per_sample_gradients():
    plain, critic = build_critic(SMALL), build_critic({**SMALL, "critic_summary": True})
    assert critic.head[0].in_features == plain.head[0].in_features + 26 + 21  # summary + rank profile
    cond = conditions(3)
    images = (torch.rand(3, 30, 30) * 10).requires_grad_(True)
    scores = critic(critic_features(images, cond), cond)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    (grad,) = torch.autograd.grad(scores[0], images, create_graph=True)  # double backward for the penalty
    assert torch.isfinite(grad).all() and grad[1:].abs().sum() == 0 and grad[0].abs().sum() > 0
    grad.pow(2).sum().backward()


def test_gradient_penalty_uses_per_sample_norm_over_all_inputs():
    torch.manual_seed(1)
    critic = build_critic(SMALL)
    cond = conditions(6)
    real = critic_features(torch.rand(6, 30, 30), cond)
    fake = critic_features(torch.rand(6, 30, 30), cond)
    torch.manual_seed(5)
    penalty, norms = gradient_penalty(critic, real, fake, cond, weight=10.0)
    torch.manual_seed(5)  # same interpolation weights
    alpha = torch.rand(6, 1)
    expected = []
    for i in range(6):  # one sample at a time: its gradient norm over all 901 inputs
        x = (alpha[i] * real[i : i + 1] + (1 - alpha[i]) * fake[i : i + 1]).requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x, cond[i : i + 1]).sum(), x)
        expected.append(grad.norm())
    expected = torch.stack(expected)
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(penalty, 10.0 * ((expected - 1) ** 2).mean(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "model, options",
    [
        ("shower", {}),
        ("shower", {"gen_pad": 3, "noise_modulation": True}),
        ("shower", {"gen_pad": 2, "logit_noise": True, "cell_gates": True}),
        ("shower", {"cell_gates": True, "hard_gates": True}),
        ("baseline2019", {}),
    ],
)
def test_generators_trace_and_script(model, options):
    torch.manual_seed(0)
    gen = build_generator({"model": model, **SMALL, **options}).eval()
    cond = conditions(3)
    z = torch.randn(3, gen.noise_dim)
    ref = gen(z, cond)
    traced = torch.jit.trace(gen, (torch.randn(5, gen.noise_dim), conditions(5, 1)))
    torch.testing.assert_close(traced(z, cond), ref)
    scripted = torch.jit.script(gen)
    torch.testing.assert_close(scripted(z, cond), ref)


def test_unknown_model_is_input_error():
    with pytest.raises(InputError, match="unknown model"):
        build_generator({"model": "nope"})


def test_load_generator_rejects_foreign_and_corrupt_files(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(InputError, match="not a calogan checkpoint"):
        load_generator(foreign)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match="corrupt.pt"):
        load_generator(corrupt)
    with pytest.raises(InputError, match="not found"):
        load_generator(tmp_path / "missing.pt")


def test_load_generator_from_tiny_checkpoint(tiny_checkpoint):
    gen, meta = load_generator(tiny_checkpoint)
    assert meta["step"] >= 1 and len(meta["data_sha256"]) == 64
    cond = conditions(4)
    out = gen(torch.randn(4, gen.noise_dim), cond)
    assert out.shape == (4, 30, 30) and (out >= 0).all()
    raw, _ = load_generator(tiny_checkpoint, ema=False)
    differs = any(not torch.equal(a, b) for a, b in zip(gen.state_dict().values(), raw.state_dict().values()))
    assert differs, "EMA and raw generator weights should differ after training"
    assert np.isfinite(out.detach().numpy()).all()
