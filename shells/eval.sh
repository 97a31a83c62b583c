#!/bin/bash
# Evaluate a run (newest checkpoint) with eval_hub.py: on one GPU with `sbatch shells/eval.sh RUN_DIR ...`,
# or directly with `shells/eval.sh RUN_DIR ...` on a machine at hand. Results go to RUN_DIR/eval/.
#
#     sbatch shells/eval.sh runs/ladder/nano_baseline --suite all --num_steps 1 4 16
#
#SBATCH --job-name=recur-eval
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
#SBATCH --error=logs/%x-%j.err
set -euo pipefail
RECUR_SCRIPT=eval
COMMON=$(dirname "${BASH_SOURCE[0]}")/common.sh  # under sbatch: a spool copy, so look in the checkout
[[ -f $COMMON ]] || COMMON=${RECUR_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/shells/common.sh
# shellcheck source=shells/common.sh
source "$COMMON"
cd "$RECUR_ROOT"
recur_setup_env

(($# >= 1)) || recur_die "usage: shells/eval.sh RUN_DIR [eval_hub.py flags...]"
[[ -e $1 ]] || recur_die "run directory $1 does not exist"
run=$1
shift
CMD=("$PYTHON" eval_hub.py --checkpoint "$run" "$@")
if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi
exec "${CMD[@]}"
