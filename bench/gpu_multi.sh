#!/usr/bin/env bash
# One device call for the multi-GPU figures (issues 5 and 10), highest priority first; each stage has its own
# time cap so a slow one cannot starve the rest. Results are copied to $OUT after every stage.
#   device tool: run(command="bash bench/gpu_multi.sh", kind="nvidia-h100-x4", carry=["wheels"])
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # a bare checkout: recur (and bench/) import from here
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpus.csv"
python -m pip install -q --no-index --find-links wheels deepspeed jsonargparse 2>&1 | tail -2
save() {  # metrics only: checkpoints stay on the machine
  cp -f bench/out/scaling/results.jsonl "$OUT/" 2>/dev/null
  for m in bench/out/dist/*/metrics.jsonl; do [[ -f $m ]] && cp -f "$m" "$OUT/dist-$(basename "$(dirname "$m")").jsonl"; done
  true
}
timeout 280 python bench/gpu_scaling.py --gpus 1 2 4 --models 760M --steps 6 --results "$OUT/scaling.md"; save
timeout 170 python bench/gpu_dist_check.py --steps 30 --gpus 2 > "$OUT/dist_check.txt" 2>&1; tail -30 "$OUT/dist_check.txt"; save
timeout 150 python bench/gpu_scaling.py --gpus 1 4 --models 1B-16k --steps 4 --no-reshard --results "$OUT/scaling.md"; save
