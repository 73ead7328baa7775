"""Transfer study: CLI with a given checkpoint and with training on a selection; bad input exits 2."""

from __future__ import annotations

import json

import numpy as np

from calogan.core.runtime import run_cli
from calogan.ecal.physics import cluster_3x3
from calogan.studies.transfer import efficiencies, main


def test_cluster_3x3_sums_the_neighbourhood_of_the_maximum():
    img = np.zeros((2, 30, 30), np.float32)
    img[0, 10, 10], img[0, 11, 11], img[0, 13, 13] = 5, 1, 7
    img[1, 0, 0], img[1, 1, 0] = 9, 2  # corner: clipped at the border
    assert cluster_3x3(img).tolist() == [7.0, 11.0]
    eff = efficiencies(img, img)
    assert all(e["gen"] == e["real"] and e["pull"] == 0 for e in eff.values())


def test_transfer_cli_with_checkpoint(tiny_data_dir, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "tr"
    argv = ["--data", str(tiny_data_dir), "--train-selection", "p<20", "--test-selection", "p>=20",
            "--checkpoint", str(tiny_checkpoint), "--preset", "tiny", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert run_cli(main, argv) == 0, capsys.readouterr().err
    result = json.loads((out / "results.json").read_text())
    assert result["overlap_fraction_val"] == 0.0
    for key in ("train_selection", "test_selection"):
        part = result[key]
        assert 0 <= part["score"]["score"] <= 1 and part["score"]["ceiling"] is not None
        assert len(part["efficiency"]) == 2 and len(part["response"]["bins"]) == 3
    assert (out / "transfer.png").is_file() and "Cut efficiencies" in (out / "report.md").read_text()


def test_transfer_cli_trains_on_selection(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "tr2"
    argv = ["--data", str(tiny_data_dir), "--train-selection", "pdg==11", "--test-selection", "pdg==22",
            "--preset", "tiny", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert run_cli(main, argv) == 0, capsys.readouterr().err
    assert (out / "run" / "checkpoints" / "best.pt").is_file() and (out / "report.md").is_file()


def test_transfer_bad_input_exits_2(tiny_data_dir, tmp_path, capsys):
    base = ["--data", str(tiny_data_dir), "--preset", "tiny", "--out", str(tmp_path / "o")]
    assert run_cli(main, base + ["--train-selection", "p>10000", "--test-selection", "p<20"]) == 2
    assert "selects no events" in capsys.readouterr().err
    assert run_cli(main, base + ["--train-selection", "p<20", "--test-selection", "import os"]) == 2
    assert "--test-selection" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
