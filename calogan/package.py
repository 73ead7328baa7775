"""`python -m calogan.package`: runs calogan.submission.package.main."""

from calogan.core.runtime import run_cli
from calogan.submission.package import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
