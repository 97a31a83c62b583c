#!/usr/bin/env bash
# Retrofit probes in one device call (issue 14): train the 4-layer baseline (bench/probe_arms/base4.txt) unless
# probe_ck/base4.pt is there (carry it), then start the arms of ARMS (default: probe 7's
# bench/probe_arms/retrofit_state.txt) and the baseline control from that checkpoint.
#   device tool: run(command="bash scripts/gpu_retrofit_probe.sh BASE_SECONDS ARM_SECONDS [ARMS]", carry=["probe_ck"])
set -euo pipefail
OUT=${OUT:-bench/out}
mkdir -p probe_ck "$OUT/base"
[[ -f probe_ck/base4.pt ]] || OUT=$OUT/base bash scripts/gpu_recall_probe.sh bench/probe_arms/base4.txt "${1:-230}"
cp probe_ck/base4.pt probe_ck/base4_h4.pt  # the control trains on from the same weights
OUT=$OUT bash scripts/gpu_recall_probe.sh "${3:-bench/probe_arms/retrofit_state.txt}" "${2:-230}"
