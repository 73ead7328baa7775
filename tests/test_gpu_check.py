"""benchmarks/gpu_check.sh skips its GPU part cleanly on a machine without CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip path is for machines without CUDA")
def test_gpu_check_skips_without_cuda(tmp_path):
    work = tmp_path / "work"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "1", str(work)],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "no CUDA device here; skipping" in done.stdout
    assert not work.exists()
