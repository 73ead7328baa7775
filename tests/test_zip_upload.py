"""Submission zips read as untrusted uploads: duplicates, huge declared sizes, zip bombs, paths, symlinks."""

from __future__ import annotations

import io
import shutil
import struct
import tempfile
import time
import zipfile

import numpy as np
import pytest

from calogan.codalab.score import main as score_main
from calogan.core import safezip
from calogan.core.errors import InputError
from calogan.core.runtime import run_cli
from calogan.core.safezip import check_upload, extract_upload
from calogan.ecal.data import prediction_bytes_limit, split_path
from calogan.metrics.inputs import check_prediction_file, read_upload_zip
from calogan.submission.package import PREDICTION_NAMES, check_zip
from calogan.submission.package import main as package_main

VAL, TEST = PREDICTION_NAMES
N = 600  # events per split of the tiny data set (tests/conftest.py)


def npz_bytes(images: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, EnergyDeposit=images)
    return buf.getvalue()


@pytest.fixture(scope="module")
def good() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {name: npz_bytes(rng.gamma(0.5, 2.0, (N, 30, 30)).astype(np.float32)) for name in PREDICTION_NAMES}


def write_zip(path, entries) -> str:
    """entries: (name, bytes) pairs, written in order (duplicates allowed)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries:
            info = name if isinstance(name, zipfile.ZipInfo) else zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, content)
    return path


def test_a_normal_zip_is_accepted(good, tiny_data_dir, tmp_path):
    path = write_zip(tmp_path / "ok.zip", good.items())
    infos = check_upload(path, PREDICTION_NAMES, prediction_bytes_limit(N))
    assert sorted(i.filename for i in infos) == sorted(PREDICTION_NAMES)
    reports, images = check_zip(path, tiny_data_dir)
    assert [r.n for r in reports] == [N, N] and images["val"].shape == (N, 30, 30)
    out = tmp_path / "out"
    out.mkdir()
    files = read_upload_zip(path, ["val", "test"], out, {"val": N, "test": N})
    assert files["val"].read_bytes() == good[VAL]


def test_duplicate_names_are_refused(good, tiny_data_dir, tmp_path, capsys):
    """Two data_val_prediction.npz entries, the first with NaN: refused, never silently read."""
    nan = np.ones((N, 30, 30), np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = write_zip(tmp_path / "dup.zip", [(VAL, npz_bytes(nan)), (VAL, good[VAL]), (TEST, good[TEST])])
    with pytest.raises(InputError, match="duplicate entry 'data_val_prediction.npz'") as info:
        check_zip(path, tiny_data_dir)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert run_cli(package_main, ["--check", str(path), "--data", str(tiny_data_dir)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "duplicate entry" in err


def patch_uncompressed_size(path, name: str, size: int) -> None:
    """Rewrite the uncompressed size of ``name`` in its local header and central-directory entry."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info, start_dir = zf.getinfo(name), zf.start_dir
    local = info.header_offset
    assert data[local : local + 4] == b"PK\x03\x04"
    struct.pack_into("<I", data, local + 22, size)
    central = data.find(b"PK\x01\x02", start_dir)
    while central >= 0:
        name_len = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46 : central + 46 + name_len] == name.encode():
            struct.pack_into("<I", data, central + 24, size)
            break
        central = data.find(b"PK\x01\x02", central + 4)
    assert central >= 0
    path.write_bytes(bytes(data))


def test_a_header_declaring_4_gib_is_refused(good, tiny_data_dir, tmp_path):
    path = write_zip(tmp_path / "huge.zip", good.items())
    patch_uncompressed_size(path, VAL, 0xFFFF0000)  # ~4 GiB
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo(VAL).file_size == 0xFFFF0000
    for data_dir in (tiny_data_dir, None):  # N known (600 events) or not (1 GiB)
        with pytest.raises(InputError, match=r"declares 4\.0 GiB uncompressed"):
            check_zip(path, data_dir)


def test_a_lying_header_is_caught_while_streaming(good, tmp_path):
    """A header that declares fewer bytes than the data holds: zipfile's CRC check refuses it, nothing leaks."""
    path = write_zip(tmp_path / "small.zip", good.items())
    patch_uncompressed_size(path, VAL, 1000)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="small.zip"):
        read_upload_zip(path, ["val"], out)
    assert list(out.iterdir()) == []


@pytest.fixture(scope="module")
def bomb(good, tmp_path_factory):
    """data_val_prediction.npz: 1 GiB of zeros, deflated by a streamed writer to ~1 MB."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    chunk = bytes(1 << 24)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(VAL)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as dst:
            for _ in range(64):
                dst.write(chunk)
        zf.writestr(TEST, good[TEST])
    assert path.stat().st_size < 8 << 20
    return path


def test_a_zip_bomb_is_refused_fast_without_extracting(bomb, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # scratch_dir() lives here
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile,
        "open",
        lambda self, name, *a, **k: opened.append(name) or real_open(self, name, *a, **k),
    )
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"expands \d+:1.*zip bomb") as info:
        check_zip(bomb, None)  # N unknown: the 1 GiB entry fits the size bound, its ratio does not
    assert time.perf_counter() - t0 < 5.0
    assert str(bomb) in str(info.value)
    assert opened == []  # nothing was decompressed
    assert list(scratch.iterdir()) == []
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="declares 1.0 GiB"):  # N known: the size bound refuses it first
        read_upload_zip(bomb, ["val", "test"], out, {"val": N, "test": N})
    assert list(out.iterdir()) == []


def test_the_streaming_limit_does_not_trust_the_header(good, tmp_path, monkeypatch):
    """With the declared-size check skipped on purpose, the copy itself stops at the entry's limit."""
    path = write_zip(tmp_path / "ok.zip", good.items())
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(safezip, "check_upload", lambda *args, **kwargs: [])
    limits = {VAL: len(good[VAL]) - 1, TEST: len(good[TEST])}
    with pytest.raises(InputError, match="expands beyond"):
        extract_upload(path, [VAL], out, PREDICTION_NAMES, limits)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "name, message",
    [
        ("../data_val_prediction.npz", "'..'"),
        ("/data_val_prediction.npz", "absolute path"),
        ("C:/data_val_prediction.npz", "absolute path"),
        ("sub\\data_val_prediction.npz", "backslash"),
        ("sub/data_val_prediction.npz", "inside a folder"),
    ],
)
def test_names_with_paths_are_refused(good, tmp_path, name, message):
    path = tmp_path / "p.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(VAL)
        info.filename = name  # bypass ZipInfo's own normalisation of the name
        zf.writestr(info, good[VAL])
        zf.writestr(TEST, good[TEST])
    with pytest.raises(InputError, match=message) as exc:
        check_zip(path, None)
    assert str(path) in str(exc.value)
    assert not (tmp_path.parent / VAL).exists()


def test_symlink_entries_are_refused(good, tmp_path):
    link = zipfile.ZipInfo(VAL)
    link.create_system = 3
    link.external_attr = 0o120777 << 16
    path = write_zip(tmp_path / "link.zip", [(link, b"/etc/passwd"), (TEST, good[TEST])])
    with pytest.raises(InputError, match="symbolic link"):
        check_zip(path, None)


def test_npz_inside_the_zip_is_checked_too(tmp_path):
    """A prediction npz is a zip: a member declaring more than N events can hold is refused before loading."""
    big = npz_bytes(np.zeros((700, 30, 30), np.float32))  # 700 events > what 10 events can take
    path = write_zip(tmp_path / "n.zip", [(VAL, big), (TEST, big)])
    out = tmp_path / "out"
    out.mkdir()
    files = read_upload_zip(path, ["val"], out)  # the outer zip is fine with N unknown
    with pytest.raises(InputError, match="n.zip:data_val_prediction.npz: entry 'EnergyDeposit.npy' declares"):
        check_prediction_file(files["val"], 10, f"{path}:{VAL}")


def test_codalab_scorer_refuses_a_duplicate_upload(good, tiny_data_dir, tmp_path, capsys):
    ref, res = tmp_path / "in" / "ref", tmp_path / "in" / "res"
    ref.mkdir(parents=True)
    res.mkdir()
    for split in ("val", "test"):
        shutil.copy(split_path(tiny_data_dir, split, "solution"), ref)
    (ref / "embedder.safetensors").write_bytes(b"never loaded: the upload is refused first")
    with pytest.warns(UserWarning, match="Duplicate name"):
        write_zip(res / "sub.zip", [(VAL, good[VAL]), (VAL, good[VAL]), (TEST, good[TEST])])
    assert run_cli(score_main, [str(tmp_path / "in"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "duplicate entry" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "scores.txt").exists()
