#!/bin/bash
# The ablation ladder on slurm: every variant at one size, each evaluated, then one comparison report.
#
#     shells/nano_ladder.sh [SIZE] [train.py flags...]     SIZE: a preset (default nano)
#     VARIANTS="baseline latent" NODES=2 shells/nano_ladder.sh 125M --data.path /data/fineweb_packed
#
# Per variant: a training job (shells/launch.sh, configs/ladder/<variant>.yaml, run <out>/ladder/<SIZE>_<variant>)
# and an eval job after it (shells/eval.sh, suite EVAL_SUITE, default all); the comparison job
# (shells/compare.sh -> <out>/ladder/compare_<SIZE>/) waits for every eval. Extra flags go to every
# training run. Prints the job ids.
set -euo pipefail
RECUR_SCRIPT=nano_ladder
# shellcheck source=shells/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
recur_setup_env

SIZE=nano
if [[ $# -gt 0 && $1 != -* ]]; then
    SIZE=$1
    shift
fi
VARIANTS=${VARIANTS:-"baseline shared_loop latent act ssm ssm_mem"}
OUT=$(recur_out_root)/ladder
for variant in $VARIANTS; do
    recur_require_file "configs/ladder/$variant.yaml" "VARIANTS: config"
done

runs=()
evals=""
for variant in $VARIANTS; do
    run=${SIZE}_$variant
    train=$(recur_sbatch --job-name="ladder-$run" --nodes="${NODES:-1}" shells/launch.sh \
        --config "configs/ladder/$variant.yaml" --model_size "$SIZE" --out_dir "$OUT" --run_name "$run" "$@")
    evaluate=$(recur_sbatch --job-name="eval-$run" --dependency="afterok:$train" shells/eval.sh \
        "$OUT/$run" --suite "${EVAL_SUITE:-all}")
    recur_log "$variant: train job $train, eval job $evaluate"
    runs+=("$OUT/$run")
    evals+=":$evaluate"
done
compare=$(recur_sbatch --job-name="compare-ladder-$SIZE" --dependency="afterok$evals" shells/compare.sh \
    "$OUT/compare_$SIZE" "${runs[@]}")
recur_log "comparison job $compare -> $OUT/compare_$SIZE/compare.md"
