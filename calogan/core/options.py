"""The one rule for command options and outputs (docs/cli.md, "Option rule" and "Output rule").

Options: every number a command reads has a declared domain, checked by argparse ``type=`` factories
(:func:`seed`, :func:`count`, :func:`finite_float`, :func:`positive_float`, :func:`fraction`, :func:`choice`)
before any work; :class:`ArgumentParser` turns argparse's usage-plus-error into one :class:`InputError` line,
so a bad option exits 2 with ``error: argument --seed: must be an integer >= 0, got -1``. The same checks
serve config fields (:func:`check_int`, :func:`check_float`) and the PRD cluster count (:func:`check_clusters`).

Outputs: :func:`check_output_file` and :func:`check_output_dir` refuse, before any work, a file where a
folder is expected, a folder where a file is expected, a parent that is a file or not writable, and an
existing output without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

from calogan.core.errors import InputError, printable

__all__ = [
    "MAX_DEPTH",
    "MAX_WIDTH",
    "ArgumentParser",
    "check_clusters",
    "check_float",
    "check_int",
    "check_name",
    "check_not_input",
    "check_output_dir",
    "check_output_file",
    "choice",
    "count",
    "finite_float",
    "fraction",
    "nonnegative_float",
    "positive_float",
    "seed",
]


#: Largest network width (hidden units, channels, noise or critic output size) any option accepts: 16x the
#: widest preset; beyond it a model would not fit in memory, and a typo would end in an allocation failure.
MAX_WIDTH = 4096
#: Largest number of hidden layers an option accepts.
MAX_DEPTH = 64


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are one InputError line (run_cli: ``error: ...``, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise InputError(f"{message} (see {self.prog} --help)")


# ---------------------------------------------------------------- domains


def _int_problem(value, minimum: int | None, maximum: int | None) -> str | None:
    """Why ``value`` is outside the integer domain [minimum, maximum], or None when it is inside."""
    if minimum is not None and maximum is not None:
        want = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        want = f"an integer >= {minimum}"
    elif maximum is not None:
        want = f"an integer <= {maximum}"
    else:
        want = "an integer"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return f"must be {want}, got {value!r}"
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        return f"must be {want}, got {value}"
    return None


def _float_problem(
    value, minimum: float | None, inclusive: bool, maximum: float | None, max_inclusive: bool
) -> str | None:
    """Why ``value`` is outside the finite-float domain, or None when it is inside (NaN and Inf never are)."""
    parts = []
    if minimum is not None:
        parts.append(f"{'>=' if inclusive else '>'} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'<=' if max_inclusive else '<'} {maximum:g}")
    want = "a finite number" + (" " + " and ".join(parts) if parts else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"must be {want}, got {value!r}"
    value = float(value)
    if not math.isfinite(value):
        return f"must be {want}, got {value}"
    if minimum is not None and (value < minimum or (not inclusive and value == minimum)):
        return f"must be {want}, got {value:g}"
    if maximum is not None and (value > maximum or (not max_inclusive and value == maximum)):
        return f"must be {want}, got {value:g}"
    return None


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` when it is an int in [minimum, maximum]; otherwise InputError ``name: must be ...``."""
    problem = _int_problem(value, minimum, maximum)
    if problem:
        raise InputError(f"{name}: {problem}")
    return int(value)


def check_float(
    name: str,
    value,
    minimum: float | None = None,
    inclusive: bool = True,
    maximum: float | None = None,
    max_inclusive: bool = True,
) -> float:
    """``value`` when it is a finite number in the domain; otherwise InputError ``name: must be ...``."""
    problem = _float_problem(value, minimum, inclusive, maximum, max_inclusive)
    if problem:
        raise InputError(f"{name}: {problem}")
    return float(value)


def check_name(option: str, name: str, under: str = "runs/") -> str:
    """``name`` when it is one plain folder name (kept under ``under``); otherwise InputError naming ``option``.

    Refused: a path separator, ``.`` or ``..``, a name starting with ``-``, and control characters, so that
    ``--name ../../x`` cannot write outside the folder it names a child of.
    """
    seps = {os.sep, "/", "\\"} | ({os.altsep} if os.altsep else set())
    if (
        not isinstance(name, str)
        or name in (".", "..")
        or name.startswith("-")
        or any(sep in name for sep in seps)
        or not name.isprintable()
    ):
        raise InputError(
            f"{option}: must be a plain folder name under {under} (no '/', '..', leading '-' or control "
            f"characters), got {printable(repr(name))}"
        )
    return name


def check_clusters(clusters, n_events: int, option: str = "--clusters") -> int:
    """PRD clusters must lie in [2, N] (N = the events scored); checked before any clustering or allocation."""
    return check_int(option, clusters, 2, max(2, int(n_events)))


# ---------------------------------------------------------------- argparse type= factories


def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = name  # argparse names a failing type by its __name__
    return fn


def count(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """type= for an integer in [minimum, maximum] (default: >= 1)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                _int_problem(text, minimum, maximum) or f"not an integer: {text!r}"
            ) from None
        problem = _int_problem(value, minimum, maximum)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return _named(parse, "count")


#: type= for a random seed: an integer >= 0.
seed = _named(count(0), "seed")


def finite_float(
    minimum: float | None = None,
    inclusive: bool = True,
    maximum: float | None = None,
    max_inclusive: bool = True,
) -> Callable[[str], float]:
    """type= for a finite float (NaN and Inf refused) with optional bounds."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = text
        problem = _float_problem(value, minimum, inclusive, maximum, max_inclusive)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return float(value)

    return _named(parse, "number")


#: type= for a finite number > 0 (learning rates, weights that must act).
positive_float = _named(finite_float(0.0, inclusive=False), "positive_float")
#: type= for a finite number >= 0 (loss weights, time budgets where 0 means none).
nonnegative_float = _named(finite_float(0.0), "nonnegative_float")
#: type= for a finite number in [0, 1].
fraction = _named(finite_float(0.0, maximum=1.0), "fraction")


def choice(*values: str) -> Callable[[str], str]:
    """type= for one of ``values`` (exact match); the message lists them."""

    def parse(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(values)}, got {text!r}")
        return text

    return _named(parse, "choice")


# ---------------------------------------------------------------- outputs


def _writable_parent(path: Path, option: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder (missing folders get created)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():  # a dangling link: mkdir would fail
            break
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{option} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: folder {parent} is not writable")


def _real(path: str | os.PathLike) -> Path:
    """``path`` with links and ``..`` resolved (a missing tail kept as written)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_not_input(
    output: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None],
    option: str = "--out",
    replaces: Iterable[str] | None = (),
) -> Path:
    """Refuse (InputError naming ``option``, even with ``--overwrite``) an output that would destroy an input.

    Refused: ``output`` resolves to an input (links and ``..`` resolved; the same file under another name
    too), or lies inside an input that is a folder the command reads. ``replaces`` names what the command
    replaces inside an output folder: an input inside ``output/<name>`` is refused too; None means the whole
    folder is replaced (a run directory), so an input anywhere inside it is refused. ``None`` inputs are
    skipped. Returns ``output``.
    """
    out = _real(output)
    for item in inputs:
        if item is None:
            continue
        source = _real(item)
        same = out == source
        if not same and out.exists() and source.exists():
            try:
                same = os.path.samefile(out, source)
            except OSError:
                same = False
        if same:
            raise InputError(
                f"{option} {output}: is also an input of this command ({item}); choose another path"
            )
        if source.is_dir() and _inside(out, source):
            raise InputError(f"{option} {output}: lies inside the input folder {item}; choose another path")
        if replaces is None:
            if _inside(source, out):
                raise InputError(
                    f"{option} {output}: would replace the folder that holds the input {item}; choose another path"
                )
        else:
            for name in replaces:
                if _inside(source, out / name):
                    raise InputError(
                        f"{option} {output}: would replace {out / name}, which holds the input {item}; "
                        "choose another path"
                    )
    return Path(output)


def check_output_file(
    path: str | os.PathLike,
    overwrite: bool = False,
    option: str = "--out",
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Refuse (InputError, one line naming ``option`` and the path) an output file that cannot be written.

    A folder at ``path``, a parent that is a file or not writable, or an existing file without
    ``overwrite``; missing parent folders are created later by the writer; and, with or without
    ``overwrite``, a path that is one of the command's ``inputs`` (:func:`check_not_input`). Returns the path.
    """
    path = check_not_input(path, inputs, option)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder, expected a file path")
    if path.exists() and not overwrite:
        raise InputError(f"{option} {path}: already exists (pass --overwrite to replace it)")
    _writable_parent(path, option)
    return path


def check_output_dir(
    path: str | os.PathLike,
    overwrite: bool = False,
    option: str = "--out",
    contents: Iterable[str] | None = None,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Refuse (InputError, one line naming ``option`` and the path) an output folder that cannot be written.

    A file at ``path``, a parent that is a file or not writable, a read-only existing folder, and, without
    ``overwrite``, existing outputs: the names in ``contents`` when given (``()``: the caller decides, as a
    run directory does), otherwise any non-empty folder. With or without ``overwrite``, a folder that is, lies
    in or (``contents`` ``()``: the whole folder; else those entries) holds one of ``inputs``
    (:func:`check_not_input`). Returns the path.
    """
    contents = None if contents is None else list(contents)
    path = check_not_input(path, inputs, option, None if contents == [] else (contents or []))
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: exists and is not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{option} {path}: folder is not writable")
        if not overwrite:
            if contents is None:
                if any(path.iterdir()):
                    raise InputError(f"{option} {path}: folder exists and is not empty (pass --overwrite)")
            else:
                existing = [name for name in contents if (path / name).exists()]
                if existing:
                    raise InputError(
                        f"{option} {path}: {existing[0]} already exists (pass --overwrite to replace it)"
                    )
        return path
    _writable_parent(path, option)
    return path
