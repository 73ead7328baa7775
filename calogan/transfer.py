"""`python -m calogan.transfer`: runs calogan.studies.transfer.main."""

from calogan.core.runtime import run_cli
from calogan.studies.transfer import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
