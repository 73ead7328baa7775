"""RICH PID GANs: simulator physics and sWeights, data validation, metrics, tiny train -> evaluate -> transfer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from calogan.core.errors import InputError
from calogan.core.runtime import run_cli
from calogan.ecal.data import open_npz, save_npz
from calogan.metrics.two_sample import binned_efficiency, weighted_auc
from calogan.rich import COLUMNS, SENTINEL
from calogan.rich import evaluate as rich_eval
from calogan.rich import simulate as rich_sim
from calogan.rich import train as rich_train
from calogan.rich import transfer as rich_transfer
from calogan.rich.data import (
    QuantileNormal,
    from_basis,
    load_sample,
    normal_from_uniform,
    sample_path,
    to_basis,
)
from calogan.rich.models import load_rich_model
from calogan.rich.weights import expected_sweights, n_effective


@pytest.fixture(scope="module")
def rich_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rich")
    rich_sim.write_samples(out, n=4000, seed=3, particles=("pion", "kaon"), progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_ckpt(rich_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("rich_run")
    cfg = rich_train.TrainConfig.from_preset(
        "tiny", particle="kaon", data=str(rich_dir), run_dir=str(run), steps=15, keep_every=10
    )
    cfg.progress = False
    return rich_train.train(cfg) / "checkpoints" / "last.pt"


def test_simulated_files_have_contract_columns_and_sweights(rich_dir):
    arrays = open_npz(sample_path(rich_dir, "kaon", "train"))
    assert set(COLUMNS) <= set(arrays)
    w, sig = arrays["sWeight"], arrays["IsSignal"] == 1
    assert (w < 0).any(), "sPlot weights must include negative values"
    # sum of sWeights estimates the true signal yield (Poisson-level agreement)
    assert abs(w.sum() - sig.sum()) < 4 * np.sqrt(len(w))
    # sWeighted kinematics reproduce the true signal's (background is softer and busier)
    for col in ("P", "NTRACKS"):
        weighted = (arrays[col] * w).sum() / w.sum()
        assert abs(weighted - arrays[col][sig].mean()) < 0.05 * arrays[col][sig].mean()
        assert abs(arrays[col][~sig].mean() - arrays[col][sig].mean()) > 0.05 * arrays[col][sig].mean()
    dll = np.stack([arrays[c] for c in ("RichDLLe", "RichDLLmu", "RichDLLk", "RichDLLp", "RichDLLbt")], 1)
    missing = dll == SENTINEL
    assert missing.any() and (missing.all(1) == missing.any(1)).all(), (
        "sentinel must be set on all 5 DLLs together"
    )
    assert (arrays["P"] >= 3).all() and (arrays["P"] <= 200).all()
    assert (arrays["ETA"] >= 1.5).all() and (arrays["ETA"] <= 5.5).all()


def test_rich_physics_separation_and_threshold():
    rng = np.random.default_rng(0)
    n = 4000
    for p, expect_sep in ((5.0, True), (150.0, False)):
        mom = np.full(n, p)
        eta = np.full(n, 3.3)
        ntr = np.full(n, 50.0)
        dk = rich_sim.rich_response(mom, eta, ntr, np.full(n, rich_sim.MASS_GEV["kaon"]), rng)
        dpi = rich_sim.rich_response(mom, eta, ntr, np.full(n, rich_sim.MASS_GEV["pion"]), rng)
        ok = (dk[:, 2] > SENTINEL) & (dpi[:, 2] > SENTINEL)
        gap = np.median(dk[ok, 2]) - np.median(dpi[ok, 2])
        assert (gap > 20) == expect_sep, (p, gap)
    # occupancy degrades separation
    mom, eta = np.full(n, 30.0), np.full(n, 3.3)
    gaps = []
    for ntr in (20.0, 500.0):
        dk = rich_sim.rich_response(mom, eta, np.full(n, ntr), np.full(n, rich_sim.MASS_GEV["kaon"]), rng)
        gaps.append(np.median(dk[dk[:, 2] > SENTINEL, 2]))
    assert gaps[0] > gaps[1]


def test_transfer_sample_is_harder(rich_dir):
    a = open_npz(sample_path(rich_dir, "pion", "train"))
    b = open_npz(sample_path(rich_dir, "pion", "transfer"))
    s_a, s_b = a["IsSignal"] == 1, b["IsSignal"] == 1
    assert np.median(b["P"][s_b]) > 1.3 * np.median(a["P"][s_a])


def test_splot_recovers_yield():
    rng = np.random.default_rng(1)
    sig = np.clip(rng.normal(0, 0.08, 3000), -0.99, 0.99)
    bkg = rng.uniform(-1, 1, 2000)
    w, info = rich_sim.splot_weights(np.concatenate([sig, bkg]))
    assert abs(w.sum() - 3000) < 150 and abs(info["n_signal"] - w.sum()) < 1
    assert w[3000:].mean() < 0.2 < w[:3000].mean()


def test_weighted_auc_matches_sklearn_and_accepts_negative_weights():
    rng = np.random.default_rng(2)
    y = rng.random(500) < 0.5
    s = rng.normal(size=500) + y
    w = rng.uniform(0.1, 2, 500)
    assert weighted_auc(y, s, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-9)
    s_tied = np.round(s)
    assert weighted_auc(y, s_tied, w) == pytest.approx(roc_auc_score(y, s_tied, sample_weight=w), abs=1e-9)
    w_neg = rng.normal(0.6, 1.0, 500)
    assert np.isfinite(weighted_auc(y, s, w_neg))


def test_weighted_efficiency_errors():
    passed = np.array([1, 0, 1, 1] * 250, bool)
    res = binned_efficiency(passed, np.full(1000, 5.0), np.ones(1000), np.array([0.0, 10.0]))
    assert res["eff"][0] == pytest.approx(0.75)
    assert res["err"][0] == pytest.approx(np.sqrt(0.75 * 0.25 / 1000))


def test_quantile_transform_roundtrip_without_pickle():
    x = np.random.default_rng(3).lognormal(size=(2000, 2))
    qn = QuantileNormal.fit(x)
    arrays = {k: torch.from_numpy(v) for k, v in qn.to_arrays().items()}
    back = QuantileNormal.from_arrays(arrays["quantiles"].numpy(), arrays["references"].numpy())
    np.testing.assert_allclose(back.transform(x[:50]), qn.transform(x[:50]))
    np.testing.assert_allclose(back.inverse_transform(back.transform(x[:50])), x[:50], rtol=1e-3)


def test_adjacent_basis_keeps_below_threshold_ties_exact(rich_dir):
    """Simulated DLLk == DLLp == DLLbt below threshold: the adjacent-hypothesis basis turns those ties into exact zeros,
    the randomised CDF position spreads them in normal space, and the inverse brings back exact ties."""
    real = load_sample(sample_path(rich_dir, "pion", "train"))
    dlls = real.dlls[real.has_rich]
    tied = dlls[:, 3] == dlls[:, 4]
    assert tied.mean() > 0.3  # below the proton thresholds in both radiators
    y = to_basis(dlls, "adjacent")
    np.testing.assert_array_equal(from_basis(y, "adjacent"), dlls)
    np.testing.assert_array_equal(to_basis(dlls, "raw"), dlls.astype(np.float64))
    emu = to_basis(dlls, "emu")
    np.testing.assert_array_equal(emu[:, 0], dlls[:, 0].astype(np.float64) - dlls[:, 1])
    np.testing.assert_array_equal(from_basis(emu, "emu"), dlls)
    qn = QuantileNormal.fit(y)
    low, high = qn.uniform_bounds(y)
    np.testing.assert_allclose(normal_from_uniform((low + high) / 2), qn.transform(y), atol=1e-5)
    assert (high[tied, 4] - low[tied, 4] > 0.2).all() and np.allclose(high[~tied, 4], low[~tied, 4])
    z = normal_from_uniform(low + np.random.default_rng(0).random(low.shape) * (high - low))
    assert abs(z[:, 4].std() - 1.0) < 0.05  # sklearn's midpoint puts every tie on one value instead
    back = from_basis(qn.inverse_transform(z), "adjacent")
    assert ((back[:, 3] == back[:, 4]) == tied).mean() > 0.99
    np.testing.assert_allclose(
        normal_from_uniform(torch.tensor([0.5, 1.0], dtype=torch.float64)).numpy(), [0.0, 5.1993], atol=1e-3
    )
    with pytest.raises(InputError, match="unknown basis"):
        to_basis(dlls, "logit")


def test_expected_sweights_keep_the_yield_with_less_noise(rich_dir):
    """E[sWeight | x] (cross-fitted) keeps the signal yield, is non-negative and has a larger effective size."""
    path = sample_path(rich_dir, "pion", "train")
    real = load_sample(path)
    features = np.column_stack([real.inputs, real.dlls])
    expected = expected_sweights(features, real.weights, seed=0)
    assert ((expected >= 0) & (expected <= 1)).all()
    assert expected.sum() == pytest.approx(real.weights.sum(), rel=0.05)
    assert n_effective(expected) > 1.2 * n_effective(real.weights)
    truth = open_npz(path)["IsSignal"].astype(bool)
    assert expected[truth].mean() > expected[~truth].mean() + 0.1  # kaon/proton background is told apart
    np.testing.assert_array_equal(expected, expected_sweights(features, real.weights, seed=0))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.pop("RichDLLk"), "missing column"),
        (lambda a: a["P"].__setitem__(0, np.nan), "NaN"),
        (lambda a: a["sWeight"].__setitem__(slice(None), 0.0), "all sWeights are zero"),
    ],
)
def test_bad_samples_raise_input_error(rich_dir, tmp_path, mutate, message):
    arrays = {k: v.copy() for k, v in open_npz(sample_path(rich_dir, "pion", "train")).items()}
    mutate(arrays)
    path = save_npz(tmp_path / "rich_pion_train.npz", arrays)
    with pytest.raises(InputError, match=message):
        load_sample(path)
    assert run_cli(rich_train.main, ["--particle", "pion", "--data", str(tmp_path), "--preset", "tiny"]) == 2


def test_cli_bad_inputs_exit_2(rich_dir, tmp_path, capsys):
    assert run_cli(rich_train.main, ["--particle", "pionn", "--data", str(rich_dir)]) == 2
    assert "unknown particle" in capsys.readouterr().err
    bad_options = (
        ("--weights", "positive"),
        ("--dll-basis", "logit"),
        ("--max-minutes", "-1"),
        ("--max-minutes", "nan"),
    )
    for option, value in bad_options:
        args = [
            "--particle",
            "pion",
            "--data",
            str(rich_dir),
            "--run-dir",
            str(tmp_path / "r"),
            option,
            value,
        ]
        assert run_cli(rich_train.main, args) == 2
        assert value in capsys.readouterr().err
    assert (
        run_cli(
            rich_eval.main,
            ["--checkpoint", str(tmp_path / "no.pt"), "--data", str(rich_dir), "--out", str(tmp_path)],
        )
        == 2
    )
    assert (
        run_cli(rich_sim.main, ["--out", str(rich_dir), "--n", "200", "--particles", "pion"]) == 2
    )  # exists
    assert not list(tmp_path.iterdir())


def test_train_evaluate_transfer_end_to_end(tiny_ckpt, rich_dir, tmp_path):
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    assert ckpt["format"] == "calogan-rich-checkpoint-v1" and ckpt["particle"] == "kaon"
    assert isinstance(ckpt["qt_out"]["quantiles"], torch.Tensor)
    model = load_rich_model(tiny_ckpt)
    assert load_rich_model(tiny_ckpt.parent / "step_000010.pt").meta["step"] == 10  # --keep-every
    assert sorted(p.name for p in tiny_ckpt.parent.iterdir()) == ["last.pt", "step_000010.pt"]
    inputs = load_sample(sample_path(rich_dir, "kaon", "test")).inputs[:500]
    a, b = model.generate(inputs, seed=5), model.generate(inputs, seed=5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (500, 5) and np.isfinite(a).all()
    args = [
        "--checkpoint",
        str(tiny_ckpt),
        "--data",
        str(rich_dir),
        "--out",
        str(tmp_path),
        "--classifier-iters",
        "10",
    ]
    assert run_cli(rich_transfer.main, args) == 0
    res = json.loads((tmp_path / "transfer.json").read_text())
    assert set(res["samples"]) == {"test", "transfer"}
    rep = json.loads((tmp_path / "test" / "report.json").read_text())
    assert 0.0 <= rep["summary"]["auc"] <= 1.0
    assert set(rep["efficiencies"]) == {"DLLk>0", "DLLk-DLLp>5", "DLLmu>2"}
    assert (tmp_path / "test" / "plots" / "eff_DLLkgt0.png").stat().st_size > 1000
    assert (tmp_path / "transfer" / "report.md").exists()


def test_classifier_detects_a_wrong_model(rich_dir):
    real = load_sample(sample_path(rich_dir, "kaon", "test"))
    same = rich_eval.classifier_test(real, real.dlls.copy(), max_iter=15)
    shifted = rich_eval.classifier_test(
        real, real.dlls + np.where(real.has_rich[:, None], 15.0, 0.0), max_iter=30
    )
    assert abs(same["auc"] - 0.5) < 0.05
    assert shifted["auc"] > 0.7


def test_time_budget_stops_early_with_a_valid_checkpoint(rich_dir, tmp_path):
    """max_minutes ends training at the first step past the budget; last.pt records the step reached."""
    # the quick preset keeps its 5-minute target
    assert rich_train.TrainConfig.from_preset("quick").max_minutes > 0
    cfg = rich_train.TrainConfig.from_preset(
        "tiny", particle="pion", data=str(rich_dir), run_dir=str(tmp_path / "r"), steps=500, max_minutes=1e-6
    )
    cfg.progress = False
    last = rich_train.train(cfg) / "checkpoints" / "last.pt"
    model = load_rich_model(last)
    assert model.meta["step"] == 1
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 1


def test_transfer_failure_leaves_no_partial_report(tiny_ckpt, rich_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for sample in ("train", "test"):  # no transfer sample: the second evaluation fails
        src = sample_path(rich_dir, "kaon", sample)
        (data / src.name).write_bytes(src.read_bytes())
    out = tmp_path / "out"
    args = [
        "--checkpoint",
        str(tiny_ckpt),
        "--data",
        str(data),
        "--out",
        str(out),
        "--classifier-iters",
        "10",
    ]
    assert run_cli(rich_transfer.main, args) == 2
    assert not out.exists() or not list(out.iterdir())  # neither the test report nor a temp folder


def test_strict_classifier_auc_sees_broken_ties_better_than_the_sweighted_test(rich_dir):
    """E[sWeight | x] weights: 0.5 for a perfect copy; a clearer signal than the sWeights for a broken feature."""
    real = load_sample(sample_path(rich_dir, "kaon", "test"))
    rich = real.subset(real.has_rich)

    class CopyModel:  # generates the real DLLs of the tracks it is asked about, optionally altered
        def __init__(self, alter):
            self.alter = alter

        def generate(self, inputs, seed=0, no_rich=True):
            assert np.array_equal(inputs, rich.inputs) and not no_rich
            return self.alter(rich.dlls.copy())

    def untie(dlls):  # below-threshold ties DLLk = DLLp broken by noise
        tied = dlls[:, 2] == dlls[:, 3]
        dlls[tied, 3] += np.random.default_rng(0).normal(0.0, 5.0, tied.sum())
        return dlls

    assert rich_eval.strict_classifier_auc(CopyModel(lambda d: d), real, max_iter=30) == pytest.approx(
        0.5, abs=0.02
    )
    strict = rich_eval.strict_classifier_auc(CopyModel(untie), real, max_iter=30)
    sweighted = rich_eval.classifier_test(rich, untie(rich.dlls.copy()), max_iter=30)["auc"]
    assert strict > 0.6 and strict > sweighted


def test_efficiency_summary_counts_the_targets_rule():
    """A ratio passes within 5 %, or within 2 sigma where its error is larger; bins not well populated do not count."""
    table = {"cut": {"P": {"ratio": [1.03, 1.2, 0.8, 2.0], "ratio_err": [0.01, 0.15, 0.05, 0.01],
                           "well_populated": [True, True, True, False]}}}  # fmt: skip
    summary = rich_eval._summarise_efficiencies(table)
    assert summary["bins_checked"] == 3
    assert (summary["bins_within_5pct"], summary["bins_within_2sigma"], summary["bins_within_tolerance"]) == (
        1,
        1,
        2,
    )
