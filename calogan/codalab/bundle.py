"""Build the Codalab scoring-program zip an organiser uploads: entry script, metadata, code and embedder weights.

The zip holds ``metadata`` (``command: python $program/score.py $input $output``), ``score.py`` (adds the
bundled package to sys.path and runs calogan.codalab.score with the bundled embedder), the few calogan modules
the scorer imports, and ``embedder.safetensors``. The Codalab worker image needs python ≥ 3.10 with torch,
numpy, scikit-learn, tqdm and safetensors.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.runtime import atomic_write, run_cli
from calogan.metrics.embedder import load_embedder

#: calogan modules the scoring program imports (plots and extra metrics are not needed on Codalab).
BUNDLED_MODULES = (
    "__init__.py", "core/__init__.py", "core/errors.py", "core/locks.py", "core/options.py", "core/runtime.py",
    "core/safezip.py", "core/fit.py",
    "ecal/__init__.py", "ecal/data.py", "ecal/physics.py",
    "metrics/__init__.py", "metrics/prd.py", "metrics/embedder.py", "metrics/inputs.py", "metrics/scoring.py",
    "codalab/__init__.py", "codalab/score.py",
)  # fmt: skip

ENTRY_SCRIPT = '''"""Codalab entry point: python score.py INPUT_DIR OUTPUT_DIR (calogan scoring program)."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from calogan.codalab.score import main  # noqa: E402
from calogan.core.runtime import run_cli  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run_cli(main, [*sys.argv[1:3], "--embedder", str(HERE / "embedder.safetensors"), *sys.argv[3:]]))
'''


def build_bundle(embedder_path: str | Path, out: str | Path) -> Path:
    """Write the scoring-program zip atomically; the embedder must be a loadable calogan embedder."""
    embedder_path, out = Path(embedder_path), Path(out)
    load_embedder(embedder_path)  # validates the file (format, weights) before anything is written
    pkg = Path(__file__).resolve().parent.parent
    metadata = (Path(__file__).with_name("metadata.template")).read_text()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata", metadata)
        zf.writestr("score.py", ENTRY_SCRIPT)
        for rel in BUNDLED_MODULES:
            zf.write(pkg / rel, f"calogan/{rel}")
        zf.write(embedder_path, "embedder.safetensors")
    return atomic_write(out, lambda h: h.write(buf.getvalue()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = options.ArgumentParser(
        prog="python -m calogan.codalab.bundle", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--embedder", default="data/embedder.safetensors", help="trained embedder weights")
    parser.add_argument("--out", default="submissions/scoring_program.zip", help="output zip")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out zip")
    args = parser.parse_args(argv)
    options.check_output_file(args.out, args.overwrite, "--out", inputs=[args.embedder])
    if not Path(args.embedder).is_file():
        raise InputError(
            f"{args.embedder}: embedder not found (train it: python -m calogan.embedder --data data)"
        )
    path = build_bundle(args.embedder, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
