"""The RICH trainer keeps the engine's guarantees: exact resume, kill -9 and SIGTERM, NaN stop, run-directory safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from calogan.core.engine import TrainingDiverged
from calogan.core.errors import InputError
from calogan.core.runtime import run_cli
from calogan.rich import evaluate as rich_eval
from calogan.rich import simulate as rich_sim
from calogan.rich import train as rich_train
from calogan.rich.momentum import MomentumScaling, momentum_sampling

ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def rich_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rich_train")
    rich_sim.write_samples(out, n=3000, seed=5, particles=("pion", "kaon"), progress=False)
    return out


def config(rich_dir, run_dir, **overrides):
    cfg = rich_train.TrainConfig.from_preset("tiny", particle="pion", data=str(rich_dir), run_dir=str(run_dir),
                                             log_every=1, weights="sweights", **overrides)  # fmt: skip
    cfg.progress = False
    return cfg


def weights(path):
    return torch.load(path / "checkpoints" / "last.pt", weights_only=True)


def test_resume_continues_exactly(rich_dir, tmp_path):
    rich_train.train(config(rich_dir, tmp_path / "a", steps=12))
    rich_train.train(config(rich_dir, tmp_path / "b", steps=6))
    rich_train.train(config(rich_dir, tmp_path / "b", steps=12), resume=True)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a["step"] == b["step"] == 12
    for key in ("generator", "generator_ema", "critic"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_existing_run_directory_needs_overwrite(rich_dir, tmp_path, capsys):
    argv = ["--particle", "pion", "--data", str(rich_dir), "--preset", "tiny", "--steps", "2",
            "--run-dir", str(tmp_path / "r")]  # fmt: skip
    assert run_cli(rich_train.main, argv) == 0
    assert run_cli(rich_train.main, argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli(rich_train.main, [*argv, "--overwrite"]) == 0
    assert run_cli(rich_train.main, [*argv, "--resume", "--steps", "4"]) == 0
    assert weights(tmp_path / "r")["step"] == 4


def test_resume_names_the_run_directory(rich_dir, tmp_path, capsys):
    base = ["--particle", "pion", "--data", str(rich_dir), "--preset", "tiny"]
    assert run_cli(rich_train.main, [*base, "--steps", "2", "--run-dir", str(tmp_path / "r")]) == 0
    assert run_cli(rich_train.main, [*base, "--resume", str(tmp_path / "r"), "--steps", "3"]) == 0
    assert weights(tmp_path / "r")["step"] == 3
    assert (
        run_cli(rich_train.main, [*base, "--resume", str(tmp_path / "r")]) == 0
    )  # no --steps: the run's total
    assert weights(tmp_path / "r")["step"] == 3
    assert (
        run_cli(rich_train.main, [*base, "--resume", str(tmp_path / "r"), "--run-dir", str(tmp_path / "q")])
        == 2
    )
    assert "names another folder than --run-dir" in capsys.readouterr().err
    assert (
        run_cli(rich_train.main, [*base, "--resume", str(tmp_path / "none")]) == 2
    )  # one particle: no fresh start
    assert "no checkpoint to resume from" in capsys.readouterr().err
    # how long and how often to checkpoint may change on resume; the model's settings may not
    more = ["--resume", str(tmp_path / "r"), "--steps", "5", "--checkpoint-every", "1", "--keep-every", "1"]
    assert run_cli(rich_train.main, [*base, *more]) == 0
    assert (tmp_path / "r" / "checkpoints" / "step_000005.pt").exists()
    assert run_cli(rich_train.main, [*base, "--resume", str(tmp_path / "r"), "--batch-size", "7"]) == 2
    assert "--keep-every and --device may change" in capsys.readouterr().err


def test_checkpoint_vocabulary_of_runs_recorded_before_keep_every():
    old = {"steps": 10, "checkpoint_every": 500}  # then: keep step_N files every 500 steps, last.pt every 100
    assert rich_train.current_vocabulary(old) == {"steps": 10, "checkpoint_every": 100, "keep_every": 500}
    new = {"checkpoint_every": 50, "keep_every": 0}
    assert rich_train.current_vocabulary(new) == new


def test_particle_all_trains_each_available_particle_in_its_own_folder(rich_dir, tmp_path, capsys):
    argv = ["--particle", "all", "--data", str(rich_dir), "--preset", "tiny", "--steps", "2",
            "--run-dir", str(tmp_path / "all")]  # fmt: skip
    # only pion and kaon samples exist here: every option and sample is checked before any training starts
    assert run_cli(rich_train.main, argv) == 2
    assert "rich_electron_train.npz: file not found" in capsys.readouterr().err
    assert not (tmp_path / "all").exists()


def test_holdout_scores_the_generator_and_keeps_the_best_step(rich_dir, tmp_path):
    """Held-out tracks stay out of training; best.pt is the evaluation with the lowest held-out AUC."""
    cfg = config(rich_dir, tmp_path / "runs" / "pion", steps=6, holdout=400, eval_every=2)
    task = rich_train.RichTask(cfg, torch.device("cpu"))
    assert len(task.holdout) == 400 and len(task.cond) + 400 == task.weight_info["n_rich_tracks"]
    run = rich_train.train(cfg)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    history = last["metrics"]["history"]
    assert [h["step"] for h in history] == [2, 4, 6]
    aucs = [h["holdout_auc"] for h in history]
    assert all(0.0 <= a <= 1.0 + 1e-9 for a in aucs)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == history[aucs.index(min(aucs))]["step"] == last["metrics"]["best_step"]
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_holdout_auc"] for r in logged if "eval_holdout_auc" in r] == aucs
    # the five-particle evaluation reads best.pt where a run kept one
    assert rich_eval.run_checkpoints(tmp_path / "runs", "pion")["pion"].name == "best.pt"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"holdout": 0, "eval_every": 2}, "--eval-every needs held-out tracks"),
        ({"holdout": 10**6}, "too few tracks with RICH information"),
        ({"holdout": -1}, "--holdout must be >= 0"),
    ],
)
def test_holdout_refusals(rich_dir, tmp_path, overrides, message):
    with pytest.raises(InputError, match=message):
        rich_train.train(config(rich_dir, tmp_path / "r", steps=2, **overrides))
    assert not (tmp_path / "r").exists()


def test_momentum_balance_flattens_log_p_and_keeps_each_track_reachable():
    rng = np.random.default_rng(0)
    log_p = rng.normal(2.5, 0.7, 50_000)  # falling spectrum: few tracks at high P
    assert momentum_sampling(log_p, 0.0) is None
    high = log_p > np.quantile(log_p, 0.95)
    shares = [float(momentum_sampling(log_p, a)[high].sum()) for a in (0.5, 1.0)]
    assert 0.05 < shares[0] < shares[1]  # more weight to the tail the larger the exponent
    flat = momentum_sampling(log_p, 1.0).numpy()
    edges = np.quantile(log_p, [0.001, 0.999])
    bins = np.clip(((log_p - edges[0]) / (edges[1] - edges[0]) * 20).astype(int), 0, 19)
    per_bin = np.bincount(bins, weights=flat, minlength=20)
    np.testing.assert_allclose(per_bin, 1 / 20, rtol=1e-6)  # alpha = 1: each log-P bin drawn equally often
    assert (flat > 0).all() and flat.sum() == pytest.approx(1.0)


def test_momentum_balance_trains_and_is_refused_outside_0_1(rich_dir, tmp_path):
    run = rich_train.train(config(rich_dir, tmp_path / "mb", steps=3, momentum_balance=0.5))
    assert weights(run)["config"]["momentum_balance"] == 0.5
    with pytest.raises(InputError, match="--momentum-balance must be in"):
        rich_train.train(config(rich_dir, tmp_path / "bad", steps=2, momentum_balance=1.5))
    assert not (tmp_path / "bad").exists()


def test_momentum_scaling_round_trips_and_equalises_the_spread_across_momentum():
    rng = np.random.default_rng(1)
    log_p = rng.uniform(1.0, 5.0, 40_000)
    width = np.exp(-(log_p - 1.0))  # the response narrows 50-fold from low to high momentum
    outputs = np.column_stack(
        [2 - width + 5 * width * rng.normal(size=log_p.size), rng.normal(size=log_p.size)]
    )
    scaling = MomentumScaling.fit(log_p, outputs)
    y = scaling.standardise(outputs, log_p)
    np.testing.assert_allclose(scaling.restore(y, log_p), outputs, rtol=1e-12, atol=1e-12)
    for lo in (1.2, 4.6):  # the same centre and spread at both ends once standardised
        inside = (log_p > lo) & (log_p < lo + 0.2)
        q25, q50, q75 = np.quantile(y[inside, 0], [0.25, 0.5, 0.75])
        assert abs(q50) < 0.15 and 0.8 < (q75 - q25) / 1.349 < 1.25
    again = MomentumScaling.from_arrays(**scaling.to_arrays())
    np.testing.assert_array_equal(again.standardise(outputs, log_p), y)
    few = MomentumScaling.fit(log_p[:50], outputs[:50])  # too few tracks for any bin: constant in log P
    assert len(few.knots) == 2 and np.isfinite(few.standardise(outputs, log_p)).all()


def test_momentum_scaling_trains_and_generates_in_dll_units(rich_dir, tmp_path):
    run = rich_train.train(config(rich_dir, tmp_path / "ms", steps=3, momentum_scaling=True))
    ckpt = weights(run)
    assert set(ckpt["momentum_scaling"]) == {"knots", "centre", "scale"}
    model = rich_eval.load_rich_model(run / "checkpoints" / "last.pt")
    dlls = model.generate(np.array([[5.0, 3.0, 100.0], [80.0, 4.5, 300.0]]), no_rich=False)
    assert dlls.shape == (2, 5) and np.isfinite(dlls).all()


def test_nan_stops_and_keeps_the_last_good_checkpoint(rich_dir, tmp_path, monkeypatch):
    real_sample = rich_train.RichTask.sample
    calls = {"n": 0}

    def poisoned(self, rng, batch_size):
        calls["n"] += 1
        batch = real_sample(self, rng, batch_size)
        if calls["n"] > 3 * 150:  # tiny preset: 3 batches per step; NaN from step 151 on
            batch.real = batch.real * float("nan")
        return batch

    monkeypatch.setattr(rich_train.RichTask, "sample", poisoned)
    with pytest.raises(TrainingDiverged, match="NaN/Inf at step 151"):
        rich_train.train(config(rich_dir, tmp_path / "nan", steps=400))
    last = weights(tmp_path / "nan")
    assert last["step"] == rich_train.CHECKPOINT_INTERVAL
    assert all(torch.isfinite(t).all() for t in last["generator"].values())


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_keeps_its_checkpoint_and_resumes(rich_dir, tmp_path, how):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "calogan.rich.train", "--particle", "pion", "--data", str(rich_dir),
           "--preset", "tiny", "--run-dir", str(run_dir)]  # fmt: skip
    proc = subprocess.Popen([*cmd, "--steps", "1000000"], env=ENV, stderr=subprocess.PIPE, text=True)
    last = run_dir / "checkpoints" / "last.pt"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not last.exists():
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(how)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reached = torch.load(last, weights_only=True)["step"]
    if how == signal.SIGTERM:  # a clean stop: exit 143 and a checkpoint at the step reached
        assert proc.returncode == 143, proc.stderr.read()
        assert reached >= rich_train.CHECKPOINT_INTERVAL
    else:
        assert reached % rich_train.CHECKPOINT_INTERVAL == 0
    done = subprocess.run([*cmd, "--resume", "--steps", str(reached + 3)], env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert torch.load(last, weights_only=True)["step"] == reached + 3


@pytest.fixture(scope="module")
def five_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rich_five")
    rich_sim.write_samples(out, n=1500, seed=6, progress=False)
    return out


def test_workers_train_the_same_models_as_one_after_another(five_dir, tmp_path, capsys):
    """--workers 2 gives each particle's process one thread here: bit for bit the sequential runs with one thread."""
    argv = [
        "--particle",
        "all",
        "--data",
        str(five_dir),
        "--preset",
        "tiny",
        "--steps",
        "4",
        "--workers",
        "2",
    ]
    env_threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers: one thread each
    try:
        assert run_cli(rich_train.main, [*argv, "--run-dir", str(tmp_path / "par")]) == 0
        out = capsys.readouterr().out
        assert "2 at a time, 1 CPU thread(s) each" in out and out.count(" finished; checkpoint: ") == 5
        torch.set_num_threads(1)
        for particle in rich_train.PARTICLES:
            cfg = rich_train.TrainConfig.from_preset(
                "tiny",
                particle=particle,
                data=str(five_dir),
                run_dir=str(tmp_path / "seq" / particle),
                steps=4,
            )
            cfg.progress = False
            rich_train.train(cfg)
            a, b = (weights(tmp_path / kind / particle)["generator"] for kind in ("par", "seq"))
            assert all(torch.equal(a[k], b[k]) for k in a), particle
    finally:
        torch.set_num_threads(env_threads)


def test_workers_need_particle_all(five_dir, tmp_path, capsys):
    argv = ["--particle", "pion", "--data", str(five_dir), "--preset", "tiny", "--workers", "2"]
    assert run_cli(rich_train.main, [*argv, "--run-dir", str(tmp_path / "r")]) == 2
    assert "needs --particle all" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_sigterm_stops_every_worker_with_a_checkpoint_and_budgets_stretch(five_dir, tmp_path):
    run_dir = tmp_path / "par"
    cmd = [sys.executable, "-m", "calogan.rich.train", "--particle", "all", "--workers", "3", "--data",
           str(five_dir), "--preset", "tiny", "--run-dir", str(run_dir), "--max-minutes", "100"]  # fmt: skip
    env = {**ENV, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([*cmd, "--steps", "1000000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    first = [run_dir / p / "checkpoints" / "last.pt" for p in ("electron", "muon", "pion")]
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not all(f.exists() for f in first):
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)  # to the command only: it stops its workers
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "continue with --resume: electron, muon, pion; not started: kaon, proton" in err
    # three particles on two threads: each one's time budget stretches by 1.5
    assert json.loads((run_dir / "muon" / "config.json").read_text())["max_minutes"] == 150
    reached = {f: torch.load(f, weights_only=True)["step"] for f in first}
    assert min(reached.values()) >= rich_train.CHECKPOINT_INTERVAL
