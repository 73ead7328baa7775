"""`python -m calogan.evaluate`: runs calogan.metrics.evaluate.main."""

from calogan.core.runtime import run_cli
from calogan.metrics.evaluate import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
