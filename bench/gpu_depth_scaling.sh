#!/usr/bin/env bash
# One device call of the depth-scaling experiment (issue 14): every arm trains at once on the one GPU, then
# is swept over depth; results come back as one tarball plus the report.
#   device tool: run(command="bash bench/gpu_depth_scaling.sh <depth_scaling.py flags>", carry=["wheels"])
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" >> "$OUT/gpu.txt"
WORK=bench/out/depth_scaling
# The device call has a hard limit: stop the experiment in time to bring back what it has.
timeout "${BUDGET_S:-540}" python3 scripts/depth_scaling.py --out_dir "$WORK" --device cuda "$@" 2>&1 \
  | tee "$OUT/depth_scaling.log"
cp -f "$WORK"/depth_scaling.{json,md} "$WORK"/*.png "$OUT/" 2>/dev/null
tar czf "$OUT/runs.tgz" --exclude='checkpoints' --exclude='data' "$WORK"
true
