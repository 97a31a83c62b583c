#!/bin/bash
# Generic multi-node launcher for train.py.  Submit from the repository root:
#
#     mkdir -p logs && sbatch [--nodes=N ...] shells/launch.sh --config configs/x.yaml [train.py flags...]
#
# Every argument goes to train.py. Command-line sbatch options override the header below
# (e.g. `--gpus-per-node=0 --ntasks-per-node=2` for a CPU run).
#
# Modes (LAUNCH_MODE):
#   srun      one task per GPU (per --ntasks-per-node on CPU); train.py reads SLURM_PROCID / SLURM_NTASKS /
#             SLURM_LOCALID and MASTER_ADDR / MASTER_PORT exported here (default)
#   torchrun  one torchrun per node (`srun --ntasks-per-node=1 torchrun --nnodes ... --rdzv_backend c10d`),
#             NPROC_PER_NODE workers each (default: GPUs per node, or --ntasks-per-node on CPU)
#
# Preemption: slurm sends USR1 to this shell PREEMPT_GRACE seconds (header: --signal=B:USR1@300) before the
# time limit, or at once with `scancel --signal=USR1 --batch <job>`. The trap forwards it to the training
# step, whose ranks checkpoint at the end of the current step and exit 0; once the step is gone the job
# requeues itself (`scontrol requeue`) and the next start resumes with `--checkpoint.resume auto`.
#
# DRY_RUN=1 prints the environment and the command instead of running it (used by tests/test_shells.py).
#
#SBATCH --job-name=recur
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
#SBATCH --error=logs/%x-%j.err
set -euo pipefail

RECUR_SCRIPT=launch
# Under sbatch this file is a spool copy: common.sh is then found in the checkout the job was submitted from.
COMMON=$(dirname "${BASH_SOURCE[0]}")/common.sh
[[ -f $COMMON ]] || COMMON=${RECUR_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/shells/common.sh
[[ -f $COMMON ]] || { echo "[launch] error: $COMMON not found: submit from the checkout or set RECUR_ROOT" >&2; exit 2; }
# shellcheck source=shells/common.sh
source "$COMMON"
cd "$RECUR_ROOT"
recur_setup_env

for var in SLURM_JOB_ID SLURM_JOB_NODELIST SLURM_NNODES; do
    [[ -n ${!var:-} ]] || recur_die "$var is not set: submit with sbatch (shells/local.sh runs on one machine)"
done

# First host of a slurm hostlist ("gpu[07-09,12],cpu1" -> gpu07). scontrol is authoritative; the parser
# below covers machines without slurm's client tools (dry runs).
first_host() {
    local hosts
    if hosts=$(scontrol show hostnames "$1" 2>/dev/null) && [[ -n $hosts ]]; then
        echo "${hosts%%$'\n'*}"
        return
    fi
    local rest=$1 host="" literal
    while [[ -n $rest ]]; do
        literal=${rest%%[\[,]*}
        host+=$literal
        rest=${rest:${#literal}}
        [[ $rest == \[* ]] || break
        rest=${rest#\[}
        host+=${rest%%[,\]-]*}  # the first value of the bracket keeps its zero padding
        rest=${rest#*\]}
    done
    echo "$host"
}

# Slurm writes per-node counts as "8" or "8(x2)"; the first node's count stands for all (homogeneous jobs).
per_node() { local value=${1%%[(,]*}; echo "${value##*:}"; }

NNODES=$SLURM_NNODES
GPUS_PER_NODE=$(per_node "${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-0}}")
TASKS_PER_NODE=$(per_node "${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-1}}")
if ((GPUS_PER_NODE > 0)); then
    PROCS_PER_NODE=${NPROC_PER_NODE:-$GPUS_PER_NODE}
else  # CPU mode: the processes per node are the tasks asked for (gloo)
    PROCS_PER_NODE=${NPROC_PER_NODE:-$TASKS_PER_NODE}
fi
CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
RESTARTS=${SLURM_RESTART_COUNT:-0}
LAUNCH_MODE=${LAUNCH_MODE:-srun}
PREEMPT_GRACE=${PREEMPT_GRACE:-240}  # seconds torchrun waits for its workers' checkpoint before SIGKILL

export MASTER_ADDR=${MASTER_ADDR:-$(first_host "$SLURM_JOB_NODELIST")}
# 15000-24999: clear of the ephemeral range; two jobs sharing a node differ by job id.
export MASTER_PORT=${MASTER_PORT:-$((15000 + SLURM_JOB_ID % 10000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$CPUS_PER_TASK}

# NCCL / PyTorch. NVLink SHARP (NVLS, multicast) stays off: on shared hosts a program using it can take
# the node's GPUs out of service, and many fabric-manager setups fail at communicator init with it on.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}
export NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# A failed or timed-out collective tears the process down (and srun --kill-on-bad-exit the step) instead of
# leaving the other ranks hanging until the wall-clock limit.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

# The first start honours the caller's --checkpoint.resume (default auto: a fresh start when the run has no
# checkpoint); a requeued start always resumes from the newest complete checkpoint of the run.
if ((RESTARTS == 0)); then
    TRAIN_ARGS=(--checkpoint.resume auto "$@")
else
    TRAIN_ARGS=("$@" --checkpoint.resume auto)
fi

case $LAUNCH_MODE in
    srun)
        CMD=(srun --kill-on-bad-exit=1 --nodes="$NNODES" --ntasks=$((NNODES * PROCS_PER_NODE))
             --ntasks-per-node="$PROCS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK"
             "$PYTHON" train.py "${TRAIN_ARGS[@]}")
        ;;
    torchrun)
        CMD=(srun --kill-on-bad-exit=1 --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1
             --cpus-per-task="${SLURM_CPUS_ON_NODE:-$((CPUS_PER_TASK * PROCS_PER_NODE))}"
             "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$PROCS_PER_NODE"
             --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID"
             --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout="$PREEMPT_GRACE"
             train.py "${TRAIN_ARGS[@]}")
        ;;
    *) recur_die "LAUNCH_MODE=$LAUNCH_MODE: expected srun or torchrun" ;;
esac

recur_log "job $SLURM_JOB_ID start (restart $RESTARTS) on $NNODES node(s) [$SLURM_JOB_NODELIST]:" \
    "$LAUNCH_MODE, $PROCS_PER_NODE process(es)/node, $GPUS_PER_NODE GPU(s)/node, master $MASTER_ADDR:$MASTER_PORT"
if [[ ${DRY_RUN:-0} == 1 ]]; then
    echo "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT OMP_NUM_THREADS=$OMP_NUM_THREADS"
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi

# The step runs in the background so that bash can run the USR1 trap while it waits.
PREEMPTED=0
INTERRUPTED=0
STEP_PID=
on_preempt() {
    INTERRUPTED=1
    ((PREEMPTED)) && return
    PREEMPTED=1
    recur_log "USR1: asking the training step to checkpoint and exit"
    [[ -n $STEP_PID ]] && kill -USR1 "$STEP_PID" 2>/dev/null || true  # srun forwards it to every task
}
trap on_preempt USR1
"${CMD[@]}" &
STEP_PID=$!
while :; do
    INTERRUPTED=0
    wait "$STEP_PID" && status=0 || status=$?
    ((INTERRUPTED)) || break  # `wait` returns early when the trap ran; the step may still be running
done

if ((PREEMPTED)); then
    recur_log "training step exited ($status) after USR1; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
recur_log "training step exited ($status)"
exit "$status"
