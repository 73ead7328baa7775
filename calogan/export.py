"""`python -m calogan.export`: runs calogan.ecal.export.main."""

from calogan.core.runtime import run_cli
from calogan.ecal.export import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
