#!/usr/bin/env bash
# Retrofit probes in one device call (issue 14): train the baselines of BASE (default
# bench/probe_arms/base4.txt) unless their checkpoints are in probe_ck (carry it), then start the arms of ARMS
# (default: probe 7's bench/probe_arms/retrofit_state.txt) and, for each baseline X.pt, a control X_h4.pt
# that trains on from the same weights.
#   device tool: run(command="[BASE=...] bash scripts/gpu_retrofit_probe.sh BASE_SECONDS ARM_SECONDS [ARMS]",
#                    carry=["probe_ck"])
set -euo pipefail
OUT=${OUT:-bench/out}
BASE=${BASE:-bench/probe_arms/base4.txt}
mkdir -p probe_ck "$OUT/base"
mapfile -t bases < <(grep -v '^#' "$BASE" | grep -o -- '--checkpoint [^ ]*' | cut -d' ' -f2)
for ck in "${bases[@]}"; do
  [[ -f $ck ]] || { OUT=$OUT/base bash scripts/gpu_recall_probe.sh "$BASE" "${1:-230}"; break; }
done
for ck in "${bases[@]}"; do cp "$ck" "${ck%.pt}_h4.pt"; done
OUT=$OUT bash scripts/gpu_recall_probe.sh "${3:-bench/probe_arms/retrofit_state.txt}" "${2:-230}"
