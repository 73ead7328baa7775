"""Submission zips: results zip built and validated, --check refuses bad zips, code submission runs clean."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from test_predict import StandInGenerator, save_small_checkpoint, write_fake_data

from calogan.core.errors import InputError
from calogan.core.runtime import run_cli
from calogan.ecal.data import split_path
from calogan.ecal.predict import predict_with_generator
from calogan.submission.package import (
    PREDICTION_NAMES,
    build_code_zip_from_generator,
    build_results_zip,
    check_zip,
    default_zip_name,
    main,
)

N_VAL, N_TEST = 150, 130


@pytest.fixture(scope="module")
def standin():
    torch.manual_seed(0)
    return StandInGenerator().eval()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, standin):
    """Fake data files plus prediction files made by the stand-in generator."""
    root = tmp_path_factory.mktemp("package")
    data_dir = write_fake_data(root / "data", N_VAL, N_TEST)
    predict_with_generator(standin, data_dir, root / "pred", seed=1, progress=False)
    return root, data_dir, root / "pred"


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def make_zip(path, entries: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
    return path


def good_entries(workspace) -> dict[str, bytes]:
    _, _, pred = workspace
    return {name: (pred / name).read_bytes() for name in PREDICTION_NAMES}


def test_results_zip_roundtrip(workspace, tmp_path):
    _, data_dir, pred = workspace
    out, reports = build_results_zip(pred, data_dir, tmp_path / "sub.zip")
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(PREDICTION_NAMES)
        for name in PREDICTION_NAMES:
            assert zf.read(name) == (pred / name).read_bytes()  # canonical files zipped byte for byte
    assert [r.n for r in reports] == [N_VAL, N_TEST] and all(len(r.sha256) == 64 for r in reports)
    checked, images = check_zip(out, data_dir)
    assert [r.n for r in checked] == [N_VAL, N_TEST] and not any(r.warnings for r in checked)
    assert images["val"].shape == (N_VAL, 30, 30)
    assert list(tmp_path.iterdir()) == [out]  # no temp files left
    with pytest.raises(InputError, match="already exists"):
        build_results_zip(pred, data_dir, out)


def test_results_zip_converts_flat_float64(workspace, tmp_path):
    _, data_dir, pred = workspace
    src = tmp_path / "flat"
    src.mkdir()
    for name, n in zip(PREDICTION_NAMES, (N_VAL, N_TEST)):
        images = np.load(pred / name)["EnergyDeposit"]
        np.savez(src / name, EnergyDeposit=images.reshape(n, 900).astype(np.float64))
    out, reports = build_results_zip(src, data_dir, tmp_path / "sub.zip")
    assert all("converted" in r.warnings[0] for r in reports)
    checked, images = check_zip(out, data_dir)
    assert images["test"].dtype == np.float32 and not any(r.warnings for r in checked)
    np.testing.assert_array_equal(images["val"], np.load(pred / PREDICTION_NAMES[0])["EnergyDeposit"])


@pytest.mark.parametrize(
    ("problem", "message"),
    [("wrong_n", "expected 150"), ("nan", "NaN"), ("negative", "negative"), ("missing", "file not found")],
)
def test_build_refuses_bad_predictions_and_leaves_no_zip(workspace, tmp_path, problem, message):
    _, data_dir, pred = workspace
    src = tmp_path / "bad"
    src.mkdir()
    images = np.load(pred / PREDICTION_NAMES[0])["EnergyDeposit"]
    if problem == "wrong_n":
        images = images[:-1]
    elif problem == "nan":
        images[3, 4, 5] = np.nan
    elif problem == "negative":
        images[0, 0, 0] = -1.0
    if problem != "missing":
        np.savez(src / PREDICTION_NAMES[0], EnergyDeposit=images)
    (src / PREDICTION_NAMES[1]).write_bytes((pred / PREDICTION_NAMES[1]).read_bytes())
    out_dir = tmp_path / "subs"
    out_dir.mkdir()
    with pytest.raises(InputError, match=message):
        build_results_zip(src, data_dir, out_dir / "x.zip")
    assert list(out_dir.iterdir()) == []


def bad_zip_cases(workspace) -> dict[str, tuple[dict[str, bytes], str]]:
    good = good_entries(workspace)
    val, test = PREDICTION_NAMES
    images = np.load(workspace[2] / val)["EnergyDeposit"]
    nan, neg = images.copy(), images.copy()
    nan[1, 2, 3] = np.nan
    neg[1, 2, 3] = -0.5
    obj = io.BytesIO()
    np.savez(obj, EnergyDeposit=np.array([images[0], "x"], dtype=object))
    return {
        "missing": ({val: good[val]}, "missing data_test_prediction.npz"),
        "extra": ({**good, "notes.txt": b"hi"}, "extra file"),
        "nested": ({f"sub/{val}": good[val], f"sub/{test}": good[test]}, "inside a folder"),
        "wrong_n": ({val: npz_bytes(EnergyDeposit=images[:10]), test: good[test]}, "expected 150"),
        "wrong_shape": ({val: npz_bytes(EnergyDeposit=images[:, :29]), test: good[test]}, "shape"),
        "wrong_key": ({val: npz_bytes(Energy=images), test: good[test]}, "missing key 'EnergyDeposit'"),
        "nan": ({val: npz_bytes(EnergyDeposit=nan), test: good[test]}, "NaN"),
        "negative": ({val: npz_bytes(EnergyDeposit=neg), test: good[test]}, "negative"),
        "pickled": ({val: obj.getvalue(), test: good[test]}, "pickled"),
        "corrupt": ({val: good[val][:1000], test: good[test]}, "not a readable npz"),
    }


def test_check_refuses_bad_zips(workspace, tmp_path):
    _, data_dir, _ = workspace
    for case, (entries, message) in bad_zip_cases(workspace).items():
        path = make_zip(tmp_path / f"{case}.zip", entries)
        with pytest.raises(InputError, match=message) as info:
            check_zip(path, data_dir)
        assert str(path) in str(info.value) and "\n" not in str(info.value), case
    not_zip = tmp_path / "plain.zip"
    not_zip.write_bytes(b"hello")
    with pytest.raises(InputError, match="not a zip"):
        check_zip(not_zip, data_dir)


def run_module(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_package_cli_check_and_exit_codes(workspace, tmp_path, capsys):
    _, data_dir, pred = workspace
    out = tmp_path / "s.zip"
    build = ["--predictions", str(pred), "--data", str(data_dir), "--out", str(out), "--no-score"]
    assert run_cli(main, build) == 0
    text = capsys.readouterr().out
    assert "sha256" in text and "N=150" in text
    assert run_cli(main, ["--check", str(out), "--data", str(data_dir), "--no-score"]) == 0
    assert "OK" in capsys.readouterr().out
    assert run_cli(main, build) == 2
    assert "already exists" in capsys.readouterr().err
    entries, _ = bad_zip_cases(workspace)["nested"]
    bad = make_zip(tmp_path / "nested.zip", entries)
    assert run_cli(main, ["--check", str(bad), "--data", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nested.zip" in err and "Traceback" not in err
    assert (
        run_cli(main, ["--predictions", str(pred), "--kind", "code", "--out", str(tmp_path / "c.zip")]) == 2
    )
    assert "needs --checkpoint" in capsys.readouterr().err


def test_package_from_checkpoint_results_and_code(workspace, tmp_path, capsys):
    """One command from a checkpoint: results zip (predicts first) and code zip, both validated."""
    _, data_dir, _ = workspace
    ckpt = save_small_checkpoint(tmp_path / "runs" / "myrun" / "checkpoints" / "best.pt")
    out = tmp_path / "r.zip"
    assert run_cli(main, ["--checkpoint", str(ckpt), "--data", str(data_dir), "--out", str(out)]) == 0
    assert "valid results submission" in capsys.readouterr().out
    reports, _ = check_zip(out, data_dir)
    assert [r.n for r in reports] == [N_VAL, N_TEST]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zip", "runs"]  # staging folder removed
    code = tmp_path / "c.zip"
    assert run_cli(main, ["--checkpoint", str(ckpt), "--kind", "code", "--out", str(code)]) == 0
    with zipfile.ZipFile(code) as zf:
        assert json.loads(zf.read("generator.json"))["noise_dim"] == 8 + 900
    assert default_zip_name(ckpt, "results").name.startswith("myrun-")


def test_code_submission_runs_without_calogan(workspace, standin, tmp_path):
    """Unzip the code submission into an empty folder and run it with calogan unimportable."""
    root, data_dir, pred = workspace
    out, config = build_code_zip_from_generator(standin, tmp_path / "code.zip", seed=1, batch_size=64)
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(["solution.py", "generator.pt", "generator.json", "metadata"])
        metadata = zf.read("metadata").decode()
        program = tmp_path / "program"
        zf.extractall(program)
    assert metadata.startswith("command: python3 $program/solution.py $input $output")
    assert "calogan" not in "".join(
        line
        for line in (program / "solution.py").read_text().splitlines()
        if line.startswith(("import", "from"))
    )
    inputs = tmp_path / "input"
    inputs.mkdir()
    for split in ("val", "test"):
        (inputs / f"data_{split}.npz").write_bytes(split_path(data_dir, split).read_bytes())
    block = (
        "import sys, runpy; sys.modules['calogan'] = None; "
        f"sys.argv = ['solution.py', {str(inputs)!r}, {str(tmp_path / 'output')!r}]; "
        f"runpy.run_path({str(program / 'solution.py')!r}, run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=program, env=env)
    assert proc.returncode == 0, proc.stderr
    for name, n in zip(PREDICTION_NAMES, (N_VAL, N_TEST)):
        got = np.load(tmp_path / "output" / name, allow_pickle=False)["EnergyDeposit"]
        want = np.load(pred / name)["EnergyDeposit"]  # calogan.ecal.predict with the same seed
        assert got.shape == (n, 30, 30) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * want.max())
    # the outputs form a valid results zip
    make_zip(tmp_path / "r.zip", {n: (tmp_path / "output" / n).read_bytes() for n in PREDICTION_NAMES})
    check_zip(tmp_path / "r.zip", data_dir)


def test_package_trained_checkpoint_with_local_score(tiny_data_dir, tiny_checkpoint, tmp_path, capsys):
    """checkpoint of calogan.ecal.train -> validated results zip + local score (physics-only without an embedder)."""
    out = tmp_path / "s.zip"
    argv = ["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data_dir), "--out", str(out)]
    assert main([*argv, "--score-runs", "1", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    for split in ("val", "test"):
        assert f"local score [{split}]: score=" in text
    score = float(text.split("local score [val]: score=")[1].split()[0])
    assert 0.0 <= score <= 1.0
    reports, images = check_zip(out, tiny_data_dir)
    assert [r.n for r in reports] == [600, 600]
    assert all(np.isfinite(v).all() and (v >= 0).all() for v in images.values())
