"""Fine-tuning: surrogate learns the statistic; the CLI writes checkpoint + report; bad input exits 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from calogan.core.errors import InputError
from calogan.core.gan import binned_wasserstein
from calogan.core.runtime import run_cli
from calogan.ecal.data import load_npz, split_path
from calogan.ecal.models import load_generator
from calogan.ecal.physics import physical_statistics
from calogan.ecal.soft_stats import energy_response_t, soft_asymmetries
from calogan.studies.finetune import main
from calogan.studies.surrogate import (
    column_correlations,
    energy_distance,
    moment_matching,
    parse_targets,
    predict_surrogate,
    target_values,
    train_surrogate,
)

#: Stated threshold: Pearson correlation of the surrogate with the true transverse asymmetry on held-out images.
CORRELATION_THRESHOLD = 0.8


def test_surrogate_learns_transverse_asymmetry(tiny_data_dir):
    train = load_npz(split_path(tiny_data_dir, "train"), require_energy=True)
    held = load_npz(split_path(tiny_data_dir, "val", "solution"), require_energy=True)
    names = ["transverse_asymmetry"]
    t_train = target_values(physical_statistics(train.energy, train.point, train.momentum), names)
    t_held = target_values(physical_statistics(held.energy, held.point, held.momentum), names)
    model = train_surrogate(train.energy, train.conditions(), t_train, steps=150, seed=0)
    corr = column_correlations(predict_surrogate(model, held.energy, held.conditions()), t_held)
    assert corr[0] > CORRELATION_THRESHOLD, corr


def test_soft_asymmetries_approach_hard_ones(tiny_data_dir):
    data = load_npz(split_path(tiny_data_dir, "val", "solution"), require_energy=True)
    hard = physical_statistics(data.energy, data.point, data.momentum)[:, :2]
    soft = soft_asymmetries(
        torch.from_numpy(data.energy).double(), torch.from_numpy(data.conditions()).double(), 1e-4
    )
    ok = np.abs(data.momentum[:, 0]) > 0  # the signed-zero convention differs only at px == 0
    assert np.corrcoef(soft.numpy()[ok, 1], hard[ok, 1])[0, 1] > 0.999
    assert np.corrcoef(soft.numpy()[ok, 0], hard[ok, 0])[0, 1] > 0.999


def test_losses_are_zero_on_equal_samples_and_grow_with_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    bins = torch.randint(0, 4, (256,), generator=g)
    assert float(binned_wasserstein(x, x, bins)) == pytest.approx(0.0, abs=1e-7)
    assert float(moment_matching(x, x, bins, 4)) == pytest.approx(0.0, abs=1e-6)
    assert float(energy_distance(x, x)) == pytest.approx(0.0, abs=1e-5)
    shifted = x + 0.5
    assert float(binned_wasserstein(shifted, x, bins)) == pytest.approx(0.5, rel=1e-5)
    assert float(binned_wasserstein(shifted, x, bins, projections=8)) > 0.1
    assert float(binned_wasserstein(shifted, x, bins, power=2)) == pytest.approx(0.25, rel=1e-5)
    wider = x * 2.0  # same centre, twice the spread: W2 (a bound on the spread difference) sees it strongly
    assert float(binned_wasserstein(wider, x, bins, power=2)) > float(
        binned_wasserstein(x * 1.1, x, bins, power=2)
    )
    with pytest.raises(ValueError, match="power must be 1 or 2"):
        binned_wasserstein(shifted, x, bins, power=3)
    assert float(moment_matching(shifted, x, bins, 4)) > 0.5
    assert float(energy_distance(shifted, x)) > 0.05
    y = x.clone().requires_grad_(True)
    binned_wasserstein(y + 0.5, x, bins).backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_parse_targets_rejects_unknown_names():
    assert parse_targets("sparsity,energy_response") == ["sparsity", "energy_response"]
    with pytest.raises(InputError, match="valid: longitudinal_asymmetry"):
        parse_targets("transverse_asymetry")


def test_finetune_cli_writes_checkpoint_and_report(tiny_data_dir, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "ft"
    argv = ["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data_dir), "--preset", "tiny",
            "--target", "transverse_asymmetry,energy_response", "--weight", "2", "--out", str(out), "--device", "cpu",
            "--gp-every", "2", "--lr-decay"]  # fmt: skip
    assert run_cli(main, argv) == 0, capsys.readouterr().err
    for name in (
        "checkpoint.pt",
        "report.md",
        "results.json",
        "hist_transverse_asymmetry.png",
        "hist_energy_response.png",
    ):
        assert (out / name).is_file(), name
    result = json.loads((out / "results.json").read_text())
    assert set(result["statistics"]) == {"transverse_asymmetry", "energy_response"}
    assert (result["config"]["gp_every"], result["config"]["lr_decay"]) == (2, True)  # the engine's options
    assert len(result["statistics"]["energy_response"]["after"]["w1_bins"]) == 4
    assert "W1 before" in (out / "report.md").read_text()

    gen, meta = load_generator(out / "checkpoint.pt")
    assert gen.noise_dim > 0 and meta["step"] > 0


def test_finetune_output_needs_overwrite_and_resumes_exactly(
    tiny_data_dir, tiny_checkpoint, tmp_path, capsys
):
    base = ["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data_dir), "--preset", "tiny",
            "--target", "energy_response", "--device", "cpu"]  # fmt: skip
    assert run_cli(main, [*base, "--out", str(tmp_path / "a"), "--steps", "6"]) == 0
    assert run_cli(main, [*base, "--out", str(tmp_path / "a"), "--steps", "6"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli(main, [*base, "--out", str(tmp_path / "b"), "--steps", "3"]) == 0
    assert run_cli(main, [*base, "--out", str(tmp_path / "b"), "--steps", "6", "--resume"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == torch.load(tiny_checkpoint, weights_only=True)["step"] + 6
    for name, tensor in a["generator_ema"].items():
        assert torch.equal(tensor, b["generator_ema"][name]), name


def test_finetune_resume_names_the_run_and_keeps_its_settings(
    tiny_data_dir, tiny_checkpoint, tmp_path, capsys
):
    out, data = tmp_path / "c", ["--data", str(tiny_data_dir), "--device", "cpu"]
    assert run_cli(main, ["--checkpoint", str(tiny_checkpoint), *data, "--preset", "tiny", "--target",
                          "energy_response", "--out", str(out), "--steps", "2"]) == 0  # fmt: skip
    assert run_cli(main, ["--resume", str(out), *data, "--target", "transverse_width"]) == 2
    err = capsys.readouterr().err
    assert "--target: the run in" in err and "a resumed run keeps its settings" in err
    assert run_cli(main, ["--resume", str(out), *data, "--ema-decay", "0.5"]) == 2
    assert "--ema-decay: the run in" in capsys.readouterr().err
    # checkpoint, targets and, without --steps, the total steps: the run's
    assert run_cli(main, ["--resume", str(out), *data]) == 0
    start = torch.load(tiny_checkpoint, weights_only=True)["step"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == start + 2
    assert run_cli(main, ["--resume", str(out), *data, "--steps", "3"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == start + 3
    # how long the run may take and how often it saves may change on resume
    length = ["--keep-every", "1", "--max-minutes", "0"]
    assert run_cli(main, ["--resume", str(out), *data, "--steps", "4", *length]) == 0
    assert (out / "checkpoints" / "step_000004.pt").is_file()


def test_finetune_bad_inputs_exit_2(tiny_data_dir, tiny_checkpoint, tmp_path, capsys):
    base = [
        "--checkpoint",
        str(tiny_checkpoint),
        "--data",
        str(tiny_data_dir),
        "--preset",
        "tiny",
        "--out",
        str(tmp_path / "o"),
    ]
    assert run_cli(main, base + ["--target", "bogus"]) == 2
    assert "valid:" in capsys.readouterr().err
    assert run_cli(main, base + ["--target", "sparsity", "--objective", "hinge"]) == 2
    assert "--objective" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "data_train.npz").write_bytes(split_path(tiny_data_dir, "val", "solution").read_bytes())
    argv = [
        "--checkpoint",
        str(tiny_checkpoint),
        "--data",
        str(other),
        "--target",
        "sparsity",
        "--out",
        str(tmp_path / "o"),
    ]
    assert run_cli(main, argv) == 2
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_direct_energy_response_loss_pulls_images_to_real():
    g = torch.Generator().manual_seed(1)
    cond = torch.cat([torch.zeros(64, 2), torch.randn(64, 2, generator=g), 1 + 50 * torch.rand(64, 1, generator=g),
                      torch.zeros(64, 1)], dim=1)  # fmt: skip
    p = torch.linalg.vector_norm(cond[:, 2:5], dim=1)
    real = (165 + 10 * torch.randn(64, generator=g)) * p / 900  # per-cell level giving response ~165
    real_resp = energy_response_t(real.view(-1, 1, 1).expand(-1, 30, 30), cond)
    logits = torch.zeros(64, 30, 30, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    bins = torch.zeros(64, dtype=torch.long)

    def loss() -> torch.Tensor:
        fake = torch.nn.functional.softplus(logits) * (165 * p / 900).view(-1, 1, 1)
        return binned_wasserstein(energy_response_t(fake, cond)[:, None], real_resp[:, None], bins)

    start = float(loss().detach())
    for _ in range(60):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < 0.2 * start
