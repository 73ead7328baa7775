"""Runtime helpers shared by every command: the CLI wrapper, device choice, seeding, allocator tuning,
the progress-bar switch, atomic file writes and checkpoint loading.

CLI convention (docs/cli.md): exit 0 on success, 2 on bad user input or an output that cannot be written
(one clear line on stderr, no traceback), 1 on anything else, 130 on Ctrl-C, 143 on SIGTERM, 141 (silently)
when the reader of stdout went away (``| head``).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calogan.core.errors import InputError, Interrupted, printable
from calogan.core.locks import release_all

#: OSError numbers that mean "this output cannot be written here" (bad input of the user's environment).
WRITE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a CLI ``main(argv)`` and map every way it can end to one exit status and at most one stderr line.

    InputError -> 2; an OSError of :data:`WRITE_ERRNOS` (a read-only file system, a full disk) -> 2 naming the
    file; Ctrl-C -> 130 and SIGTERM -> 143 (``interrupted``/``terminated``: the trainers write last.pt first);
    a closed stdout (``| head``) -> 141 without a message; anything else -> 1. Messages are one line with
    control characters escaped; Python warnings print as one ``warning:`` line each. ``main`` may return None
    (success) or an int exit status. Every command runs with freed CPU memory kept for reuse
    (:func:`keep_freed_memory`). ``CALOGAN_DEBUG=1`` re-raises unexpected failures.
    """
    keep_freed_memory()
    try:
        with _terminate_as_interrupt(), warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            result = main(argv)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except InputError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a trainer says where its final checkpoint is
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        word = "terminated" if signum == signal.SIGTERM else "interrupted"
        print(f"{word}: {printable(str(exc))}" if str(exc) else word, file=sys.stderr)
        return 128 + int(signum)
    except SystemExit as exc:  # argparse exits 2 on bad options; keep its code
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BrokenPipeError:
        _silence_stdout()
        return 128 + int(signal.SIGPIPE)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            return _unexpected(exc)
        where = exc.filename if exc.filename is not None else "output"
        print(f"error: {printable(str(where))}: cannot write ({exc.strerror or errno.errorcode.get(exc.errno)})",
              file=sys.stderr)  # fmt: skip
        return 2
    except Exception as exc:  # noqa: BLE001 - the last-resort handler of a CLI
        return _unexpected(exc)
    finally:
        release_all()  # the command's folder locks end with it (a traceback may still refer to them)
    return int(result) if isinstance(result, int) else 0


def _unexpected(exc: BaseException) -> int:
    """The last-resort report of a CLI: one line on stderr, exit 1 (``CALOGAN_DEBUG=1``: the traceback)."""
    print(f"error: unexpected failure: {type(exc).__name__}: {one_line(str(exc))}", file=sys.stderr)
    if os.environ.get("CALOGAN_DEBUG", "") not in ("", "0"):
        raise exc
    return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush after a broken pipe stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Interrupted` (like Ctrl-C), so cleanup runs and the exit status is 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted("", signum=signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """warnings.showwarning for commands: ``warning: <category>: <first line>`` without the source line."""
    print(f"warning: {category.__name__}: {one_line(str(message))}", file=sys.stderr)


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


#: Every temporary file or folder calogan writes is named ``.calogan-tmp-<target name>.<pid>.<random>`` and
#: lives next to its target (scratch folders: in the system temp folder, named after their task), so that a
#: later writer of the same target can recognise and remove what a killed run left behind.
TEMP_PREFIX = ".calogan-tmp-"
_RANDOM_PART = r"[a-z0-9_]{8}"  # tempfile's random names: 8 characters of [a-z0-9_]


def temp_prefix(target_name: str) -> str:
    """``.calogan-tmp-<target_name>.<pid>.``: the start of this process's temp names for ``target_name``."""
    return f"{TEMP_PREFIX}{target_name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a running (not zombie) process; another user's process counts as running."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    try:  # Linux: a killed child that nobody reaped yet is a zombie, as dead as a missing one
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _started_after(pid: int, when: float) -> bool:
    """Whether process ``pid`` started after ``when`` (Linux /proc; False where unknown): a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith(b"btime "))
        start = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return start > when + 2.0  # clock-tick rounding


def stale_temps(folder: str | os.PathLike, target_name: str) -> list[Path]:
    """The temp files and folders for ``target_name`` in ``folder`` whose writing process is gone.

    A name ``.calogan-tmp-<target_name>.<pid>.<random>`` is stale when no process ``pid`` runs (or a zombie),
    or when the process with that pid started after the temp was last written (the pid was reused).
    """
    folder = Path(folder)
    pattern = re.compile(rf"{re.escape(TEMP_PREFIX + target_name)}\.(\d+)\.{_RANDOM_PART}")
    stale = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match:
            continue
        pid = int(match.group(1))
        if pid == os.getpid():
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if not _pid_alive(pid) or _started_after(pid, mtime):
            stale.append(Path(entry.path))
    return stale


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Remove what killed runs left while writing ``target`` (see :func:`stale_temps`); returns the paths."""
    target = Path(target)
    removed = []
    for path in stale_temps(target.parent, target.name):
        _remove_path(path)
        removed.append(path)
    return removed


def _remove_path(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _cannot_write(path: Path, exc: OSError) -> InputError:
    return InputError(f"{path}: cannot write here ({exc.strerror or type(exc).__name__})")


def make_temp_file(target: str | os.PathLike) -> tuple[int, Path]:
    """(fd, path) of a new temp file next to ``target`` (parents created, stale temps of ``target`` removed).

    A read-only or blocked folder is an InputError naming ``target``.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target.name), dir=target.parent)
    except (PermissionError, NotADirectoryError, FileExistsError) as exc:
        raise _cannot_write(target, exc) from None
    return fd, Path(tmp)


def make_temp_dir(target: str | os.PathLike) -> Path:
    """A new temp folder next to ``target`` (parents created, stale temps of ``target`` removed)."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        return Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), dir=target.parent))
    except (PermissionError, NotADirectoryError, FileExistsError) as exc:
        raise _cannot_write(target, exc) from None


@contextmanager
def temp_dir_for(target: str | os.PathLike) -> Iterator[Path]:
    """A temp folder next to ``target`` for staging it (see :func:`make_temp_dir`), removed on exit."""
    tmp = make_temp_dir(target)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def scratch_dir(task: str) -> Iterator[Path]:
    """A temp folder in the system temp folder for ``task`` (e.g. 'evaluate'), removed on exit.

    Named like every calogan temp (``.calogan-tmp-<task>.<pid>.<random>``), so the next run of the same task
    removes what a killed one left there.
    """
    with temp_dir_for(Path(tempfile.gettempdir()) / task) as tmp:
        yield tmp


def publish(staging: str | os.PathLike, target: str | os.PathLike, names: Sequence[str]) -> None:
    """Move ``staging/<name>`` to ``target/<name>`` for each name, in order, replacing what is there.

    Outputs that belong together are written into a staging folder beside their target (:func:`temp_dir_for`)
    and only then moved, each with one rename on the same file system, so that no failure while *writing*
    leaves a part of them. For the moves themselves, list last the file that marks the set complete (a
    summary), or write first a manifest of the set (a kill between two moves is then detectable). An existing
    folder of the same name is first renamed aside, then removed.
    """
    staging, target = Path(staging), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        source, dest = staging / name, target / name
        old = None
        if dest.is_dir() and not dest.is_symlink():
            old = make_temp_dir(dest)
            os.replace(dest, old / name)
        os.replace(source, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: str | os.PathLike, writer: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call writer(handle) on a temp file next to path, then rename it into place (usual file mode).

    The temp file follows the calogan temp naming (:func:`make_temp_file`), so a run killed while writing
    leaves a file that the next writer of ``path`` removes.
    """
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        writer(handle)
    return Path(path)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp file next to ``path`` for a writer that needs a file name (and may close its own handle).

    When the block ends normally the temp file is synced and renamed to ``path`` (usual file mode); when it
    raises, the temp file is removed, so ``path`` is either the complete new file or untouched.
    """
    path = Path(path)
    fd, tmp = make_temp_file(path)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda h: h.write(text), mode="w")


def json_text(obj: Any) -> str:
    """``obj`` as calogan's JSON files hold it: indented, numpy scalars and arrays and paths converted."""
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json_text(obj))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save through a temp file + rename, so a kill never leaves a broken checkpoint."""
    return atomic_write(path, lambda h: torch.save(obj, h))


def torch_load_safe(path: str | os.PathLike, map_location="cpu") -> Any:
    """torch.load with weights_only=True; unreadable or foreign files raise InputError (one plain line)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():  # torch's warnings (a TorchScript archive, ...): the error says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means a bad file
        raise InputError(
            f"{path}: not a readable calogan checkpoint ({type(exc).__name__}: {one_line(str(exc))})"
        ) from None


def require_finite_tensors(path: str | os.PathLike, checkpoint: dict, keys: Sequence[str]) -> None:
    """Refuse (InputError naming the file and entry) a checkpoint whose float tensors under ``keys`` hold NaN/Inf.

    Each key may hold one tensor or a dict of tensors (a state dict); missing keys are skipped.
    """
    for key in keys:
        value = checkpoint.get(key)
        if value is None:
            continue
        tensors = value.items() if isinstance(value, dict) else [(key, value)]
        for name, tensor in tensors:
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.is_floating_point()
                and not torch.isfinite(tensor).all()
            ):
                bad = int((~torch.isfinite(tensor)).sum())
                where = key if name == key else f"{key}/{name}"
                raise InputError(f"{path}: {bad} NaN/Inf value(s) in {where}; the checkpoint is unusable")


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
