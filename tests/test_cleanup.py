"""Nothing left behind: a run killed while writing leaves the old output or none, and the next run removes
its temp files (named .calogan-tmp-<target>.<pid>.<random> next to the target)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from calogan.core.runtime import TEMP_PREFIX, atomic_write_text, run_cli, stale_temps
from calogan.ecal.data import load_prediction
from calogan.ecal.predict import main as predict_main
from calogan.studies import transfer
from calogan.submission.package import main as package_main

N = 600  # events per split of the tiny data set (tests/conftest.py)
PREDICTIONS = ("data_val_prediction.npz", "data_test_prediction.npz")


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def kill_when(cmd: list[str], folder: Path, pattern: str, timeout: float = 120.0) -> bool:
    """Run ``cmd``; SIGKILL it as soon as a file matching ``pattern`` appears in ``folder``.

    Returns whether it was caught while writing (False: it finished first).
    """
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if folder.is_dir() and any(folder.glob(pattern)):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return False


def make_stale(folder: Path, target: str, pid: int, as_dir: bool) -> Path:
    path = folder / f"{TEMP_PREFIX}{target}.{pid}.abcd1234"
    if as_dir:
        path.mkdir(parents=True)
        (path / "EnergyDeposit.npy").write_bytes(b"\0" * 1000)
    else:
        path.write_bytes(b"partial")
    return path


def test_stale_temps_are_recognised_by_pid(tmp_path):
    dead = make_stale(tmp_path, "x.npz", dead_pid(), as_dir=False)
    mine = make_stale(tmp_path, "x.npz", os.getpid(), as_dir=False)
    other_target = make_stale(tmp_path, "y.npz", dead_pid(), as_dir=False)
    assert stale_temps(tmp_path, "x.npz") == [dead]
    atomic_write_text(tmp_path / "x.npz", "done")  # the writer removes the dead run's temp of its target
    assert not dead.exists() and mine.exists() and other_target.exists()
    assert (tmp_path / "x.npz").read_text() == "done"


def test_predict_killed_while_writing(tiny_checkpoint, tiny_data_dir, tmp_path):
    out = tmp_path / "pred"
    base = ["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data_dir), "--out", str(out)]
    assert run_cli(predict_main, base) == 0
    old = {name: (out / name).read_bytes() for name in PREDICTIONS}
    cmd = [sys.executable, "-m", "calogan.predict", *base, "--overwrite", "--seed", "5", "--batch-size", "1"]
    caught = kill_when(cmd, out, f"{TEMP_PREFIX}data_*_prediction.npz.*")
    for name in PREDICTIONS:  # each file is the old one or a complete new one, never a partial one
        images = load_prediction(out / name, n_expected=N)
        if (out / name).read_bytes() != old[name]:
            assert np.isfinite(images).all()
    if caught:
        assert temps(out), "the killed run should have left its staging folder"
    # a stale temp made by hand (dead pid) is removed as well; a live process's temp is kept
    by_hand = make_stale(out, "data_val_prediction.npz", dead_pid(), as_dir=True)
    live = make_stale(out, "data_test_prediction.npz", 1, as_dir=False)  # pid 1 started before it
    assert run_cli(predict_main, [*base, "--overwrite"]) == 0
    assert temps(out) == [live.name] and not by_hand.exists()
    assert {name: (out / name).read_bytes() for name in PREDICTIONS} == old
    live.unlink()


def test_package_killed_while_writing(tiny_checkpoint, tiny_data_dir, tmp_path):
    subs = tmp_path / "subs"
    zip_path = subs / "s.zip"
    base = ["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data_dir), "--out", str(zip_path)]
    base += ["--no-score", "--batch-size", "1"]
    cmd = [sys.executable, "-m", "calogan.package", *base]
    caught = kill_when(cmd, subs, f"{TEMP_PREFIX}s.zip.*")
    assert not zip_path.exists() or zip_path.stat().st_size > 0
    if caught:
        assert temps(subs) and not zip_path.exists()
    by_hand = make_stale(subs, "s.zip", dead_pid(), as_dir=False)
    assert run_cli(package_main, [*base, "--overwrite"]) == 0
    assert temps(subs) == [] and not by_hand.exists()
    assert zip_path.is_file()


def test_package_refuses_bad_values_before_any_work(tiny_data_dir, tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    out = tmp_path / "subs" / "s.zip"
    base = ["--predictions", str(pred), "--data", str(tiny_data_dir), "--out", str(out)]
    for option, value in (
        ("--score-runs", "0"),
        ("--seed", "-1"),
        ("--mantissa-bits", "24"),
        ("--batch-size", "0"),
    ):
        assert run_cli(package_main, [*base, option, value]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and option in err and value in err, err
    out.parent.mkdir()
    out.mkdir()  # a folder where the zip should go
    assert run_cli(package_main, base) == 2
    assert "is a folder" in capsys.readouterr().err
    out.rmdir()
    out.write_bytes(b"old")
    assert run_cli(package_main, base) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"old"
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.zip"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_package_refuses_a_read_only_folder(tiny_data_dir, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        args = ["--predictions", str(tmp_path), "--data", str(tiny_data_dir), "--out", str(ro / "s.zip")]
        assert run_cli(package_main, args) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


def test_rich_simulate_refuses_a_negative_transfer_size(tmp_path, capsys):
    from calogan.rich.simulate import main as rich_simulate_main

    out = tmp_path / "rich"
    assert run_cli(rich_simulate_main, ["--out", str(out), "--n", "200", "--n-transfer", "-3"]) == 2
    assert "--n-transfer" in capsys.readouterr().err
    assert not out.exists()


def test_transfer_reports_are_all_or_nothing(tmp_path, monkeypatch):
    out = tmp_path / "study"
    out.mkdir()
    monkeypatch.setattr(transfer, "plot_transfer", lambda path, result: Path(path).write_bytes(b"png"))

    def broken(result):
        raise RuntimeError("report failed")

    monkeypatch.setattr(transfer, "render_report", broken)
    with pytest.raises(RuntimeError):
        transfer.write_reports(out, {"a": 1})
    assert list(out.iterdir()) == []
    monkeypatch.setattr(transfer, "render_report", lambda result: "# report\n")
    transfer.write_reports(out, {"a": 1})
    assert sorted(p.name for p in out.iterdir()) == sorted(transfer.REPORT_FILES)
