#!/bin/bash
# Comparison report of finished, evaluated runs (compare_runs.py): CPU only, minutes.
#
#     sbatch [--dependency=afterok:...] shells/compare.sh OUT_DIR RUN_DIR RUN_DIR...
#
#SBATCH --job-name=recur-compare
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --time=01:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --error=logs/%x-%j.err
set -euo pipefail
RECUR_SCRIPT=compare
COMMON=$(dirname "${BASH_SOURCE[0]}")/common.sh  # under sbatch: a spool copy, so look in the checkout
[[ -f $COMMON ]] || COMMON=${RECUR_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/shells/common.sh
# shellcheck source=shells/common.sh
source "$COMMON"
cd "$RECUR_ROOT"
recur_setup_env

(($# >= 2)) || recur_die "usage: shells/compare.sh OUT_DIR RUN_DIR [RUN_DIR...]"
out=$1
shift
exec "$PYTHON" compare_runs.py "$@" --out_dir "$out"
