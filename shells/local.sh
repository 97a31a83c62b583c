#!/bin/bash
# Train on one machine without slurm:
#
#     shells/local.sh [train.py flags...]             NPROC processes (default: one per GPU, else 1)
#     NPROC=4 shells/local.sh --config configs/x.yaml
#
# NPROC=1 runs plain `python train.py`; NPROC>1 runs `torchrun --standalone --nproc-per-node NPROC` (gloo
# on CPU, NCCL on GPU). Rerunning the same command resumes from the run's newest checkpoint
# (--checkpoint.resume auto unless a flag says otherwise). DRY_RUN=1 prints the command instead.
set -euo pipefail
RECUR_SCRIPT=local
# shellcheck source=shells/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$RECUR_ROOT"
recur_setup_env

if [[ -z ${NPROC:-} ]]; then
    NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    ((NPROC > 0)) || NPROC=1
fi
[[ $NPROC =~ ^[1-9][0-9]*$ ]] || recur_die "NPROC=$NPROC: expected a positive number of processes"
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}  # see shells/launch.sh
export TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}
export NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1}

if ((NPROC == 1)); then
    CMD=("$PYTHON" train.py --checkpoint.resume auto "$@")
else
    CMD=("$PYTHON" -m torch.distributed.run --standalone --nproc-per-node="$NPROC" train.py
         --checkpoint.resume auto "$@")
fi
if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi
exec "${CMD[@]}"
