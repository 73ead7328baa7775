"""RICH evaluate and transfer with --particle all: one summary table over the trained particles of a run folder."""

from __future__ import annotations

import json
import math

import pytest

from calogan.core.runtime import run_cli
from calogan.rich import PARTICLES
from calogan.rich import evaluate as rich_eval
from calogan.rich import simulate as rich_sim
from calogan.rich import train as rich_train
from calogan.rich import transfer as rich_transfer


@pytest.fixture(scope="module")
def rich_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rich_report_data")
    rich_sim.write_samples(out, n=2000, seed=4, particles=("pion", "kaon"), progress=False)
    return out


@pytest.fixture(scope="module")
def run_dir(rich_dir, tmp_path_factory):
    """RUN/{pion,kaon}/checkpoints/last.pt, the layout of `calogan.rich.train --particle all --run-dir RUN`."""
    run = tmp_path_factory.mktemp("rich_report_runs")
    for particle in ("pion", "kaon"):
        cfg = rich_train.TrainConfig.from_preset(
            "tiny",
            particle=particle,
            data=str(rich_dir),
            run_dir=str(run / particle),
            steps=8,
            weights="sweights",
        )  # raw sWeights: no cross-fitted weight regression, seconds per particle
        cfg.progress = False
        rich_train.train(cfg)
    (run / "muon").mkdir()  # a folder without a checkpoint (e.g. a run stopped before its first one)
    return run


def test_evaluate_all_particles_one_summary(run_dir, rich_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["--particle", "all", "--run-dir", str(run_dir), "--data", str(rich_dir), "--out", str(out)]
    assert run_cli(rich_eval.main, [*args, "--classifier-iters", "5"]) == 0
    printed = capsys.readouterr().out
    assert "kaon [test]: AUC" in printed and "electron: not trained" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["particles"]) == list(PARTICLES)
    for particle in PARTICLES:
        row = summary["particles"][particle]
        if particle in ("pion", "kaon"):
            # sWeighted AUC: negative weights can carry it slightly past 1 for a model this poor
            assert row["status"] == "evaluated" and math.isfinite(row["auc"])
            assert row["bins_within_5pct"] <= row["bins_checked"]
            assert (out / particle / "report.json").exists()
            assert (out / particle / "plots" / "eff_DLLkgt0.png").stat().st_size > 1000
        else:
            assert row == {"status": "not trained"} and not (out / particle).exists()
    table = (out / "summary.md").read_text()
    assert "| particle | classifier AUC | stricter AUC | eff. ratios within 5 % | within 2σ |" in table
    assert "| muon | not trained |" in table
    kaon = summary["particles"]["kaon"]
    assert f"| kaon | {kaon['auc']:.3f} | {kaon['auc_strict']:.3f} |" in table
    # the outputs of an earlier run are kept unless --overwrite
    assert run_cli(rich_eval.main, [*args, "--no-plots", "--classifier-iters", "5"]) == 2
    assert "summary.json already exists" in capsys.readouterr().err


def test_transfer_all_particles_one_summary(run_dir, rich_dir, tmp_path, capsys):
    out = tmp_path / "tr"
    args = ["--particle", "all", "--run-dir", str(run_dir), "--data", str(rich_dir), "--out", str(out)]
    assert run_cli(rich_transfer.main, [*args, "--no-plots", "--classifier-iters", "5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    kaon = summary["particles"]["kaon"]
    assert isinstance(kaon["consistent"], bool) and set(kaon) >= {"test", "transfer"}
    assert (out / "pion" / "transfer.json").exists() and (out / "pion" / "transfer" / "report.md").exists()
    assert summary["particles"]["proton"]["status"] == "not trained"
    table = (out / "summary.md").read_text()
    assert "transfer verdict" in table and "consistent |" in table
    assert "| electron | not trained |" in table
    assert "summary:" in capsys.readouterr().out


def test_particle_all_refusals(run_dir, rich_dir, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--data", str(rich_dir), "--out", str(out)]
    cases = [
        (["--particle", "all", "--checkpoint", "x.pt", "--run-dir", str(run_dir)], "not allowed with"),
        (["--particle", "all"], "needs --run-dir"),
        (["--checkpoint", "x.pt", "--run-dir", str(run_dir)], "goes with --particle"),
        (["--particle", "pions", "--run-dir", str(run_dir)], "must be one of"),
        ([], "one of the arguments --checkpoint --particle is required"),
        (
            ["--particle", "all", "--run-dir", str(tmp_path / "empty")],
            "no {particle}/checkpoints/best.pt or last.pt",
        ),
        (["--particle", "all", "--run-dir", str(run_dir), "--data", str(tmp_path)], "file not found"),
    ]
    for command in (rich_eval.main, rich_transfer.main):
        for extra, message in cases:
            assert run_cli(command, [*base, *extra]) == 2, extra
            err = capsys.readouterr().err
            assert message in err and err.count("\n") == 1, (extra, err)
    assert not out.exists()
