"""`python -m calogan.embedder`: runs calogan.metrics.embedder.main."""

from calogan.core.runtime import run_cli
from calogan.metrics.embedder import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
