"""Codalab scoring program and bundle: layout, scores.txt, bad input, and the unzipped bundle end to end."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from calogan.codalab.bundle import build_bundle
from calogan.codalab.score import main as score_main
from calogan.core.errors import InputError
from calogan.core.runtime import run_cli
from calogan.ecal.data import load_npz, save_prediction, split_path
from calogan.metrics.embedder import Embedder, save_embedder


@pytest.fixture(scope="module")
def embedder_file(tmp_path_factory):
    """An untrained (randomly initialised, seeded) embedder: enough to exercise the program quickly."""
    torch.manual_seed(0)
    model = Embedder().eval()
    model.meta = {"format": "calogan-embedder-v2", "data_sha256": "x", "width": model.width, "embed_dim": 64,
                  "normalizer": {"mean": [0.0] * 5, "std": [1.0] * 5}}  # fmt: skip
    return save_embedder(model, tmp_path_factory.mktemp("cb_emb") / "embedder.safetensors")


def _input_dir(root, tiny_data_dir, with_test=True):
    ref, res = root / "input" / "ref", root / "input" / "res"
    ref.mkdir(parents=True)
    res.mkdir(parents=True)
    for split in ("val", "test"):
        sol = split_path(tiny_data_dir, split, "solution")
        shutil.copy(sol, ref / sol.name)
        if split == "val" or with_test:
            images = load_npz(sol, require_energy=True).energy
            save_prediction(res / f"data_{split}_prediction.npz", np.roll(images, 1, axis=0))
    return root / "input"


def test_score_program_bad_input(tiny_data_dir, embedder_file, tmp_path, capsys):
    inp = _input_dir(tmp_path, tiny_data_dir, with_test=False)
    out = tmp_path / "out"
    assert run_cli(score_main, [str(inp), str(out), "--embedder", str(embedder_file)]) == 2
    err = capsys.readouterr().err
    assert "data_test_prediction.npz" in err and "Traceback" not in err
    assert not (out / "scores.txt").exists()
    assert run_cli(score_main, [str(tmp_path / "none"), str(out)]) == 2
    assert not (out / "scores.txt").exists()


def test_bundle_unzipped_scores_a_submission(tiny_data_dir, embedder_file, tmp_path):
    zpath = build_bundle(embedder_file, tmp_path / "program.zip")
    with zipfile.ZipFile(zpath) as zf:
        names = set(zf.namelist())
        assert {
            "metadata",
            "score.py",
            "embedder.safetensors",
            "calogan/metrics/scoring.py",
            "calogan/metrics/inputs.py",
        } <= names
        assert "$program/score.py $input $output" in zf.read("metadata").decode()
        zf.extractall(tmp_path / "program")
    inp = _input_dir(tmp_path, tiny_data_dir)
    cmd = [sys.executable, "-I", str(tmp_path / "program" / "score.py"), str(inp), str(tmp_path / "out"),
           "--clusters", "10", "--runs", "2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={"TQDM_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out" / "scores.txt").read_text()
    lines = dict(line.split(": ") for line in text.splitlines())
    assert 0 <= float(lines["set1_score"]) <= 1 and 0 <= float(lines["set2_score"]) <= 1
    assert "<table" in (tmp_path / "out" / "scores.html").read_text()


def test_bundle_refuses_bad_embedder(tmp_path):
    (tmp_path / "e.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError):
        build_bundle(tmp_path / "e.safetensors", tmp_path / "p.zip")
    assert not (tmp_path / "p.zip").exists()
