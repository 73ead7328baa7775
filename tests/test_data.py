"""calogan.ecal.data: validated loading of competition files, bad input → InputError naming the file, atomic saves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calogan.core.errors import InputError
from calogan.core.runtime import run_cli
from calogan.ecal.data import (
    KEY_ENERGY,
    KEY_MOMENTUM,
    KEY_PDG,
    KEY_POINT,
    CaloData,
    ConditionNormalizer,
    load_npz,
    load_prediction,
    save_npz,
    save_prediction,
)

N = 12


def _good_arrays(n: int = N, flat: bool = False) -> dict[str, np.ndarray]:
    """A small valid train-file dictionary."""
    rng = np.random.default_rng(0)
    momentum = rng.normal(0, 2, (n, 3)).astype(np.float32)
    momentum[:, 2] = rng.uniform(1, 50, n)
    energy = rng.exponential(1.0, (n, 900) if flat else (n, 30, 30)).astype(np.float32)
    return {
        KEY_POINT: rng.normal(0, 2.7, (n, 3)).astype(np.float32),
        KEY_MOMENTUM: momentum,
        KEY_PDG: np.where(np.arange(n) % 2 == 0, 11.0, 22.0).astype(np.float32),
        KEY_ENERGY: energy,
    }


def _write(tmp_path: Path, name: str, arrays: dict[str, np.ndarray]) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_valid_file_round_trip(tmp_path):
    arrays = _good_arrays()
    data = load_npz(_write(tmp_path, "good.npz", arrays), require_energy=True)
    assert len(data) == N and data.energy.shape == (N, 30, 30) and data.energy.dtype == np.float32
    assert data.pdg.dtype == np.int64 and set(data.pdg) == {11, 22}
    np.testing.assert_array_equal(data.energy, arrays[KEY_ENERGY])
    cond = data.conditions()
    assert cond.shape == (N, 6) and cond.dtype == np.float32
    np.testing.assert_array_equal(cond[:, 5], (data.pdg == 22).astype(np.float32))
    save_npz(tmp_path / "again.npz", data.to_arrays())
    again = load_npz(tmp_path / "again.npz", require_energy=True)
    np.testing.assert_array_equal(again.energy, data.energy)
    np.testing.assert_array_equal(again.momentum, data.momentum)


def test_flat_images_accepted_as_30x30(tmp_path):
    arrays = _good_arrays(flat=True)
    data = load_npz(_write(tmp_path, "flat.npz", arrays), require_energy=True)
    assert data.energy.shape == (N, 30, 30)
    np.testing.assert_array_equal(data.energy.reshape(N, 900), arrays[KEY_ENERGY])
    pred = _write(tmp_path, "pred.npz", {KEY_ENERGY: arrays[KEY_ENERGY]})
    assert load_prediction(pred, n_expected=N).shape == (N, 30, 30)


def test_conditions_only_file_and_integer_pdg(tmp_path):
    arrays = _good_arrays()
    del arrays[KEY_ENERGY]
    arrays[KEY_PDG] = arrays[KEY_PDG].astype(np.int32)
    data = load_npz(_write(tmp_path, "val.npz", arrays))
    assert data.energy is None and set(data.pdg) == {11, 22}
    with pytest.raises(InputError, match="val.npz.*EnergyDeposit"):
        load_npz(tmp_path / "val.npz", require_energy=True)


def _mutations():
    """(name, function turning a good array dict into a bad one, expected message fragment)."""

    def drop(key):
        return lambda a: {k: v for k, v in a.items() if k != key}

    def setitem(key, fn):
        def mutate(a):
            a = dict(a)
            a[key] = fn(a[key])
            return a

        return mutate

    def nan_energy(e):
        e = e.copy()
        e[3, 4, 5] = np.nan
        return e

    def inf_momentum(m):
        m = m.copy()
        m[0, 0] = np.inf
        return m

    def zero_pz(m):
        m = m.copy()
        m[2, 2] = 0.0
        return m

    def rename(a):
        a = dict(a)
        a["Momentum"] = a.pop(KEY_MOMENTUM)
        return a

    return [
        ("missing_point", drop(KEY_POINT), KEY_POINT),
        ("wrong_key_name", rename, KEY_MOMENTUM),
        ("energy_shape", setitem(KEY_ENERGY, lambda e: e.reshape(N, 30, 30)[:, :29, :]), "shape"),
        ("momentum_shape", setitem(KEY_MOMENTUM, lambda m: m[:, :2]), "shape"),
        ("point_1d", setitem(KEY_POINT, lambda p: p[:, 0]), "shape"),
        ("nan_energy", setitem(KEY_ENERGY, nan_energy), "NaN"),
        ("inf_momentum", setitem(KEY_MOMENTUM, inf_momentum), "NaN/Inf"),
        ("mismatched_n", setitem(KEY_ENERGY, lambda e: e[:-2]), "events"),
        ("mismatched_pdg_n", setitem(KEY_PDG, lambda p: p[:-1]), "shape"),
        ("pz_not_positive", setitem(KEY_MOMENTUM, zero_pz), "pz"),
        ("bad_pdg", setitem(KEY_PDG, lambda p: np.where(np.arange(N) == 1, 13.0, p)), "11/22"),
        ("negative_energy", setitem(KEY_ENERGY, lambda e: -e), "negative"),
        ("string_array", setitem(KEY_PDG, lambda p: p.astype(str)), "non-numeric"),
        ("empty", lambda a: {k: v[:0] for k, v in a.items()}, "no events"),
    ]


@pytest.mark.parametrize("name,mutate,fragment", _mutations(), ids=[m[0] for m in _mutations()])
def test_bad_content_raises_input_error_naming_file(tmp_path, name, mutate, fragment):
    path = _write(tmp_path, f"{name}.npz", mutate(_good_arrays()))
    with pytest.raises(InputError) as info:
        load_npz(path, require_energy=True)
    message = str(info.value)
    assert str(path) in message and fragment in message
    assert "\n" not in message


def _bad_files(tmp_path: Path) -> list[tuple[Path, str]]:
    """Files that are not loadable npz archives at all, with an expected message fragment."""
    good = _write(tmp_path, "good.npz", _good_arrays())
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.npz"
    text.write_text("EnergyDeposit,ParticlePoint\n1,2\n")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((3, 900), np.float32))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **_good_arrays(), Extra=np.array([{"a": 1}, None], dtype=object))
    object_energy = tmp_path / "object_energy.npz"
    arrays = _good_arrays()
    arrays[KEY_ENERGY] = np.array(list(arrays[KEY_ENERGY]) + [None], dtype=object)
    np.savez(object_energy, **arrays)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    return [
        (tmp_path / "missing.npz", "not found"),
        (tmp_path, "directory"),
        (truncated, "npz"),
        (text, "npz"),
        (single, "npz"),
        (pickled, "pickle"),
        (object_energy, "pickle"),
        (empty, "npz"),
    ]


def test_unreadable_files_raise_input_error(tmp_path):
    for path, fragment in _bad_files(tmp_path):
        with pytest.raises(InputError) as info:
            load_npz(path, require_energy=True)
        assert str(path) in str(info.value) and fragment in str(info.value), (path, str(info.value))
        with pytest.raises(InputError):
            load_prediction(path)


def test_prediction_validation(tmp_path):
    images = np.random.default_rng(1).exponential(1.0, (N, 30, 30)).astype(np.float32)
    with pytest.raises(InputError, match="expected 10"):
        load_prediction(_write(tmp_path, "p1.npz", {KEY_ENERGY: images}), n_expected=10)
    with pytest.raises(InputError, match="missing key"):
        load_prediction(_write(tmp_path, "p2.npz", {"Energy": images}))
    bad = images.copy()
    bad[0, 0, 0] = -1.0
    with pytest.raises(InputError, match="negative"):
        load_prediction(_write(tmp_path, "p3.npz", {KEY_ENERGY: bad}))
    for value in (np.nan, np.inf):
        bad = images.copy()
        bad[1, 2, 3] = value
        with pytest.raises(InputError, match="NaN"):
            load_prediction(_write(tmp_path, "p4.npz", {KEY_ENERGY: bad}))
        with pytest.raises(InputError, match="NaN"):
            save_prediction(tmp_path / "out.npz", bad)
    assert not (tmp_path / "out.npz").exists()


def test_atomic_save_leaves_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "data_train.npz"
    save_npz(target, _good_arrays())
    original = target.read_bytes()
    with pytest.raises(InputError):
        save_npz(target, {"x": np.array([None, 1], dtype=object)})

    def broken_savez(handle, **arrays):
        handle.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError):  # fails while writing: the old file stays untouched
        save_npz(target, _good_arrays())
    assert target.read_bytes() == original
    assert sorted(p.name for p in target.parent.iterdir()) == ["data_train.npz"]


def test_condition_normalizer_round_trip():
    arrays = _good_arrays()
    data = CaloData(point=arrays[KEY_POINT], momentum=arrays[KEY_MOMENTUM], pdg=np.full(N, 11))
    cond = data.conditions()
    norm = ConditionNormalizer.fit(cond)
    z = norm.transform(cond)
    np.testing.assert_allclose(z[:, :5].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, :5].std(axis=0), 1, atol=1e-4)
    np.testing.assert_array_equal(z[:, 5], cond[:, 5])
    again = ConditionNormalizer.from_dict(norm.to_dict()).transform(cond)
    np.testing.assert_array_equal(again, z)


# ----------------------------------------------------------------------------- CLI level


def _load_main(argv):
    """A minimal CLI in the project's style: load the file named on the command line."""
    load_npz(argv[0], require_energy=True)


def test_run_cli_turns_bad_files_into_exit_2(tmp_path, capsys):
    for path, _ in _bad_files(tmp_path):
        assert run_cli(_load_main, [str(path)]) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in err


CLI_SCRIPT = "import sys; from calogan.core.runtime import run_cli; from calogan.ecal.data import load_npz; "
CLI_SCRIPT += "raise SystemExit(run_cli(lambda argv: load_npz(argv[0], require_energy=True), sys.argv[1:]))"


def test_cli_subprocess_one_line_no_traceback(tmp_path):
    arrays = _good_arrays()
    arrays[KEY_ENERGY][0, 0, 0] = np.nan
    nan_file = _write(tmp_path, "nan.npz", arrays)
    for path in (nan_file, tmp_path / "absent.npz"):
        proc = subprocess.run(
            [sys.executable, "-c", CLI_SCRIPT, str(path)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in proc.stderr
    good = _write(tmp_path, "good.npz", _good_arrays())
    proc = subprocess.run(
        [sys.executable, "-c", CLI_SCRIPT, str(good)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stderr == ""


def test_simulate_cli_on_bad_option_writes_nothing(tmp_path):
    out = tmp_path / "d"
    cmd = [sys.executable, "-m", "calogan.simulate", "--out", str(out), "--n-train", "-1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--n-train" in proc.stderr
    assert not out.exists()
