"""`python -m calogan.train`: runs calogan.ecal.train.main."""

from calogan.core.runtime import run_cli
from calogan.ecal.train import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
