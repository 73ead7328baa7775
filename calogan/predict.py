"""`python -m calogan.predict`: runs calogan.ecal.predict.main."""

from calogan.core.runtime import run_cli
from calogan.ecal.predict import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
