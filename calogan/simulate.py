"""`python -m calogan.simulate`: runs calogan.ecal.simulate.main."""

from calogan.core.runtime import run_cli
from calogan.ecal.simulate import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
