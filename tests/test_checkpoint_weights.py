"""A checkpoint whose weights hold NaN/Inf is refused by every command that reads one: one line, the file named."""

from __future__ import annotations

import pytest
import torch

from calogan.core.runtime import run_cli
from calogan.ecal.export import main as export_main
from calogan.ecal.predict import main as predict_main
from calogan.submission.package import main as package_main


@pytest.fixture(scope="module")
def nan_checkpoint(tiny_checkpoint, tmp_path_factory):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    first = next(iter(ckpt["generator_ema"]))
    ckpt["generator_ema"][first] = torch.full_like(ckpt["generator_ema"][first], float("nan"))
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("command", ["predict", "export", "package"])
def test_nan_weights_are_refused_with_the_file_named(
    command, nan_checkpoint, tiny_data_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    main, argv = {
        "predict": (predict_main, ["--checkpoint", str(nan_checkpoint), "--data", str(tiny_data_dir), "--out", str(out)]),
        "export": (export_main, ["--checkpoint", str(nan_checkpoint), "--out", str(out)]),
        "package": (package_main, ["--checkpoint", str(nan_checkpoint), "--data", str(tiny_data_dir), "--kind", "code",
                                   "--out", str(out)]),
    }[command]  # fmt: skip
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(nan_checkpoint) in err and "NaN/Inf" in err, err
    assert not out.exists()
