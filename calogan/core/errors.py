"""The one exception type for bad user input; :func:`calogan.core.runtime.run_cli` turns it into exit status 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad user input: a missing/invalid file, wrong keys or shapes, NaN, a bad option.

    The message names the file (or option) and the problem in one line.
    """
