"""Runtime helpers shared by every command: the CLI wrapper, device choice, seeding, allocator tuning,
the progress-bar switch, atomic file writes and checkpoint loading.

CLI convention (docs/cli.md): exit 0 on success, 2 on bad user input (one clear line on stderr, no
traceback), 1 on anything else, 130 when interrupted.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calogan.core.errors import InputError


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a CLI ``main(argv)``; map InputError to exit 2 and other failures to exit 1.

    ``main`` may return None (success) or an int exit status. Every command runs with freed CPU memory
    kept for reuse (:func:`keep_freed_memory`). ``CALOGAN_DEBUG=1`` re-raises unexpected failures.
    """
    keep_freed_memory()
    try:
        result = main(argv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a trainer says where its final checkpoint is
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse exits 2 on bad options; keep its code
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception as exc:  # noqa: BLE001 - the last-resort handler of a CLI
        print(f"error: unexpected failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        if os.environ.get("CALOGAN_DEBUG", "") not in ("", "0"):
            raise
        return 1
    return int(result) if isinstance(result, int) else 0


def progress_disabled(progress: bool = True) -> bool | None:
    """The ``disable`` argument of every progress bar: the one rule for when bars are drawn.

    True (no bar) when ``progress`` is False or the TQDM_DISABLE environment variable is set to anything but
    '', '0', 'false' or 'no'; otherwise None, which lets tqdm draw only when the output is a terminal.
    """
    if not progress:
        return True
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no"):
        return True
    return None


def select_device(preference=None):
    """Return a torch.device: 'auto'/None picks cuda, then mps, then cpu; a name or torch.device is checked."""
    pref = str(preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(pref)
    except RuntimeError:
        raise InputError(
            f"--device: unknown device '{preference}' (use auto, cpu, cuda, cuda:N or mps)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device: '{preference}' requested but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device: '{preference}' requested but MPS is not available on this machine")
    return device


#: glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD and M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ALLOCATOR_TUNED: bool | None = None


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Stop glibc from handing every freed CPU tensor back to the kernel; True when the setting took effect.

    torch's CPU tensors come from malloc, and glibc serves blocks above its mmap threshold (a few MB after
    its dynamic adjustment) with fresh mmap'ed pages that it unmaps again on free. A generator batch of
    1024 showers has ~60 MB activations, so every layer of every call page-faults its output in (measured
    4× slower at batch 1024, 2.5× at 128 on the 2-core CPU; benchmarks/README.md). Raising the mmap and trim
    thresholds keeps freed blocks in the heap for reuse (memory is reused, not leaked; the process keeps up
    to ``trim_threshold`` bytes of free heap). Linux/glibc only, once per process, idempotent; a no-op
    elsewhere or when ``CALOGAN_KEEP_FREED_MEMORY=0``.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is not None:
        return _ALLOCATOR_TUNED
    _ALLOCATOR_TUNED = False
    if os.environ.get("CALOGAN_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _ALLOCATOR_TUNED = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
        mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))
    )
    return _ALLOCATOR_TUNED


def choose_freed_memory_policy(keep: bool) -> bool:
    """Apply :func:`keep_freed_memory` now (keep=True), or switch it off for this process before any call.

    For A/B timings (benchmarks' ``--allocator keep|default``); returns whether the setting is in effect.
    """
    if not keep:
        os.environ["CALOGAN_KEEP_FREED_MEMORY"] = "0"  # later calls (predict, evaluate) become no-ops
    return keep_freed_memory() if keep else False


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def default_file_mode() -> int:
    """The mode a plain open() would give a new file (0o666 minus the umask); mkstemp would give 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, writer: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call writer(handle) on a temp file next to path, then rename it into place (usual file mode)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except (PermissionError, NotADirectoryError, FileExistsError) as exc:  # read-only or blocked folder
        raise InputError(f"{path}: cannot write here ({exc.strerror or type(exc).__name__})") from None
    try:
        with os.fdopen(fd, mode) as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda h: h.write(text), mode="w")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save through a temp file + rename, so a kill never leaves a broken checkpoint."""
    return atomic_write(path, lambda h: torch.save(obj, h))


def torch_load_safe(path: str | os.PathLike, map_location="cpu") -> Any:
    """torch.load with weights_only=True; unreadable or foreign files raise InputError (one plain line)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means a bad file
        raise InputError(
            f"{path}: not a readable calogan checkpoint ({type(exc).__name__}: {one_line(str(exc))})"
        ) from None


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


def one_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of ``text`` without terminal escape codes or control characters, cut at ``limit``."""
    plain = _ANSI_ESCAPE.sub("", text)
    lines = [ln.strip() for ln in plain.splitlines() if ln.strip()]
    first = "".join(ch for ch in (lines[0] if lines else "") if ch.isprintable())
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
