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
from calogan.ecal.data import load_npz, load_prediction, split_path
from calogan.ecal.physics import physical_statistics
from calogan.ecal.predict import predict_with_generator
from calogan.metrics.scoring import score_arrays
from calogan.submission.package import (
    PREDICTION_NAMES,
    build_code_zip_from_generator,
    build_results_zip,
    check_zip,
    default_zip_name,
    main,
    needs_rounding,
    round_mantissa,
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
    out, reports = build_results_zip(pred, data_dir, tmp_path / "sub.zip", mantissa_bits=23)
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


def low_bits(values: np.ndarray, bits: int) -> np.ndarray:
    return values.view(np.uint32) & np.uint32((1 << (23 - bits)) - 1)


def test_round_mantissa_precision_and_edge_cases():
    rng = np.random.default_rng(0)
    x = rng.lognormal(-2.0, 4.0, 20_000).astype(np.float32)  # ~1e-12 .. 1e5
    tiny, big = np.finfo(np.float32).tiny, np.finfo(np.float32).max
    x[:5] = [0.0, 1e-45, tiny, 1.0, np.nextafter(np.float32(2.0), np.float32(0.0))]
    x[-1] = big  # rounds past the largest float32: clamped
    normal = x >= tiny
    for bits in (1, 7, 10, 22):
        r = round_mantissa(x, bits)
        assert r.dtype == np.float32 and r.shape == x.shape and r is not x
        assert not low_bits(r, bits).any() and not needs_rounding(r, bits) and needs_rounding(x, bits)
        assert np.isfinite(r).all() and (r >= 0).all() and r[0] == 0.0 and r[3] == 1.0 and r[4] == 2.0
        rel = np.abs(r[normal].astype(np.float64) - x[normal]) / x[normal]
        assert rel[:-1].max() <= 2.0 ** -(bits + 1) and 0 < rel[-1] < 2.0**-bits
        np.testing.assert_array_equal(round_mantissa(r, bits), r)  # idempotent
        np.testing.assert_array_equal(round_mantissa(-x, bits), -r)  # signs kept, magnitudes rounded alike
    # round to nearest: float16's rounding wherever float16 is normal, except exact ties (float16 picks even)
    in_f16 = (x > 6.2e-5) & (x < 6.0e4) & (low_bits(x, 10) != 1 << 12)
    np.testing.assert_array_equal(
        round_mantissa(x, 10)[in_f16], x[in_f16].astype(np.float16).astype(np.float32)
    )
    np.testing.assert_array_equal(round_mantissa(x, 23), x)
    images = x[:9000].reshape(10, 30, 30).copy()
    assert round_mantissa(images, 10, inplace=True) is images and not low_bits(images, 10).any()
    for bad in (0, 24):
        with pytest.raises(InputError, match="--mantissa-bits"):
            round_mantissa(x, bad)
    with pytest.raises(ValueError, match="NaN"):
        round_mantissa(np.array([1.0, np.nan], np.float32), 10)


def test_rounded_results_zip_reads_like_the_scorer(workspace, tmp_path):
    """Default zip: float32 (N, 30, 30) rounded to 10 mantissa bits, as np.load and load_prediction read it."""
    _, data_dir, pred = workspace
    out, reports = build_results_zip(pred, data_dir, tmp_path / "sub.zip")
    exact, _ = build_results_zip(pred, data_dir, tmp_path / "exact.zip", mantissa_bits=23)
    assert all(len(r.warnings) == 1 and "rounded to 10 bits" in r.warnings[0] for r in reports)
    assert out.stat().st_size < 0.8 * exact.stat().st_size
    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path / "res")
    for name, n in zip(PREDICTION_NAMES, (N_VAL, N_TEST)):
        path = tmp_path / "res" / name
        with np.load(path, allow_pickle=False) as npz:  # how the scoring program reads it
            assert npz.files == ["EnergyDeposit"]
            got = npz["EnergyDeposit"]
        assert got.dtype == np.float32 and got.shape == (n, 30, 30)
        np.testing.assert_array_equal(load_prediction(path, n), got)
        want = np.load(pred / name)["EnergyDeposit"]
        assert np.array_equal(got == 0, want == 0) and np.isfinite(got).all() and (got >= 0).all()
        np.testing.assert_allclose(got, want, rtol=2.0**-11, atol=0)
        assert not low_bits(got, 10).any()
    checked, images = check_zip(out, data_dir)
    assert not any(r.warnings for r in checked) and images["val"].dtype == np.float32
    # already rounded files are zipped byte for byte
    again, again_reports = build_results_zip(tmp_path / "res", data_dir, tmp_path / "again.zip")
    with zipfile.ZipFile(again) as zf:
        assert all(zf.read(n) == (tmp_path / "res" / n).read_bytes() for n in PREDICTION_NAMES)
    assert not any(r.warnings for r in again_reports)


def test_rounding_keeps_physical_statistics_and_score(tiny_data_dir):
    """10 mantissa bits change the 24 statistics by < 1e-3 and the physics score by less than its spread."""
    true = load_npz(split_path(tiny_data_dir, "val", "solution"), require_energy=True)
    rng = np.random.default_rng(5)
    noise = rng.lognormal(0.0, 0.5, true.energy.shape) * rng.lognormal(0.0, 0.3, (len(true), 1, 1))
    pred = (np.swapaxes(true.energy, 1, 2) * noise).astype(np.float32)  # a clearly imperfect prediction
    rounded = round_mantissa(pred, 10)
    exact = physical_statistics(pred, true.point, true.momentum)
    approx = physical_statistics(rounded, true.point, true.momentum)
    np.testing.assert_allclose(approx[:, :2], exact[:, :2], rtol=0, atol=1e-3)  # asymmetries lie in [-1, 1]
    np.testing.assert_allclose(approx[:, 2:4], exact[:, 2:4], rtol=1e-3, atol=1e-9)  # widths
    flipped = np.rint(np.abs(approx[:, 4:] - exact[:, 4:]) * 900)  # cells that crossed a sparsity threshold
    assert flipped.max() <= 3 and flipped.sum() <= 1e-4 * flipped.size * 900
    kwargs = dict(clusters=20, runs=5, ceiling=False, standardised=False)
    score = score_arrays(pred, true, None, **kwargs)
    score_rounded = score_arrays(rounded, true, None, **kwargs)
    assert 0.3 < score["score"] < 0.9  # (0.63 ± 0.03 when written)
    assert abs(score_rounded["score"] - score["score"]) <= score["score_std"]


def test_results_zip_converts_flat_float64(workspace, tmp_path):
    _, data_dir, pred = workspace
    src = tmp_path / "flat"
    src.mkdir()
    for name, n in zip(PREDICTION_NAMES, (N_VAL, N_TEST)):
        images = np.load(pred / name)["EnergyDeposit"]
        np.savez(src / name, EnergyDeposit=images.reshape(n, 900).astype(np.float64))
    out, reports = build_results_zip(src, data_dir, tmp_path / "sub.zip")
    assert all("converted" in r.warnings[0] and "rounded to 10 bits" in r.warnings[1] for r in reports)
    checked, images = check_zip(out, data_dir)
    assert images["test"].dtype == np.float32 and not any(r.warnings for r in checked)
    original = np.load(pred / PREDICTION_NAMES[0])["EnergyDeposit"]
    np.testing.assert_array_equal(images["val"], round_mantissa(original, 10))
    exact, _ = build_results_zip(src, data_dir, tmp_path / "exact.zip", mantissa_bits=23)
    np.testing.assert_array_equal(check_zip(exact, data_dir)[1]["val"], original)


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
    with pytest.raises(InputError, match="not a readable zip"):
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


def test_package_cli_mantissa_bits(workspace, tmp_path, capsys):
    _, data_dir, pred = workspace
    base = ["--predictions", str(pred), "--data", str(data_dir), "--no-score"]
    for bits in ("0", "24"):
        assert run_cli(main, [*base, "--out", str(tmp_path / "bad.zip"), "--mantissa-bits", bits]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--mantissa-bits" in err and bits in err
    assert run_cli(main, ["--check", str(tmp_path / "x.zip"), "--mantissa-bits", "10"]) == 2
    assert "applies only" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    sizes = {}
    for bits in ("10", "23"):
        out = tmp_path / f"b{bits}.zip"
        assert run_cli(main, [*base, "--out", str(out), "--mantissa-bits", bits]) == 0
        assert ("rounded to 10 bits" in capsys.readouterr().out) == (bits == "10")
        assert run_cli(main, ["--check", str(out), "--data", str(data_dir), "--no-score"]) == 0
        assert "OK: valid results submission" in capsys.readouterr().out
        sizes[bits] = out.stat().st_size
    assert sizes["10"] < sizes["23"]


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
