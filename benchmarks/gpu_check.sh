#!/usr/bin/env bash
# One prepared GPU check: train the `full` preset for a fixed number of minutes on a CUDA device, then predict and
# evaluate, and print images/s, the steps reached and the quality table. On a machine without CUDA it says so and
# exits 0 without training (the CPU presets are measured by bench_robustness.py and bench_quality.py).
#
#   bash benchmarks/gpu_check.sh [MINUTES (default 8)] [WORK_DIR (default runs/gpu_check)]
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-8}"
WORK="${2:-runs/gpu_check}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device here; skipping the GPU training check (nothing written)"
    exit 0
fi
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'

DATA="$WORK/data"
RUN="$WORK/full"
mkdir -p "$WORK"
[ -f "$DATA/data_train.npz" ] || "$PY" -m calogan.simulate --out "$DATA"
"$PY" -m calogan.train --preset full --data "$DATA" --run-dir "$RUN" --device cuda --overwrite \
    --set max_minutes="$MINUTES" --set plots=false --set tensorboard=false
"$PY" -m calogan.predict --checkpoint "$RUN/checkpoints/best.pt" --data "$DATA" --out "$RUN/predictions" --overwrite
"$PY" -m calogan.evaluate "$RUN/predictions" --solution-dir "$DATA" --split val --metrics all \
    --json "$RUN/score.json" --overwrite
"$PY" - "$RUN" <<'EOF'
import json, sys
from pathlib import Path
rows = [json.loads(line) for line in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines()]
rates = [r["images_per_s"] for r in rows[len(rows) // 2:] if "images_per_s" in r]
stop = rows[-1].get("stop", {})
print(f"gpu_check: {stop.get('step')} of {stop.get('steps')} steps ({stop.get('reason')}); "
      f"training {sum(rates) / max(len(rates), 1):,.0f} images/s (second half of the run)")
EOF
