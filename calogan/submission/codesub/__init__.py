"""Template of the Codalab code submission (solution.py), copied into the zip by `python -m calogan.package --kind code`."""

from __future__ import annotations

from pathlib import Path

#: The self-contained solution script (needs only numpy and torch, never calogan).
SOLUTION_SCRIPT = Path(__file__).with_name("solution.py")
#: Codalab runs the submission with this command line ($program = unzipped submission, $input / $output dirs).
METADATA_COMMAND = "python3 $program/solution.py $input $output"
