"""Reliability under concurrent writers, interrupted writes, hostile files and odd exits.

Each class of failure has its own small fixtures here: folders locked by a second process, prediction pairs,
outputs that name inputs, hostile archives and npy headers, control characters, extreme values, malformed
RICH checkpoints, ``--particle all`` inputs and exit statuses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

from calogan.__main__ import main as calogan_main
from calogan.core.errors import InputError
from calogan.core.locks import LOCK_NAME, DirectoryLock, lock_directory
from calogan.core.runtime import run_cli
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


# ---------------------------------------------------------------- paired outputs


@pytest.fixture(scope="module")
def prediction_pairs(tiny_checkpoint, small_data, tmp_path_factory) -> tuple[Path, Path]:
    """Two prediction folders of the same checkpoint with different seeds (two different pairs)."""
    from calogan.ecal.predict import predict_dir

    base = tmp_path_factory.mktemp("pairs")
    for seed in (0, 1):
        predict_dir(
            tiny_checkpoint, small_data, base / f"seed{seed}", seed=seed, progress=False, backend="eager"
        )
    return base / "seed0", base / "seed1"


def test_predict_writes_the_pair_with_a_manifest(prediction_pairs, tiny_checkpoint):
    from calogan.ecal.data import PREDICTION_MANIFEST, sha256_file

    folder = prediction_pairs[0]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["data_val_prediction.npz", "data_test_prediction.npz", PREDICTION_MANIFEST]
    )  # no lock file, no staging folder left
    manifest = json.loads((folder / PREDICTION_MANIFEST).read_text())
    assert manifest["checkpoint_sha256"] == sha256_file(tiny_checkpoint) and manifest["seed"] == 0
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(folder / name)


def test_a_mixed_pair_is_refused_by_package_and_evaluate(prediction_pairs, small_data, tmp_path, capsys):
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(prediction_pairs[0], mixed)
    shutil.copy(prediction_pairs[1] / "data_test_prediction.npz", mixed)  # test from the other run
    out = tmp_path / "sub.zip"
    assert run(["package", "--predictions", str(mixed), "--data", str(small_data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data_test_prediction.npz: differs from the file recorded" in err and err.count("\n") == 1
    assert not out.exists()
    assert (
        run(["evaluate", str(mixed), "--solution-dir", str(small_data), "--clusters", "2", "--runs", "1"])
        == 2
    )
    assert "pair is mixed" in capsys.readouterr().err
    one = str(mixed / "data_test_prediction.npz")
    assert (
        run(["evaluate", one, "--split", "test", "--solution-dir", str(small_data), "--clusters", "2"]) == 2
    )


def test_an_interrupted_predict_keeps_the_old_pair(
    prediction_pairs, tiny_checkpoint, small_data, tmp_path, monkeypatch
):
    import shutil

    from calogan.ecal import predict

    folder = tmp_path / "pred"
    shutil.copytree(prediction_pairs[0], folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = predict.iter_generate
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second split fails after the first was written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(predict, "iter_generate", failing)
    with pytest.raises(KeyboardInterrupt):
        predict.predict_dir(tiny_checkpoint, small_data, folder, seed=5, overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # old pair, old manifest, no temps


# ---------------------------------------------------------------- outputs never overwrite inputs


def test_check_not_input_rules(tmp_path):
    from calogan.core.options import check_not_input

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.npz").write_bytes(b"x")
    (tmp_path / "link.npz").symlink_to(tmp_path / "data" / "a.npz")
    for out, inputs, replaces in [
        (tmp_path / "data" / "a.npz", [tmp_path / "data" / "a.npz"], ()),  # the same file
        (tmp_path / "link.npz", [tmp_path / "data" / "a.npz"], ()),  # through a link
        (tmp_path / "data" / ".." / "data" / "a.npz", [tmp_path / "data" / "a.npz"], ()),  # through ..
        (tmp_path / "data" / "b.json", [tmp_path / "data"], ()),  # inside an input folder
        (tmp_path, [tmp_path / "data" / "a.npz"], None),  # a folder replaced whole holds the input
        (tmp_path, [tmp_path / "data" / "a.npz"], ["data"]),  # an entry replaced holds the input
    ]:
        with pytest.raises(InputError, match="--out"):
            check_not_input(out, inputs, "--out", replaces)
    check_not_input(tmp_path / "data" / "b.json", [tmp_path / "data" / "a.npz"])  # a sibling is fine
    check_not_input(tmp_path, [tmp_path / "data" / "a.npz"], "--out", ["other"])


def _refused(argv: list[str], capsys, *kept: Path) -> None:
    """The command exits 2 with one line even with --overwrite, and the inputs keep their bytes."""
    before = [p.read_bytes() for p in kept]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("input" in err), err
    assert [p.read_bytes() for p in kept] == before


def test_outputs_that_name_inputs_are_refused(
    prediction_pairs, tiny_checkpoint, small_data, tmp_path, capsys
):
    import shutil

    pred = tmp_path / "pred"
    shutil.copytree(prediction_pairs[0], pred)
    val = pred / "data_val_prediction.npz"
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_checkpoint.parents[1], run_dir)
    ckpt = run_dir / "checkpoints" / "best.pt"
    data = ["--data", str(small_data)]
    _refused(["package", "--predictions", str(pred), *data, "--out", str(val), "--overwrite"], capsys, val)
    _refused(["export", "--checkpoint", str(ckpt), "--out", str(ckpt), "--overwrite"], capsys, ckpt)
    _refused(["evaluate", str(val), "--split", "val", "--solution-dir", str(small_data), "--json", str(val),
              "--overwrite"], capsys, val)  # fmt: skip
    _refused(["finetune", "--checkpoint", str(ckpt), *data, "--target", "transverse_width", "--out", str(run_dir),
              "--overwrite"], capsys, ckpt)  # fmt: skip
    train_file = small_data / "data_train.npz"
    _refused(
        ["train", "--preset", "tiny", *data, "--run-dir", str(small_data), "--overwrite"], capsys, train_file
    )
    _refused(["rich-export", "--checkpoint", str(ckpt), "--out", str(ckpt), "--overwrite"], capsys, ckpt)
    _refused(["codalab-score", str(tmp_path), str(tmp_path / "out")], capsys)


# ---------------------------------------------------------------- hostile archives (builders of bench_hostile.py)


hostile = load_benchmark("bench_hostile")


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "\x1b" not in err, err
    return err


@pytest.mark.parametrize("entries", [100, 70_000])  # a classic end record, and a zip64 one
def test_entry_count_is_refused_from_the_end_record(entries, tmp_path, capsys):
    from calogan.core.safezip import read_end_record

    path = hostile.entry_flood(tmp_path / "flood.zip", entries)
    assert read_end_record(path)[0] == entries
    assert run(["package", "--check", str(path), "--data", str(tmp_path / "none")]) == 2
    assert f"declares {entries} entries, more than the 64 accepted" in _one_error(capsys)


def test_nested_bomb_inside_an_npz_member_is_refused(tmp_path, capsys):
    members = {name: hostile.zeros_npz(24 << 20) for name in hostile.NAMES}  # 24 MiB of zeros, ~24 KiB each
    path = hostile.results_zip(tmp_path / "nested.zip", members)
    assert path.stat().st_size < 1 << 20
    assert run(["package", "--check", str(path), "--data", str(tmp_path / "none")]) == 2
    assert "EnergyDeposit.npy' expands" in _one_error(capsys)


def test_npy_header_is_checked_before_numpy_allocates(tmp_path, capsys):
    from calogan.ecal.data import load_prediction

    member = hostile.huge_header_npz((10**9, 30, 30))
    (tmp_path / "one.npz").write_bytes(member)
    with pytest.raises(InputError, match=r"declares shape \(1000000000, 30, 30\) of float32"):
        load_prediction(tmp_path / "one.npz")
    path = hostile.results_zip(tmp_path / "header.zip", {name: member for name in hostile.NAMES})
    assert run(["package", "--check", str(path), "--data", str(tmp_path / "none")]) == 2
    assert "(a corrupt or hostile file)" in _one_error(capsys)


# ---------------------------------------------------------------- control characters


def test_names_from_files_are_escaped(tmp_path, capsys):
    path = hostile.results_zip(tmp_path / "names.zip", {hostile.NAMES[0]: b"", "evil\n\x1b[31mname": b""})
    assert run(["package", "--check", str(path), "--data", str(tmp_path / "none")]) == 2
    assert "evil\\n\\x1b[31mname" in _one_error(capsys)
    np.savez(tmp_path / "keys.npz", **{"bad\nkey\x1b[2J": np.zeros(3)})
    assert (
        run(["evaluate", str(tmp_path / "keys.npz"), "--split", "val", "--solution-dir", str(tmp_path)]) == 2
    )
    capsys.readouterr()
    from calogan.ecal.data import load_prediction

    with pytest.raises(InputError) as info:
        load_prediction(tmp_path / "keys.npz")
    assert "bad\\nkey\\x1b[2J" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- values after conversion


@pytest.mark.parametrize(
    "value, dtype, message",
    [
        (1e300, np.float64, "NaN/Inf values (as float32)"),
        (complex(np.nan, 1), np.complex64, "dtype complex64, expected real numbers"),
        (1.0, "U3", "expected real numbers"),
        (1e38, np.float32, "cell energies above 1e+12"),
    ],
)
def test_prediction_values_are_checked_as_float32(value, dtype, message, tmp_path):
    from calogan.ecal.data import load_prediction

    np.savez(tmp_path / "p.npz", EnergyDeposit=np.full((4, 30, 30), value, dtype))
    with pytest.raises(InputError, match=message.replace("+", r"\+").replace("(", r"\(").replace(")", r"\)")):
        load_prediction(tmp_path / "p.npz")


def test_conditions_are_checked_after_float32_conversion(small_data, tmp_path):
    from calogan.ecal.data import load_npz

    arrays = dict(np.load(small_data / "data_val.npz"))
    arrays["ParticleMomentum"] = arrays["ParticleMomentum"].astype(np.float64)
    arrays["ParticleMomentum"][0, 0] = 1e300
    np.savez(tmp_path / "data_val.npz", **arrays)
    with pytest.raises(InputError, match="ParticleMomentum' holds 1 NaN/Inf values"):
        load_npz(tmp_path / "data_val.npz")


def test_extreme_but_allowed_showers_are_scored(small_data):
    from calogan.ecal.data import MAX_CELL_ENERGY, load_npz
    from calogan.metrics.scoring import score_arrays

    true = load_npz(small_data / "data_val_solution.npz")
    images = np.full((len(true), 30, 30), MAX_CELL_ENERGY, np.float32)
    result = score_arrays(images, true, None, clusters=2, runs=1, ceiling=False, standardised=False)
    assert 0.0 <= result["score"] <= 1.0


# ---------------------------------------------------------------- exit statuses


def test_no_command_prints_usage_to_stdout(capsys):
    assert run([]) == 2
    out = capsys.readouterr()
    assert out.out.startswith("usage: calogan <command>") and out.err == ""


def test_broken_pipe_is_silent_141():
    code = "from calogan.core.runtime import run_cli\nraise SystemExit(run_cli(lambda a: [print('x' * 99) for _ in range(10**5)]))"
    script = f'set -o pipefail; {sys.executable} -c "{code}" | head -c 10; echo " $?"'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout == "x" * 10 + " 141\n" and proc.stderr == ""


def test_sigterm_is_143_with_one_line():
    code = textwrap.dedent(
        """
        import time
        from calogan.core.runtime import run_cli
        def main(argv):
            print("ready", flush=True)
            time.sleep(60)
        raise SystemExit(run_cli(main))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert proc.stderr.read() == "terminated\n"


def test_unwritable_output_mid_run_is_exit_2(capsys):
    import errno

    def main(argv):
        raise OSError(errno.EROFS, "Read-only file system", "runs/x/metrics.jsonl")

    assert run_cli(main, []) == 2
    assert _one_error(capsys) == "error: runs/x/metrics.jsonl: cannot write (Read-only file system)\n"


def test_warnings_are_one_line_and_foreign_checkpoints_add_none(tmp_path, capsys):
    import warnings

    import torch

    def main(argv):
        warnings.warn("first line\nsecond line", UserWarning, stacklevel=1)

    assert run_cli(main, []) == 0
    assert capsys.readouterr().err == "warning: UserWarning: first line\n"
    with warnings.catch_warnings():  # torch's own deprecation notice of tracing
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    scripted.save(str(tmp_path / "scripted.pt"))
    assert (
        run(["export", "--checkpoint", str(tmp_path / "scripted.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    )
    assert "not a readable calogan checkpoint" in _one_error(capsys)


# ---------------------------------------------------------------- RICH checkpoint schema


@pytest.fixture(scope="module")
def rich_ckpt(rich_kaon_run) -> Path:
    """The shared tiny RICH kaon run with tie patterns and momentum scaling (every optional field present)."""
    return rich_kaon_run / "checkpoints" / "last.pt"


def _break(ckpt: dict, how: str) -> None:
    """Damage one field of a RICH checkpoint in place."""
    import torch

    if how == "no qt_in":
        del ckpt["qt_in"]
    elif how == "qt_out 4 columns":
        ckpt["qt_out"]["quantiles"] = ckpt["qt_out"]["quantiles"][:, :4]
    elif how == "quantiles decrease":
        ckpt["qt_in"]["quantiles"] = ckpt["qt_in"]["quantiles"].flip(0)
    elif how == "scaling shape":
        ckpt["momentum_scaling"]["centre"] = ckpt["momentum_scaling"]["centre"][:, :2]
    elif how == "scaling missing part":
        del ckpt["momentum_scaling"]["scale"]
    elif how == "hidden huge":
        ckpt["model_config"]["hidden"] = 10**9
    elif how == "hidden text":
        ckpt["model_config"]["hidden"] = "wide"
    elif how == "no tie head":
        del ckpt["tie_head"]
    elif how == "weights reshaped":
        first = next(iter(ckpt["generator_ema"]))
        ckpt["generator_ema"][first] = torch.zeros(3, 3)
    elif how == "table out of range":
        ckpt["no_rich_table"] = ckpt["no_rich_table"] + 2
    elif how == "particle":
        ckpt["particle"] = "kaon\x1b[2J"
    elif how == "patterns":
        ckpt["model_config"]["tie_patterns"] = [[1, 2]]


BROKEN = {
    "no qt_in": "qt_in/quantiles: missing or not a tensor",
    "qt_out 4 columns": "qt_out/quantiles: shape",
    "quantiles decrease": "qt_in/quantiles: values must be non-decreasing",
    "scaling shape": "momentum_scaling/centre: shape",
    "scaling missing part": "momentum_scaling/scale: missing",
    "hidden huge": "model_config/hidden: must be an integer in [1, 4096]",
    "hidden text": "model_config/hidden: must be an integer",
    "no tie head": "tie_head: missing",
    "weights reshaped": "generator_ema: does not fit model_config",
    "table out of range": "no_rich_table: probabilities must lie in [0, 1]",
    "particle": "field particle: 'kaon\\x1b[2J' is not one of",
    "patterns": "model_config/tie_patterns",
}


def test_rich_checkpoint_fields_are_checked_on_load(rich_ckpt, rich_kaon_dir, tmp_path, capsys):
    import torch

    for how, message in BROKEN.items():
        ckpt = torch.load(rich_ckpt, weights_only=True)
        _break(ckpt, how)
        bad = tmp_path / "bad.pt"
        torch.save(ckpt, bad)
        assert (
            run(["rich-export", "--checkpoint", str(bad), "--out", str(tmp_path / "x.pt"), "--overwrite"])
            == 2
        )
        assert message in _one_error(capsys), how
        assert run(["rich-evaluate", "--checkpoint", str(bad), "--data", str(rich_kaon_dir), "--out",
                    str(tmp_path / "ev"), "--overwrite", "--no-plots"]) == 2  # fmt: skip
        assert message in _one_error(capsys), how
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "ev").exists()


# ---------------------------------------------------------------- option domains, resume settings, --particle all


def test_width_and_ema_domains_are_bounded(rich_kaon_dir, capsys):
    base = ["rich-train", "--particle", "kaon", "--data", str(rich_kaon_dir)]
    assert run([*base, "--ema-decay", "1"]) == 2
    assert "--ema-decay: must be a finite number >= 0 and < 1, got 1" in _one_error(capsys)
    assert run([*base, "--critic-dim", "1000000000"]) == 2
    assert "--critic-dim: must be an integer in [1, 4096]" in _one_error(capsys)
    assert run(["train", "--preset", "tiny", "--set", "critic_hidden=1000000000"]) == 2
    assert "critic_hidden: must be an integer in [1, 4096], got 1000000000" in _one_error(capsys)


def test_resume_refuses_settings_that_differ(rich_ckpt, rich_kaon_dir, capsys):
    run_dir = rich_ckpt.parents[1]
    before = rich_ckpt.read_bytes()
    args = [
        "rich-train",
        "--particle",
        "kaon",
        "--data",
        str(rich_kaon_dir),
        "--run-dir",
        str(run_dir),
        "--resume",
    ]
    assert run([*args, "--objective", "cramer"]) == 2
    err = _one_error(capsys)
    assert "--objective: the run in" in err and "objective = 'wgan-gp'" in err and "got 'cramer'" in err
    assert run([*args, "--no-tie-patterns"]) == 2
    assert "--tie-patterns" in _one_error(capsys)
    assert rich_ckpt.read_bytes() == before


def test_ecal_resume_refuses_other_settings(tmp_path, capsys):
    run_dir = _fake_run(tmp_path / "run")
    assert run(["train", "--resume", str(run_dir), "--set", "lr_g=0.5"]) == 2
    err = _one_error(capsys)
    assert "lr_g: the run in" in err and "a resumed run keeps its settings" in err and "got 0.5" in err
    assert run(["train", "--resume", str(run_dir), "--seed", "3"]) == 2
    assert "--seed: the run in" in _one_error(capsys)


@pytest.fixture(scope="module")
def five_samples(tmp_path_factory) -> Path:
    """Tiny RICH samples of all five particles (300 tracks each)."""
    from calogan.rich import simulate as rich_sim

    out = tmp_path_factory.mktemp("rich5")
    rich_sim.write_samples(out, n=300, seed=3, progress=False)
    return out


def test_particle_all_checks_every_sample_before_training(five_samples, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(five_samples, data)
    (data / "rich_proton_train.npz").write_bytes(b"PK\x03\x04 not really a zip")
    runs = tmp_path / "runs"
    code = run(
        ["rich-train", "--particle", "all", "--data", str(data), "--run-dir", str(runs), "--preset", "tiny"]
    )
    assert code == 2 and "rich_proton_train.npz" in _one_error(capsys)
    assert not runs.exists()  # nothing trained, nothing written


def test_particle_all_reports_what_finished(five_samples, tmp_path, capsys, monkeypatch):
    from calogan.rich import train as rich_train

    def fake_train(config, overwrite=False, resume=False, requested=None):
        if config.particle == "pion":
            raise InputError("pion: something went wrong")
        folder = Path(config.run_dir)
        (folder / "checkpoints").mkdir(parents=True)
        return folder

    monkeypatch.setattr(rich_train, "train", fake_train)
    args = [
        "rich-train",
        "--particle",
        "all",
        "--data",
        str(five_samples),
        "--run-dir",
        str(tmp_path / "runs"),
    ]
    assert run([*args, "--preset", "tiny"]) == 2
    err = _one_error(capsys)
    assert "finished and kept: electron, muon; not finished: pion, kaon, proton" in err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["electron", "muon"]


def test_report_folder_of_all_particles_appears_whole_or_not_at_all(
    rich_ckpt, rich_kaon_dir, tmp_path, capsys
):
    import shutil

    import torch

    runs, data, out = tmp_path / "runs", tmp_path / "data", tmp_path / "out"
    data.mkdir()
    for particle in ("pion", "kaon"):  # the kaon model serves as both; pion is evaluated first
        (runs / particle / "checkpoints").mkdir(parents=True)
        ckpt = torch.load(rich_ckpt, weights_only=True)
        ckpt["particle"] = particle
        torch.save(ckpt, runs / particle / "checkpoints" / "last.pt")
        for sample in ("test", "transfer"):
            shutil.copy(rich_kaon_dir / f"rich_kaon_{sample}.npz", data / f"rich_{particle}_{sample}.npz")
    arrays = dict(np.load(data / "rich_kaon_transfer.npz"))
    arrays["RichDLLk"] = arrays["RichDLLk"][:10]  # a broken kaon transfer sample: found only when it is read
    np.savez(data / "rich_kaon_transfer.npz", **arrays)
    args = [
        "rich-transfer",
        "--particle",
        "all",
        "--run-dir",
        str(runs),
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    assert run([*args, "--no-plots", "--classifier-iters", "5"]) == 2
    assert "rich_kaon_transfer.npz" in _one_error(capsys)
    assert not out.exists() or not any(out.iterdir())  # not pion's reports alone, nor a staging folder
