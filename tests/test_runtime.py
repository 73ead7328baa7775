"""Device selection and atomic writes."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from calogan.core import runtime
from calogan.core.errors import InputError
from calogan.core.runtime import atomic_write_json, default_file_mode, select_device
from calogan.ecal.data import save_npz


def test_select_device_accepts_names_devices_and_auto():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    assert select_device(None).type in {"cpu", "cuda", "mps"}
    assert select_device("auto") == select_device(None)


def test_select_device_rejects_unknown_and_unavailable():
    with pytest.raises(InputError, match="unknown device"):
        select_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            select_device("cuda")


def test_atomic_write_json_leaves_no_temp_files(tmp_path):
    out = atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert out.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_files_get_the_usual_mode(tmp_path):
    path = save_npz(tmp_path / "x.npz", {"a": np.zeros(3)})
    assert os.stat(path).st_mode & 0o777 == default_file_mode()


def test_keep_freed_memory_is_idempotent_and_can_be_switched_off():
    first = runtime.keep_freed_memory()
    assert runtime.keep_freed_memory() is first  # once per process
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert first is True  # glibc accepts both thresholds
    code = "from calogan.core.runtime import keep_freed_memory; print(keep_freed_memory())"
    env = {**os.environ, "CALOGAN_KEEP_FREED_MEMORY": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    code = (
        "import os; from calogan.core.runtime import choose_freed_memory_policy, keep_freed_memory; "
        "print(choose_freed_memory_policy(False), keep_freed_memory(), os.environ['CALOGAN_KEEP_FREED_MEMORY'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "0"]
