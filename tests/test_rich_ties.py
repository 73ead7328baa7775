"""Exact ties between neighbouring DLLs as a discrete part of the RICH model: patterns, draw, copies, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calogan.rich import simulate as rich_sim
from calogan.rich import train as rich_train
from calogan.rich.data import load_sample, sample_path
from calogan.rich.models import load_rich_model
from calogan.rich.ties import (
    MIN_PATTERN_FRACTION,
    apply_ties,
    draw_patterns,
    fit_patterns,
    masked_columns,
    tie_bits,
)


def test_patterns_keep_the_frequent_ones_and_label_every_track():
    rng = np.random.default_rng(0)
    dlls = rng.normal(size=(10_000, 5))
    dlls[:3000, 3] = dlls[:3000, 2]  # k = p
    dlls[:5000, 4] = dlls[:5000, 3]  # p = bt (so the first 3000 have k = p = bt)
    dlls[9999, 2] = dlls[9999, 1]  # one mu = k tie: rarer than MIN_PATTERN_FRACTION
    assert 1 / len(dlls) < MIN_PATTERN_FRACTION
    patterns, labels = fit_patterns(dlls)
    assert patterns.tolist() == [[False, False, False], [False, False, True], [False, True, True]]
    assert np.bincount(labels).tolist() == [5000, 2000, 3000]
    assert labels[9999] == 0  # the rare pattern is generated as continuous values
    np.testing.assert_array_equal(patterns[labels[:9999]], tie_bits(dlls)[:9999])
    # the GAN does not generate the second column of a tied pair: p under k = p, bt under p = bt
    assert masked_columns(patterns).tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]


def test_apply_ties_copies_along_chains():
    dlls = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]] * 3)
    bits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    assert apply_ties(dlls, bits).tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 4, 4], [1, 2, 3, 3, 3]]


def test_draw_patterns_follows_the_softmax():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).expand(200_000, 3)
    uniform = torch.from_numpy(np.random.default_rng(1).random(200_000))
    freq = np.bincount(draw_patterns(logits, uniform).numpy(), minlength=3) / 200_000
    np.testing.assert_allclose(freq, [0.2, 0.5, 0.3], atol=0.005)


@pytest.fixture(scope="module")
def rich_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rich_ties")
    rich_sim.write_samples(out, n=4000, seed=3, particles=("pion",), progress=False)
    return out


def _train(rich_dir, run_dir, data=None, steps=30):
    cfg = rich_train.TrainConfig.from_preset("tiny", particle="pion", data=str(data or rich_dir),
                                             run_dir=str(run_dir), steps=steps, weights="sweights",
                                             tie_patterns=True)  # fmt: skip
    cfg.progress = False
    return rich_train.train(cfg) / "checkpoints" / "last.pt"


def test_trained_model_reproduces_the_tie_fractions_exactly_tied(rich_dir, tmp_path):
    """The pattern classifier sets how often DLLs tie; the tied values are exactly equal, as in the sample."""
    ckpt = torch.load(_train(rich_dir, tmp_path / "r"), weights_only=True)
    assert len(ckpt["model_config"]["tie_patterns"]) > 1 and "tie_head" in ckpt
    model = load_rich_model(tmp_path / "r" / "checkpoints" / "last.pt")
    real = load_sample(sample_path(rich_dir, "pion", "train"))
    rich = real.subset(real.has_rich)
    gen = model.generate(rich.inputs, seed=0, no_rich=False)
    real_bits, gen_bits = tie_bits(rich.dlls).mean(0), tie_bits(gen).mean(0)
    assert real_bits[1] > 0.1 and real_bits[2] > 0.1  # the simulator's below-threshold ties
    np.testing.assert_allclose(gen_bits, real_bits, atol=0.05)
    # a generated pattern is one of the modelled ones (k = p without p = bt never occurs)
    patterns = {tuple(p) for p in ckpt["model_config"]["tie_patterns"]}
    assert {tuple(b) for b in tie_bits(gen)} <= patterns


def test_sample_without_ties_trains_the_continuous_model(rich_dir, tmp_path):
    """--tie-patterns on data with no exact ties leaves the model as it is without the option."""
    arrays = dict(np.load(sample_path(rich_dir, "pion", "train"), allow_pickle=False))
    jitter = (
        np.random.default_rng(0).normal(0, 1e-3, len(arrays["RichDLLp"])).astype(arrays["RichDLLp"].dtype)
    )
    for column in ("RichDLLp", "RichDLLbt"):
        arrays[column] = np.where(arrays[column] > -998, arrays[column] + jitter * (1 + (column == "RichDLLbt")),
                                  arrays[column])  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    np.savez(sample_path(data, "pion", "train"), **arrays)
    ckpt = torch.load(_train(rich_dir, tmp_path / "r", data=data, steps=4), weights_only=True)
    assert ckpt["model_config"]["tie_patterns"] == [] and "tie_head" not in ckpt
    assert load_rich_model(tmp_path / "r" / "checkpoints" / "last.pt").ties is None


def test_standard_and_full_presets_model_ties_and_choose_on_held_out_tracks():
    for preset in ("standard", "full"):
        cfg = rich_train.TrainConfig.from_preset(preset)
        assert cfg.tie_patterns and cfg.holdout > 0 and cfg.eval_every > 0 and cfg.ema_decay == 0.999
        assert cfg.momentum_scaling
    quick = rich_train.TrainConfig.from_preset("quick")
    assert not quick.tie_patterns and not quick.momentum_scaling  # its recorded numbers stay valid
    assert not rich_train.TrainConfig.from_preset("standard", tie_patterns=False).tie_patterns
