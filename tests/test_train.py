"""Trainer: run directory, checkpoints, seeding, exact resume, kill-and-resume, NaN stop, bad input, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import calogan.ecal.train as train_mod
from calogan.core.runtime import run_cli
from calogan.ecal.models import CHECKPOINT_FORMAT
from calogan.ecal.train import TrainingDiverged, main, make_config, parse_set, train

CKPT_KEYS = {
    "format", "config", "model_config", "normalizer", "generator", "generator_ema", "critic",
    "opt_g", "opt_c", "step", "metrics", "data_sha256", "rng",
}  # fmt: skip
ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def losses(run_dir: Path) -> list[tuple[float, float]]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss_critic"], r["loss_generator"]) for r in rows if "loss_critic" in r]


def run_tiny(data_dir, run_dir, **overrides) -> Path:
    return train(make_config("tiny", data=str(data_dir), run_dir=str(run_dir), **overrides), progress=False)


def test_tiny_run_writes_run_directory(tiny_checkpoint):
    run_dir = tiny_checkpoint.parent.parent
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["preset"] == "tiny" and cfg["steps"] == 6
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert CKPT_KEYS <= set(ckpt) and ckpt["format"] == CHECKPOINT_FORMAT and ckpt["step"] == 6
    best = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert best["step"] == best["metrics"]["best_step"]
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    evals = [r for r in rows if "eval_score" in r]
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:
        assert 0.0 <= r["eval_score"] <= 1.0 and 0.0 < r["eval_ceiling"] <= 1.0
    assert all(r["images_per_s"] > 0 for r in rows)


def test_same_seed_same_losses_and_exact_resume(tiny_data_dir, tmp_path):
    straight = run_tiny(tiny_data_dir, tmp_path / "a")
    again = run_tiny(tiny_data_dir, tmp_path / "b", steps=3)
    assert losses(again) == losses(straight)[:3]  # same seed on CPU -> same losses
    train(make_config("tiny", data=str(tiny_data_dir), steps=6), resume=tmp_path / "b", progress=False)
    assert losses(tmp_path / "b") == losses(straight)  # resumed run continues exactly
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in ("generator", "generator_ema", "critic"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    different = run_tiny(tiny_data_dir, tmp_path / "c", seed=1, steps=2)
    assert losses(different) != losses(straight)[:2]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_data_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_features = train_mod.critic_features

    def poisoned(images, cond, *scale):
        calls["n"] += 1
        out = real_features(images, cond, *scale)
        return out * float("nan") if calls["n"] > 14 else out  # 5 calls per tiny step: NaN from step 3

    monkeypatch.setattr(train_mod, "critic_features", poisoned)
    with pytest.raises(TrainingDiverged, match="NaN/Inf at step 3"):
        run_tiny(tiny_data_dir, tmp_path / "nan")
    last = torch.load(tmp_path / "nan" / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 2
    assert all(torch.isfinite(t).all() for t in last["generator"].values())
    calls["n"] = 0
    code = main(["--preset", "tiny", "--data", str(tiny_data_dir), "--run-dir", str(tmp_path / "nan2")])
    assert code == 1


def test_bad_input_exits_2_with_one_line(tiny_data_dir, tmp_path, capsys):
    def check(argv, *needles):
        assert run_cli(main, argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:"), err
        for needle in needles:
            assert needle in err, err

    check(["--preset", "tiny", "--data", str(tmp_path / "nowhere")], "calogan.simulate")
    check(["--preset", "huge", "--data", str(tiny_data_dir)], "unknown preset")
    check(["--preset", "tiny", "--set", "no_such_field=1"], "no_such_field")
    check(["--preset", "tiny", "--set", "steps=many"], "steps")
    check(["--preset", "tiny", "--model", "gpt"], "unknown model")
    check(["--resume", str(tmp_path / "not_a_run")], "no checkpoint")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    check(["--preset", "tiny", "--data", str(tiny_data_dir), "--run-dir", str(existing)], "--overwrite")
    check(
        ["--preset", "tiny", "--data", str(tiny_data_dir), "--run-dir", str(existing), "--overwrite"],
        "not a calogan",
    )
    assert (existing / "keep.txt").read_text() == "mine"
    broken = tmp_path / "broken"
    (broken / "checkpoints").mkdir(parents=True)
    (broken / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    check(["--resume", str(broken)], "last.pt")
    torch.save({"something": torch.ones(2)}, broken / "checkpoints" / "last.pt")
    check(["--resume", str(broken)], "not a calogan checkpoint")


def test_parse_set_types():
    assert parse_set(["lr_g=3e-4", "cell_noise=false", "steps=7", "model=baseline2019"]) == {
        "lr_g": 3e-4,
        "cell_noise": False,
        "steps": 7,
        "model": "baseline2019",
    }


def test_baseline2019_trains_on_tiny_with_plots(tiny_data_dir, tmp_path):
    run_dir = run_tiny(
        tiny_data_dir, tmp_path / "base", model="baseline2019", steps=2, eval_every=2, plots=True
    )
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["model_config"]["model"] == "baseline2019" and ckpt["step"] == 2
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "showers_step000002.png",
        "statistics_step000002.png",
    ]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_kill_and_resume_subprocess(tiny_data_dir, tmp_path, how):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "calogan.train", "--preset", "tiny", "--data", str(tiny_data_dir)]
    opts = ["--set", "eval_every=100000", "--set", "checkpoint_every=1"]
    proc = subprocess.Popen([*cmd, "--run-dir", str(run_dir), "--steps", "100000", *opts], env=ENV)
    last = run_dir / "checkpoints" / "last.pt"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if last.exists() and torch.load(last, weights_only=True)["step"] >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "training ended before it could be killed"
        proc.send_signal(how)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = torch.load(last, weights_only=True)["step"]  # a valid checkpoint survives the kill
    assert killed_at >= 3
    if how != signal.SIGKILL:  # Ctrl-C / SIGTERM: the step in flight ends, last.pt is written, 128 + signal
        assert proc.returncode == 128 + how
    target = killed_at + 2
    done = subprocess.run(
        [sys.executable, "-m", "calogan.train", "--resume", str(run_dir), "--steps", str(target)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    final = torch.load(last, weights_only=True)
    assert final["step"] == target
    steps = [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, target + 1))  # no duplicated or missing log lines


def test_torchrun_two_processes(tiny_data_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "calogan.train", "--preset", "tiny", "--data", str(tiny_data_dir), "--run-dir", str(run_dir),
        "--device", "cpu", "--steps", "3",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    # the whole output on failure: a rank that dies natively (SIGABRT) leaves its cause far from the tail
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # rank 0 alone writes the log


def test_response_loss_is_zero_for_equal_samples_and_pulls_the_energy_scale():
    torch.manual_seed(0)
    cond = torch.zeros(32, 6)
    cond[:, 4] = torch.linspace(2.0, 90.0, 32)
    real = torch.rand(32, 30, 30) * cond[:, 4].view(-1, 1, 1)
    edges = torch.tensor([1.5, 3.0])
    assert train_mod.response_loss(real, real, cond, edges).item() == 0.0
    scale = torch.tensor(0.8, requires_grad=True)
    loss = train_mod.response_loss(real * scale, real, cond, edges)
    loss.backward()
    assert loss.item() > 0.1 and scale.grad.item() < 0  # raising the too-low energy lowers the loss


def test_tiny_run_with_response_term(tiny_data_dir, tmp_path):
    run_dir = run_tiny(tiny_data_dir, tmp_path / "resp", response_weight=1.0, critic_core=True, stats_weight=1.0,
                       steps=3)  # fmt: skip
    rows = losses(run_dir)
    logged = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss_statistics"] > 0 and r["loss_response"] >= 0 for r in logged if "loss_critic" in r)
    assert len(rows) == 3 and torch.isfinite(torch.tensor(rows)).all()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["response_weight"] == 1.0 and config["critic_core"] is True
    with pytest.raises(Exception, match="stats_weight: must be a finite number >= 0"):
        run_tiny(tiny_data_dir, tmp_path / "bad_stats", stats_weight=float("nan"))
    with pytest.raises(Exception, match="response_weight: must be a finite number >= 0"):
        run_tiny(tiny_data_dir, tmp_path / "bad", response_weight=-1.0)
    rank_dir = run_tiny(tiny_data_dir, tmp_path / "rank", rank_weight=1.0, radial_weight=1.0, critic_summary=True,
                        steps=2)  # fmt: skip
    logged = [json.loads(ln) for ln in (rank_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(
        r["loss_rank_profile"] > 0 and r["loss_radial_profile"] > 0 for r in logged if "loss_critic" in r
    )
    assert json.loads((rank_dir / "config.json").read_text())["critic_summary"] is True
    with pytest.raises(Exception, match="hard_gates: needs cell_gates=true"):
        run_tiny(tiny_data_dir, tmp_path / "bad_gates", hard_gates=True)
    w2_dir = run_tiny(tiny_data_dir, tmp_path / "w2", response_weight=1.0, response_power=2, steps=2)
    assert json.loads((w2_dir / "config.json").read_text())["response_power"] == 2
    with pytest.raises(Exception, match=r"response_power: must be an integer in \[1, 2\]"):
        run_tiny(tiny_data_dir, tmp_path / "bad_power", response_power=3)


def test_budget_stop_is_the_last_line_and_the_periodic_score_has_both_halves(tiny_data_dir, tmp_path, capsys):
    """A run cut by its time budget says so last; without DATA/embedder.safetensors one is trained for AUC_img."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "data_train.npz").write_bytes((tiny_data_dir / "data_train.npz").read_bytes())
    run_dir = tmp_path / "run"
    rc = main(["--preset", "tiny", "--data", str(data), "--run-dir", str(run_dir), "--set", "max_minutes=1e-6",
               "--set", "eval_embedder=true"])  # fmt: skip
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("stopped at step 1 of 6 by the time budget")
    assert (data / "embedder.safetensors").is_file()
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["stop"] == {"reason": "budget", "step": 1, "steps": 6}
    assert rows[-1]["eval_auc_img"] is not None and "eval_fraction_of_ceiling" in rows[-1]
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert 140 < ckpt["model_config"]["units_per_gev"] < 165  # fitted: the median of E_total / |p| (~158)


def test_periodic_score_without_embedder_is_named_phys_only(tiny_checkpoint):
    rows = [
        json.loads(ln) for ln in (tiny_checkpoint.parent.parent / "metrics.jsonl").read_text().splitlines()
    ]
    evals = [r for r in rows if "eval_score" in r]
    assert evals and all("eval_fraction_of_ceiling" not in r for r in evals)
    assert all("eval_fraction_of_ceiling_phys_only" in r for r in evals)


def test_budget_stop_reaches_the_prediction_manifest_and_score_json(tiny_data_dir, tmp_path, capsys):
    from calogan.ecal.predict import main as predict_main
    from calogan.metrics.evaluate import main as evaluate_main

    run_dir = tmp_path / "run"
    assert main(["--preset", "tiny", "--data", str(tiny_data_dir), "--run-dir", str(run_dir), "--set",
                 "max_minutes=1e-6"]) == 0  # fmt: skip
    pred = tmp_path / "pred"
    assert predict_main(["--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--data", str(tiny_data_dir),
                         "--out", str(pred)]) == 0  # fmt: skip
    manifest = json.loads((pred / "prediction_manifest.json").read_text())
    assert manifest["training_stop"] == {"reason": "budget", "step": 1, "steps": 6}
    capsys.readouterr()
    score = tmp_path / "score.json"
    assert evaluate_main([str(pred), "--solution-dir", str(tiny_data_dir), "--split", "val", "--clusters", "5",
                          "--runs", "2", "--json", str(score)]) == 0  # fmt: skip
    assert "stopped at step 1 of 6 by the time budget" in capsys.readouterr().out
    assert json.loads(score.read_text())["training_stop"]["step"] == 1
