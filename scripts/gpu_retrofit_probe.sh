#!/usr/bin/env bash
# Probe 7 in one device call (issue 14): train the 4-layer baseline (bench/probe_arms/base4.txt), then start
# the retrofit arms and the baseline control of bench/probe_arms/retrofit_state.txt from its checkpoint.
#   device tool: run(command="bash scripts/gpu_retrofit_probe.sh BASE_SECONDS ARM_SECONDS")
set -euo pipefail
OUT=${OUT:-bench/out}
mkdir -p probe_ck "$OUT/base"
OUT=$OUT/base bash scripts/gpu_recall_probe.sh bench/probe_arms/base4.txt "${1:-230}"
cp probe_ck/base4.pt probe_ck/base4_h4.pt  # the control trains on from the same weights
OUT=$OUT bash scripts/gpu_recall_probe.sh bench/probe_arms/retrofit_state.txt "${2:-230}"
