#!/bin/bash
# Retrofit a pretrained Llama into a recurrent-depth model, then train it (configs/retrofit_two_phase.yaml):
#
#     shells/retrofit.sh HF_MODEL_DIR PRELUDE START BLOCK CODA [train.py flags...]
#     shells/retrofit.sh "$RECUR_HF_ROOT/TinyLlama-1.1B" 4 10 8 4 --data.path /data/packed
#
# Layers [0, PRELUDE) become the prelude, [START, START+BLOCK) the recurrent block, the last CODA layers the
# coda (utils/layer_analysis.py suggests a split). The conversion runs here, once per split, into
# <out>/retrofit_init/<model>-P-S-B-C; the training job (shells/launch.sh, NODES nodes, default 1) starts
# from it with --init_from.
set -euo pipefail
RECUR_SCRIPT=retrofit
# shellcheck source=shells/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
recur_setup_env

(($# >= 5)) || recur_die "usage: shells/retrofit.sh HF_MODEL_DIR PRELUDE START BLOCK CODA [train.py flags...]"
model=$1 prelude=$2 start=$3 block=$4 coda=$5
shift 5
[[ -f $model/config.json ]] || recur_die "HF_MODEL_DIR $model has no config.json (a local Hugging Face model)"
model=$(cd "$model" && pwd)  # the conversion runs from the checkout
recur_require_file configs/retrofit_two_phase.yaml config

name=$(basename "$model")-$prelude-$start-$block-$coda
init=$(recur_out_root)/retrofit_init/$name
if [[ -f $init/model.safetensors ]]; then
    recur_log "using the existing conversion $init"
else
    recur_log "converting $model -> $init"
    (cd "$RECUR_ROOT" && "$PYTHON" utils/convert_hf.py --arch llama --model_path "$model" --out "$init" \
        --prelude_size "$prelude" --start_index "$start" --block_size "$block" --coda_size "$coda")
fi

job=$(recur_sbatch --job-name="retrofit-$name" --nodes="${NODES:-1}" shells/launch.sh \
    --config configs/retrofit_two_phase.yaml --init_from "$init" --out_dir "$(recur_out_root)" \
    --run_name "retrofit_$name" "$@")
recur_log "train job $job -> $(recur_out_root)/retrofit_$name"
