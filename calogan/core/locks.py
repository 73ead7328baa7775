"""One writer per output folder: an advisory lock file that names its holder.

A run directory, a prediction folder or a report folder belongs to one process while it writes there. The
lock is ``fcntl.flock`` on ``<folder>/.calogan-lock``, which holds the holder's pid, host, start time and
command line, so that a second writer is refused with one line naming the holder (exit 2). The kernel drops
the lock when its process ends, however it ends: a crashed or killed writer leaves at most the file, never a
stuck lock. A process may take the same lock again (it is counted), so nested writers of one process agree.
Where ``fcntl`` is missing (Windows) the lock is a no-op.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
import weakref
from pathlib import Path

from calogan.core.errors import InputError, printable

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]

#: The lock file inside a locked folder; it is removed when the holder releases the lock.
LOCK_NAME = ".calogan-lock"

#: Locks this process holds: real folder path -> [file descriptor, times taken, whether it created the folder].
_HELD: dict[str, list] = {}


def holder_description(text: str) -> str:
    """A lock file's JSON content as one readable phrase (pid, host, start, command), escaped."""
    try:
        info = json.loads(text)
        if not isinstance(info, dict):
            raise ValueError
    except ValueError:
        return "holder unknown"
    since = info.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    )
    command = printable(str(info.get("command", "?")), limit=160)
    return f"pid {info.get('pid', '?')} on {printable(str(info.get('host', '?')))}, since {when}: {command}"


def _holder_record() -> bytes:
    return (
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.time(),
                "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python",
            }
        )
        + "\n"
    ).encode()


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is still the file at ``path`` (a releasing holder may have unlinked it)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class DirectoryLock:
    """The advisory lock of one folder; ``acquire`` raises InputError naming the holder when it is taken."""

    def __init__(self, folder: str | os.PathLike, what: str = "folder"):
        self.folder = Path(folder)
        self.what = what
        self._key: str | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._key is not None

    def acquire(self) -> DirectoryLock:
        """Create the folder if needed and take its lock (InputError when another process holds it)."""
        if self._key is not None or fcntl is None:
            return self
        try:
            created = not self.folder.is_dir()
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"{self.folder}: cannot create the {self.what} ({exc.strerror or exc})"
            ) from None
        key = os.path.realpath(self.folder)
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            try:
                _HELD[key] = [self._lock_file(), 1, created]
            except BaseException:
                if created:
                    _remove_if_empty(self.folder)
                raise
        self._key = key
        self._finalizer = weakref.finalize(self, _release, key)
        return self

    def _lock_file(self) -> int:
        for _ in range(10):  # a holder that unlinks the file between our open and flock: try the new file
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as exc:
                raise InputError(
                    f"{self.folder}: cannot lock the {self.what} ({exc.strerror or exc})"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                finally:
                    os.close(fd)
                raise InputError(
                    f"{self.folder}: {self.what} in use by another calogan process ({holder_description(text)}); "
                    "wait for it to end or stop it"
                ) from None
            except OSError as exc:  # a file system without locks: carry on unlocked, as without fcntl
                os.close(fd)
                if exc.errno in (getattr(os, "ENOLCK", -1), getattr(os, "EOPNOTSUPP", -1)):
                    return -1
                raise
            if _same_file(fd, self.path):
                record = _holder_record()
                os.ftruncate(fd, 0)
                os.pwrite(fd, record, 0)
                return fd
            os.close(fd)
        raise InputError(f"{self.folder}: cannot lock the {self.what} (its lock file keeps changing)")

    def release(self) -> None:
        """Give the lock back (the last release of this process removes the lock file)."""
        if self._key is None:
            return
        key, self._key = self._key, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        _release(key)

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def release_all() -> None:
    """Give back every lock this process holds (a command's end: none outlives it, whatever still refers to it)."""
    for key in list(_HELD):
        _HELD[key][1] = 1
        _release(key)


def _release(key: str) -> None:
    """Count one release of the folder lock ``key``; the last one unlinks the lock file and closes it."""
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _HELD[key]
    fd = entry[0]
    if fd < 0:
        return
    path = Path(key) / LOCK_NAME
    try:
        if _same_file(fd, path):  # unlinked while still locked: a waiting opener then sees another inode
            path.unlink()
    except OSError:
        pass
    finally:
        os.close(fd)
    if entry[2]:  # a folder made only to hold the lock goes too when nothing was written into it
        _remove_if_empty(Path(key))


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def lock_directory(folder: str | os.PathLike, what: str = "folder") -> DirectoryLock:
    """Take and return the lock of ``folder`` (created if missing); use as ``with lock_directory(out): ...``."""
    return DirectoryLock(folder, what).acquire()
