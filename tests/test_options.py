"""The option rule and the output rule (docs/cli.md): bad options and unwritable outputs exit 2 with one line."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.runtime import atomic_write_text, one_line, run_cli, torch_load_safe
from calogan.ecal.data import load_npz, save_prediction, split_path
from calogan.metrics.scoring import score_arrays

# ---------------------------------------------------------------- validators


@pytest.mark.parametrize(
    ("factory", "text", "value"),
    [
        (options.seed, "0", 0),
        (options.seed, " 7 ", 7),
        (options.count(1), "3", 3),
        (options.count(2, 5), "5", 5),
        (options.positive_float, "1e-4", 1e-4),
        (options.nonnegative_float, "0", 0.0),
        (options.fraction, "1", 1.0),
        (options.finite_float(-1.0), "-1", -1.0),
        (options.choice("a", "b"), "b", "b"),
    ],
)
def test_validators_accept_their_domain(factory, text, value):
    assert factory(text) == value


@pytest.mark.parametrize(
    ("factory", "text", "expected"),
    [
        (options.seed, "-1", "must be an integer >= 0, got -1"),
        (options.seed, "1.5", "must be an integer >= 0, got '1.5'"),
        (options.count(1), "0", "must be an integer >= 1, got 0"),
        (options.count(2, 5), "6", "must be an integer in [2, 5], got 6"),
        (options.positive_float, "0", "must be a finite number > 0, got 0"),
        (options.positive_float, "nan", "must be a finite number > 0, got nan"),
        (options.nonnegative_float, "inf", "got inf"),
        (options.nonnegative_float, "-0.5", "got -0.5"),
        (options.fraction, "1.5", "must be a finite number >= 0 and <= 1, got 1.5"),
        (options.finite_float(), "abc", "must be a finite number, got 'abc'"),
        (options.choice("a", "b"), "c", "must be one of a, b, got 'c'"),
    ],
)
def test_validators_refuse_outside_their_domain(factory, text, expected):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        factory(text)
    assert expected in str(info.value)


def test_value_checks_name_the_field():
    assert options.check_int("steps", np.int64(3), 1) == 3
    assert options.check_float("lr", 1, 0.0, inclusive=False) == 1.0
    for call, text in (
        (lambda: options.check_int("eval_runs", 0, 1), "eval_runs: must be an integer >= 1, got 0"),
        (lambda: options.check_int("seed", True, 0), "seed: must be an integer >= 0, got True"),
        (lambda: options.check_float("lr_g", math.nan, 0.0, False), "lr_g: must be a finite number > 0"),
        (lambda: options.check_clusters(600, 500), "--clusters: must be an integer in [2, 500], got 600"),
        (lambda: options.check_clusters(1, 500), "got 1"),
    ):
        with pytest.raises(InputError) as info:
            call()
        assert text in str(info.value)


def test_parser_error_is_one_input_error_line():
    parser = options.ArgumentParser(prog="prog")
    parser.add_argument("--seed", type=options.seed, default=0)
    with pytest.raises(
        InputError, match=r"^argument --seed: must be an integer >= 0, got -1 \(see prog --help\)$"
    ):
        parser.parse_args(["--seed", "-1"])
    with pytest.raises(InputError, match="unrecognized arguments: --nope"):
        parser.parse_args(["--nope"])


def test_output_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.txt").write_text("x")
    assert (
        options.check_output_file(tmp_path / "new" / "deeper" / "f.zip", False)
        == tmp_path / "new/deeper/f.zip"
    )
    assert options.check_output_file(tmp_path / "file", True, "--json") == tmp_path / "file"
    assert options.check_output_dir(tmp_path / "dir", False, contents=["b.txt"]) == tmp_path / "dir"
    assert options.check_output_dir(tmp_path / "dir", False, contents=()) == tmp_path / "dir"
    cases = [
        (lambda: options.check_output_file(tmp_path / "file", False, "--json"), "--json", "already exists"),
        (lambda: options.check_output_file(tmp_path / "dir", True, "--out"), "--out", "is a folder"),
        (lambda: options.check_output_file(tmp_path / "file" / "x.zip", True), "--out", "is not a folder"),
        (lambda: options.check_output_dir(tmp_path / "file", True, "--plots"), "--plots", "is not a folder"),
        (lambda: options.check_output_dir(tmp_path / "dir", False), "--out", "not empty"),
        (lambda: options.check_output_dir(tmp_path / "dir", False, contents=["a.txt"]), "--out", "a.txt"),
    ]
    for call, option, text in cases:
        with pytest.raises(InputError) as info:
            call()
        assert str(info.value).startswith(option) and text in str(info.value)


def test_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a 0o555 folder is writable anyway")
        with pytest.raises(InputError, match="--out .*not writable"):
            options.check_output_file(ro / "f.zip", False, "--out")
        with pytest.raises(InputError, match="--out .*not writable"):
            options.check_output_dir(ro / "sub", False, "--out")
        with pytest.raises(InputError, match="cannot write here"):  # the writer's own guard
            atomic_write_text(ro / "f.txt", "x")
    finally:
        ro.chmod(0o755)


def test_unwritable_folders_as_root_would_see_them(tmp_path, monkeypatch):
    """The same two guards where the permission bits cannot be tested (root): os.access and the writer."""
    monkeypatch.setattr(options.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(
        InputError, match=f"^--json {tmp_path / 's.json'}: folder {tmp_path} is not writable$"
    ):
        options.check_output_file(tmp_path / "s.json", False, "--json")
    with pytest.raises(InputError, match="^--plots .*: folder is not writable$"):
        options.check_output_dir(tmp_path, True, "--plots")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("calogan.core.runtime.tempfile.mkstemp", refuse)
    with pytest.raises(InputError, match=r"f.txt: cannot write here \(Permission denied\)$"):
        atomic_write_text(tmp_path / "f.txt", "x")


def test_foreign_checkpoint_is_one_plain_line(tmp_path):
    path = tmp_path / "foreign.pt"
    path.write_bytes(
        pickle.dumps(argparse.Namespace(a=1), protocol=2)
    )  # a pickle that weights-only loading refuses
    with pytest.raises(InputError) as info:
        torch_load_safe(path)
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message and message.startswith(str(path))
    assert one_line("\x1b[1mWeights only load failed\x1b[0m.\n\nmore\x07") == "Weights only load failed."


# ---------------------------------------------------------------- commands: one line, exit 2, nothing written

CMD = {
    "simulate": "calogan.ecal.simulate",
    "train": "calogan.ecal.train",
    "predict": "calogan.ecal.predict",
    "export": "calogan.ecal.export",
    "evaluate": "calogan.metrics.evaluate",
    "embedder": "calogan.metrics.embedder",
    "finetune": "calogan.studies.finetune",
    "transfer": "calogan.studies.transfer",
    "codalab.score": "calogan.codalab.score",
    "codalab.bundle": "calogan.codalab.bundle",
    "rich.simulate": "calogan.rich.simulate",
    "rich.train": "calogan.rich.train",
    "rich.evaluate": "calogan.rich.evaluate",
    "rich.transfer": "calogan.rich.transfer",
}
CKPT = ["--checkpoint", "missing.pt"]
FT = [*CKPT, "--target", "sparsity", "--out", "ft"]
TR = ["--train-selection", "p<20", "--test-selection", "p>=20", "--out", "tr"]
RT = ["--particle", "pion", "--data", "rich"]
RE = [*CKPT, "--data", "rich", "--out", "ev"]

OPTION_CASES = [
    ("simulate", ["--seed", "-1"], "--seed"),
    ("simulate", ["--n-train", "0"], "--n-train"),
    ("train", ["--seed", "-1"], "--seed"),
    ("train", ["--steps", "0"], "--steps"),
    ("train", ["--batch-size", "0"], "--batch-size"),
    ("train", ["--set", "lr_g=nan"], "lr_g"),
    ("train", ["--set", "lr_g=-1"], "lr_g"),
    ("train", ["--set", "eval_runs=0"], "eval_runs"),
    ("train", ["--set", "eval_clusters=1"], "eval_clusters"),
    ("train", ["--preset", "tiny", "--set", "eval_clusters=201"], "eval_clusters"),
    ("train", ["--set", "max_minutes=nan"], "max_minutes"),
    ("train", ["--set", "seed=-1"], "seed"),
    ("predict", [*CKPT, "--seed", "-1"], "--seed"),
    ("predict", [*CKPT, "--batch-size", "0"], "--batch-size"),
    ("evaluate", ["pred", "--seed", "-1"], "--seed"),
    ("evaluate", ["pred", "--runs", "0"], "--runs"),
    ("evaluate", ["pred", "--clusters", "1"], "--clusters"),
    ("embedder", ["--seed", "-1"], "--seed"),
    ("embedder", ["--max-events", "0"], "--max-events"),
    ("embedder", ["--max-events", "1"], "--max-events"),
    ("embedder", ["--batch-size", "0"], "--batch-size"),
    ("finetune", [*FT, "--seed", "-1"], "--seed"),
    ("finetune", [*FT, "--steps", "0"], "--steps"),
    ("finetune", [*FT, "--weight", "nan"], "--weight"),
    ("transfer", [*TR, "--seed", "-1"], "--seed"),
    ("codalab.score", ["in", "out", "--seed", "-1"], "--seed"),
    ("codalab.score", ["in", "out", "--runs", "0"], "--runs"),
    ("codalab.score", ["in", "out", "--clusters", "1"], "--clusters"),
    ("rich.simulate", ["--out", "rich", "--seed", "-1"], "--seed"),
    ("rich.simulate", ["--out", "rich", "--n-test", "0"], "--n-test"),
    ("rich.simulate", ["--out", "rich", "--n-transfer", "-3"], "--n-transfer"),
    ("rich.train", [*RT, "--seed", "-1"], "--seed"),
    ("rich.train", [*RT, "--steps", "0"], "--steps"),
    ("rich.train", [*RT, "--batch-size", "0"], "--batch-size"),
    ("rich.train", [*RT, "--lr", "-1"], "--lr"),
    ("rich.train", [*RT, "--lr", "nan"], "--lr"),
    ("rich.train", [*RT, "--checkpoint-every", "-3"], "--checkpoint-every"),
    ("rich.train", [*RT, "--max-minutes", "nan"], "--max-minutes"),
    ("rich.evaluate", [*RE, "--seed", "-1"], "--seed"),
    ("rich.evaluate", [*RE, "--classifier-iters", "0"], "--classifier-iters"),
    ("rich.transfer", [*RE, "--seed", "-1"], "--seed"),
]


def run_refused(command, argv, capsys, where: Path) -> str:
    """Run a command in ``where``; it must exit 2 with one stderr line and leave ``where`` as it was."""
    before = sorted(p.relative_to(where) for p in where.rglob("*"))
    status = run_cli(importlib.import_module(CMD[command]).main, argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unexpected" not in lines[0], err
    assert sorted(p.relative_to(where) for p in where.rglob("*")) == before
    return lines[0]


@pytest.mark.parametrize(("command", "argv", "option"), OPTION_CASES, ids=lambda v: str(v))
def test_a_bad_option_is_one_line_and_exit_2(command, argv, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = run_refused(command, argv, capsys, tmp_path)
    assert option in line


@pytest.fixture(scope="module")
def scoring_inputs(tiny_data_dir, tmp_path_factory):
    """A val prediction (600 events), and a Codalab input folder (ref: solutions, res: predictions)."""
    root = tmp_path_factory.mktemp("scoring")
    (root / "ref").mkdir()
    (root / "res").mkdir()
    for split in ("val", "test"):
        solution = split_path(tiny_data_dir, split, "solution")
        shutil.copy(solution, root / "ref" / solution.name)
        save_prediction(split_path(root / "res", split, "prediction"), load_npz(solution).energy)
    (root / "ref" / "embedder.safetensors").write_bytes(b"never loaded: the options are refused first")
    return root


@pytest.mark.parametrize("clusters", ["601", "100000"])
def test_clusters_above_the_events_scored_exit_2_before_any_work(
    clusters, scoring_inputs, tiny_data_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    pred = split_path(scoring_inputs / "res", "val", "prediction")
    argv = [str(pred), "--solution-dir", str(tiny_data_dir), "--clusters", clusters, "--json", "s.json"]
    assert f"[2, 600], got {clusters}" in run_refused("evaluate", argv, capsys, tmp_path)
    argv = [str(scoring_inputs), str(tmp_path / "scores"), "--clusters", clusters]
    assert f"--clusters: must be an integer in [2, 600], got {clusters}" in run_refused(
        "codalab.score", argv, capsys, tmp_path
    )
    true = load_npz(split_path(tiny_data_dir, "val", "solution")).subset(np.arange(500))
    with pytest.raises(InputError, match=r"\[2, 500\], got 600"):
        score_arrays(true.energy, true, clusters=600)


def output_cases(tmp: Path):
    """(command, argv, option) for outputs that must be refused; ``tmp`` holds FILE, DIR and full folders."""
    (tmp / "FILE").write_text("x")
    (tmp / "DIR").mkdir()
    (tmp / "full").mkdir()
    for name in ("report.md", "report.json", "p.png", "transfer.json", "data_val_prediction.npz"):
        (tmp / "full" / name).write_text("x")
    return [
        ("predict", [*CKPT, "--out", "FILE"], "--out FILE"),
        ("predict", [*CKPT, "--out", "full"], "--out full"),
        ("finetune", [*CKPT, "--target", "sparsity", "--out", "FILE"], "--out FILE"),
        ("train", ["--run-dir", "FILE"], "--run-dir FILE"),
        ("train", ["--run-dir", "FILE/run"], "--run-dir FILE/run"),
        ("rich.train", ["--particle", "pion", "--data", "rich", "--run-dir", "FILE"], "--run-dir FILE"),
        ("evaluate", ["pred", "--plots", "FILE"], "--plots FILE"),
        ("evaluate", ["pred", "--plots", "full"], "--plots full"),
        ("evaluate", ["pred", "--json", "DIR"], "--json DIR"),
        ("evaluate", ["pred", "--json", "FILE"], "--json FILE"),
        ("codalab.bundle", ["--out", "DIR"], "--out DIR"),
        ("codalab.bundle", ["--out", "FILE"], "--out FILE"),
        ("codalab.bundle", ["--out", "FILE/x.zip"], "--out FILE/x.zip"),
        ("codalab.score", ["in", "FILE"], "OUTPUT_DIR FILE"),
        ("export", [*CKPT, "--out", "DIR"], "--out DIR"),
        ("export", [*CKPT, "--out", "FILE"], "--out FILE"),
        ("embedder", ["--out", "DIR"], "--out DIR"),
        ("embedder", ["--out", "FILE"], "--out FILE"),
        ("simulate", ["--out", "FILE"], "--out FILE"),
        ("rich.simulate", ["--out", "FILE"], "--out FILE"),
        ("rich.evaluate", [*CKPT, "--data", "rich", "--out", "FILE"], "--out FILE"),
        ("rich.evaluate", [*CKPT, "--data", "rich", "--out", "full"], "--out full"),
        ("rich.transfer", [*CKPT, "--data", "rich", "--out", "full"], "--out full"),
        ("transfer", [*TR[:-1], "full"], "--out full"),
    ]


def test_unwritable_outputs_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for command, argv, named in output_cases(tmp_path):
        assert named in run_refused(command, argv, capsys, tmp_path), (command, argv)


def test_outputs_into_a_read_only_folder_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a 0o555 folder is writable anyway")
        for command, argv in (
            ("predict", [*CKPT, "--out", "ro/pred"]),
            ("evaluate", ["pred", "--json", "ro/s.json"]),
            ("codalab.bundle", ["--out", "ro/b.zip"]),
            ("rich.train", ["--particle", "pion", "--data", "rich", "--run-dir", "ro/run"]),
        ):
            assert "not writable" in run_refused(command, argv, capsys, tmp_path)
    finally:
        ro.chmod(0o755)


def test_a_foreign_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("foreign.pt").write_bytes(pickle.dumps(argparse.Namespace(a=1), protocol=2))
    line = run_refused("export", ["--checkpoint", "foreign.pt", "--out", "g.pt"], capsys, tmp_path)
    assert "foreign.pt" in line and "\x1b" not in line
