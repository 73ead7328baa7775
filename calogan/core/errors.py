"""The one exception type for bad user input, and the CLI wrapper that turns it into exit status 2.

DESIGN §5: exit 0 on success, 2 on bad user input (one clear line on stderr, no traceback),
1 on anything else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


class InputError(Exception):
    """Bad user input: a missing/invalid file, wrong keys or shapes, NaN, a bad option.

    The message names the file (or option) and the problem in one line.
    """


# Backwards-friendly alias: the data layer speaks of format errors.
DataFormatError = InputError


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a CLI ``main(argv)``; map InputError to exit 2 and other failures to exit 1.

    ``main`` may return None (success) or an int exit status. Every command runs with freed CPU memory
    kept for reuse (:func:`calogan.core.runtime.keep_freed_memory`).
    """
    from calogan.core.runtime import keep_freed_memory

    keep_freed_memory()
    try:
        result = main(argv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse exits 2 on bad options; keep its code
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception as exc:  # noqa: BLE001 - the last-resort handler of a CLI
        print(f"error: unexpected failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        if _debug():
            raise
        return 1
    return int(result) if isinstance(result, int) else 0


def _debug() -> bool:
    import os

    return os.environ.get("CALOGAN_DEBUG", "") not in ("", "0")
