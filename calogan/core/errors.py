"""The one exception type for bad user input; :func:`calogan.core.runtime.run_cli` turns it into exit status 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad user input: a missing/invalid file, wrong keys or shapes, NaN, a bad option.

    The message names the file (or option) and the problem in one line.
    """


class Interrupted(KeyboardInterrupt):
    """A stop by signal (Ctrl-C or SIGTERM); ``signum`` gives the CLI's exit status, 128 + signum."""

    def __init__(self, message: str = "", signum: int = 2):
        super().__init__(message)
        self.signum = int(signum)

    def __reduce__(self):  # keeps signum across processes (a worker's stop reaches its parent whole)
        return type(self), (str(self), self.signum)


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with every control or invisible character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``).

    Names and values read from files (zip entries, npz keys, checkpoint fields) reach messages through this,
    so a hostile name cannot break a message over lines or send escape sequences to a terminal. ``limit``
    cuts the result to that many characters (ending in ``…``).
    """
    text = str(text)
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
