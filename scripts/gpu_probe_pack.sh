#!/usr/bin/env bash
# Bring back a retrofit probe's results within the device tool's limits (8 files, 16 MiB each, 64 MiB in all):
# the base and arm results as one probe.jsonl and one arms.log, and the named checkpoints as single files
# (a tarball of several ~10 MiB checkpoints does not come back). Runs gpu_retrofit_probe.sh with its arguments.
#   device tool: run(command="KEEP='rf.pt rf_s08.pt' BASE=... bash scripts/gpu_probe_pack.sh BASE_S ARM_S ARMS",
#                    carry=["probe_ck"])
set -uo pipefail
FINAL=${OUT:-bench/out}
WORK=$(mktemp -d)
OUT=$WORK bash scripts/gpu_retrofit_probe.sh "$@"
cat "$WORK/gpu.txt" "$WORK"/base/gpu.txt 2>/dev/null | head -1
cat "$WORK"/base/probe.jsonl "$WORK"/probe.jsonl > "$FINAL/probe.jsonl" 2>/dev/null
cat "$WORK"/base/arms.log "$WORK"/arms.log > "$FINAL/arms.log" 2>/dev/null
for ck in ${KEEP:-}; do cp "probe_ck/$ck" "$FINAL/" || echo "no checkpoint probe_ck/$ck"; done
