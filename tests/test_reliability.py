"""Reliability under concurrent writers, interrupted writes, hostile files and odd exits.

Each class of failure has its own small fixtures here: folders locked by a second process, prediction pairs,
outputs that name inputs, hostile archives and npy headers, control characters, extreme values, malformed
RICH checkpoints, ``--particle all`` inputs and exit statuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from calogan.__main__ import main as calogan_main
from calogan.core.locks import LOCK_NAME, DirectoryLock, lock_directory
from calogan.ecal.simulate import write_dataset

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str]) -> int:
    """Run ``calogan <argv>`` in-process and return its exit status."""
    return calogan_main(argv)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """A 300/100/100-event ECAL data set (seed 7): enough for option and file checks, not for scores."""
    out = tmp_path_factory.mktemp("rel_data")
    write_dataset(out, n_train=300, n_val=100, n_test=100, seed=7, progress=False)
    return out


class Holder:
    """A second process that holds the lock of a folder until it is stopped."""

    def __init__(self, folder: Path):
        code = textwrap.dedent(
            f"""
            import sys
            from calogan.core.locks import lock_directory
            lock = lock_directory({str(folder)!r}, "run directory")
            print("held", flush=True)
            sys.stdin.read()
            """
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert self.proc.stdout.readline().strip() == "held"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


@pytest.fixture
def holder():
    made: list[Holder] = []

    def start(folder: Path) -> Holder:
        made.append(Holder(folder))
        return made[-1]

    yield start
    for h in made:
        if h.proc.poll() is None:
            h.kill()


# ---------------------------------------------------------------- run locks


def _fake_run(folder: Path) -> Path:
    """A run directory as a training leaves it: config.json and a last.pt (contents never read here)."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text('{"marker": "first run"}\n')
    (folder / "checkpoints" / "last.pt").write_bytes(b"not read: the lock is checked first")
    return folder


def test_second_writer_of_a_run_is_refused_naming_the_holder(tmp_path, holder, small_data, capsys):
    run_dir = _fake_run(tmp_path / "run")
    h = holder(run_dir)
    assert (
        run(
            ["train", "--preset", "tiny", "--data", str(small_data), "--run-dir", str(run_dir), "--overwrite"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"pid {h.proc.pid}" in err and "in use by another calogan process" in err
    assert run(["train", "--resume", str(run_dir)]) == 2
    assert f"pid {h.proc.pid}" in capsys.readouterr().err
    assert json.loads((run_dir / "config.json").read_text()) == {"marker": "first run"}  # untouched
    h.stop()
    assert not (run_dir / LOCK_NAME).exists()  # a finished holder removes its lock file


def test_a_killed_holder_leaves_no_stuck_lock(tmp_path, holder):
    folder = tmp_path / "run"
    holder(folder).kill()  # SIGKILL: no clean-up runs; the file may stay, the lock does not
    with lock_directory(folder) as lock:
        assert lock.held and (folder / LOCK_NAME).exists()
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists()


def test_lock_is_counted_within_one_process_and_an_empty_made_folder_goes(tmp_path):
    folder = tmp_path / "made"
    outer = DirectoryLock(folder).acquire()
    inner = DirectoryLock(folder).acquire()  # the same process: taken again, not refused
    inner.release()
    assert (folder / LOCK_NAME).exists()
    outer.release()
    assert not folder.exists()  # made only to hold the lock, nothing written: removed


def test_prediction_and_report_folders_are_locked(tmp_path, holder, tiny_checkpoint, small_data, capsys):
    out = tmp_path / "pred"
    h = holder(out)
    code = run(
        ["predict", "--checkpoint", str(tiny_checkpoint), "--data", str(small_data), "--out", str(out)]
    )
    assert code == 2 and f"pid {h.proc.pid}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "-x", "bad\nname"])
def test_run_name_stays_under_runs(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(["train", "--preset", "tiny", f"--name={name}"]) == 2
    err = capsys.readouterr().err
    assert "--name: must be a plain folder name under runs/" in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())
