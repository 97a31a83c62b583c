#!/usr/bin/env bash
# Several arms of scripts/recall_probe.py at once on one GPU (issue 14 research): one arm per line of ARMS
# (recall_probe.py flags), each appending its result to $OUT/probe.jsonl; the logs come back as one file,
# $OUT/arms.log (the device tool brings back only a few files).
#   device tool: run(command="bash scripts/gpu_recall_probe.sh ARMS_FILE SECONDS")
# Runs longer than one call: give arms `--checkpoint probe_ck/<name>.pt`; the folder comes back as
# $OUT/probe_ck.tgz; unpack it in the repo root and pass carry=["probe_ck"] to the next call to resume.
set -uo pipefail
ARMS=$1 SECONDS_PER_ARM=${2:-420}
OUT=${OUT:-bench/out}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>/dev/null
n=0
while read -r line; do
  [[ -z "$line" || "$line" == \#* ]] && continue
  n=$((n + 1))
  # shellcheck disable=SC2086  # the line is a list of flags
  python3 scripts/recall_probe.py --device "${DEVICE:-cuda}" --time_limit_s "$SECONDS_PER_ARM" \
    --out "$OUT/probe.jsonl" $line > "$LOGS/arm_$n.log" 2>&1 &
done < "$ARMS"
wait
for log in "$LOGS"/arm_*.log; do echo "== $log"; cat "$log"; done > "$OUT/arms.log"
[ -d probe_ck ] && tar czf "$OUT/probe_ck.tgz" probe_ck
tail -n 8 "$LOGS"/arm_*.log | grep -v '^{' 
