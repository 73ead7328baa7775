"""`python -m calogan.finetune`: runs calogan.studies.finetune.main."""

from calogan.core.runtime import run_cli
from calogan.studies.finetune import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
