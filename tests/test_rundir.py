"""The run-directory set-up every trainer shares: create, refuse, overwrite, resume, settings, lock, names, budget.

Fixtures are tiny and local: a run directory is a folder with config.json and a checkpoints/last.pt holding a
small dict; the second writer is a subprocess that holds the folder's lock.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from calogan.core.errors import InputError
from calogan.core.locks import LOCK_NAME
from calogan.core.rundir import RUNS_FOLDER, RunSetup, check_run_path, deadline, run_path, with_defaults
from calogan.core.runtime import run_cli
from calogan.ecal.train import TrainConfig
from calogan.rich.train import recorded_settings

ROOT = Path(__file__).resolve().parents[1]


def accept(checkpoint: dict, path: Path) -> dict:
    """The trainer's checkpoint check, here: any dict with a step."""
    if not isinstance(checkpoint, dict) or "step" not in checkpoint:
        raise InputError(f"{path}: not a checkpoint")
    return checkpoint


@pytest.fixture
def finished(tmp_path) -> Path:
    """A run directory as a trainer leaves it: config.json {"lr": 0.1, "seed": 0} and last.pt at step 3."""
    with RunSetup(tmp_path / "run") as setup:
        run = setup.start({"lr": 0.1, "seed": 0})
        run.save("last.pt", {"step": 3, "weights": torch.ones(2)})
    return run.path


@pytest.fixture
def holder():
    """Start a second process that holds a folder's lock until its stdin closes."""
    procs: list[subprocess.Popen] = []

    def start(folder: Path) -> subprocess.Popen:
        code = textwrap.dedent(
            f"""
            import sys
            from calogan.core.locks import lock_directory
            lock = lock_directory({str(folder)!r}, "run directory")
            print("held", flush=True)
            sys.stdin.read()
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, cwd=ROOT)  # fmt: skip
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_create_writes_config_and_holds_the_lock_for_the_run(tmp_path):
    with RunSetup(tmp_path / "new") as setup:
        run = setup.start({"lr": 0.1})
        assert json.loads((run.path / "config.json").read_text()) == {"lr": 0.1}
        assert run.checkpoints.is_dir() and (run.path / LOCK_NAME).exists()
        assert setup.start({"other": 1}) is run  # one run per set-up
    assert not (run.path / LOCK_NAME).exists()  # given back when the block ends


def test_an_existing_run_is_refused_without_overwrite_or_resume(finished, capsys):
    def main(argv):
        with RunSetup(finished) as setup:
            setup.start({"lr": 0.2})

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pass --resume {finished} or --overwrite" in err
    assert json.loads((finished / "config.json").read_text())["lr"] == 0.1


def test_overwrite_replaces_only_a_run_directory(finished, tmp_path):
    with RunSetup(finished, overwrite=True) as setup:
        setup.start({"lr": 0.2})
    assert json.loads((finished / "config.json").read_text()) == {"lr": 0.2}
    assert not (finished / "checkpoints" / "last.pt").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with (
        pytest.raises(InputError, match="not a calogan run directory"),
        RunSetup(foreign, overwrite=True) as s,
    ):
        s.start({})
    assert (foreign / "notes.txt").read_text() == "keep"


def test_resume_returns_the_checked_last_checkpoint_and_trains_into_the_same_run(finished):
    with RunSetup(finished, resume=True) as setup:
        saved = setup.resume(accept, {"--lr": ("lr", 0.1), "--seed": ("seed", 0)})  # unchanged: accepted
        assert saved["step"] == 3 and torch.equal(saved["weights"], torch.ones(2))
        assert (finished / LOCK_NAME).exists()
        run = setup.start({"ignored": True})
        assert run.path == finished
    assert json.loads((finished / "config.json").read_text()) == {"lr": 0.1, "seed": 0}  # not rewritten


def test_resume_needs_a_checkpoint_and_excludes_overwrite(tmp_path, finished):
    with (
        pytest.raises(InputError, match="no checkpoint to resume from"),
        RunSetup(tmp_path / "none", resume=True) as s,
    ):
        s.resume(accept)
    with pytest.raises(InputError, match="--resume and --overwrite exclude each other"):
        RunSetup(finished, resume=True, overwrite=True)
    torch.save({"no": "step"}, finished / "checkpoints" / "last.pt")
    with pytest.raises(InputError, match="not a checkpoint"), RunSetup(finished, resume=True) as setup:
        setup.resume(accept)
    assert not (finished / LOCK_NAME).exists()  # a refused resume gives the lock back


def test_a_resume_that_changes_a_setting_is_refused_with_one_line(finished):
    setup = RunSetup(finished, resume=True, allowed="--steps and --device")
    with pytest.raises(InputError) as info, setup:
        setup.resume(accept, {"--lr": ("lr", 0.5)})
    assert str(info.value) == (
        f"--lr: the run in {finished} was trained with lr = 0.1, and a resumed run keeps its settings "
        "(with --resume only --steps and --device may change); got 0.5"
    )
    with (
        pytest.raises(InputError, match="--width: the run in .* records no width"),
        RunSetup(finished, resume=True) as s,
    ):
        s.resume(accept, {"--width": ("width", 8)})
    flat = lambda recorded: {"rate": recorded["lr"]}  # noqa: E731 - a trainer's view of its config.json
    with pytest.raises(InputError, match="rate = 0.1"), RunSetup(finished, resume=True) as setup:
        setup.resume(accept, {"--rate": ("rate", 0.3)}, recorded=flat)


def test_resume_refuses_other_training_data(finished):
    with RunSetup(finished, resume=True) as setup:
        setup.check_same_data(None, "abc", "data.npz")  # a new run: nothing to compare
        setup.check_same_data({"data_sha256": "abc"}, "abc", "data.npz")
        with pytest.raises(InputError, match="data.npz: differs from the data the run in"):
            setup.check_same_data({"data_sha256": "abc"}, "def", "data.npz")


def test_a_second_writer_is_refused_naming_the_holder(finished, holder):
    proc = holder(finished)
    for setup in (RunSetup(finished, resume=True), RunSetup(finished, overwrite=True)):
        with pytest.raises(InputError, match=f"in use by another calogan process \\(pid {proc.pid} "), setup:
            setup.resume(accept) if setup.resuming else setup.start({})
    assert json.loads((finished / "config.json").read_text()) == {"lr": 0.1, "seed": 0}


def test_names_stay_under_the_runs_folder(tmp_path):
    assert run_path(None, "quick") == RUNS_FOLDER / "quick"
    assert run_path(tmp_path / "x", "") == tmp_path / "x"
    for name in ("../escape", "a/b", "..", "-x", "bad\nname"):
        with pytest.raises(InputError, match="--name: must be a plain folder name under runs/"):
            run_path(None, name)
    with pytest.raises(InputError, match="--name: a run needs a name or a run directory"):
        run_path(None, "")


def test_run_path_is_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="--run-dir .*file: exists and is not a folder"):
        check_run_path(tmp_path / "file", "--run-dir")
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(InputError, match="input"):
        check_run_path(data / "run", "--run-dir", inputs=[data])
    assert check_run_path(tmp_path / "fine", "--run-dir") == tmp_path / "fine"


def test_deadline_of_a_time_budget():
    assert deadline(0.0, 100.0) == math.inf
    assert deadline(1.5, 100.0) == 190.0


def test_settings_added_since_a_run_was_recorded_take_their_defaults():
    """A resumed run takes the default of a setting it did not record, so giving that value is not refused."""
    settings = with_defaults(TrainConfig, {"steps": 40, "gp_weight": 5.0})
    assert (settings["steps"], settings["gp_weight"], settings["objective"], settings["lr_decay"]) == (
        40, 5.0, "wgan-gp", False,
    )  # fmt: skip
    rich = recorded_settings({"betas": [0.5, 0.8], "checkpoint_every": 500, "steps": 40})
    assert (rich["beta1"], rich["beta2"], rich["gp_every"], rich["keep_every"], rich["checkpoint_every"]) == (
        0.5, 0.8, 1, 500, 100,
    )  # fmt: skip
