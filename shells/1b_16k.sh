#!/bin/bash
# 1B parameters, GQA, 16k context (configs/1b_16k.yaml) on NODES nodes (default 4) of 8 GPUs:
#
#     shells/1b_16k.sh --data.path "$RECUR_DATA_ROOT/<packed 16k dataset>" [train.py flags...]
#
# The job requeues itself on preemption and resumes from its newest checkpoint (shells/launch.sh).
set -euo pipefail
RECUR_SCRIPT=1b_16k
# shellcheck source=shells/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
recur_setup_env
recur_require_file configs/1b_16k.yaml config

job=$(recur_sbatch --job-name=1b_16k --nodes="${NODES:-4}" --time="${TIME:-48:00:00}" shells/launch.sh \
    --config configs/1b_16k.yaml --out_dir "$(recur_out_root)" --run_name "${RUN_NAME:-1b_16k}" "$@")
recur_log "train job $job -> $(recur_out_root)/${RUN_NAME:-1b_16k}"
