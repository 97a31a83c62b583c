# Sourced by every script in shells/: where the checkout is, the cluster's environment, job submission.
# shellcheck shell=bash

recur_log() { echo "[${RECUR_SCRIPT:-shells}] $*" >&2; }
recur_die() { recur_log "error: $*"; exit 2; }

# The checkout this file belongs to (sbatch runs a spool copy of the submitted script, never of this file).
RECUR_ROOT=${RECUR_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export RECUR_ROOT
# utils/ and bench/ scripts import recur from the checkout whether or not it is installed.
export PYTHONPATH=$RECUR_ROOT${PYTHONPATH:+:$PYTHONPATH}

# Cluster-specific settings (shells/machine_config.sh, or the file named by $RECUR_MACHINE_CONFIG):
# module loads, the virtual environment, data and output roots. Sets PYTHON to the interpreter to use.
recur_setup_env() {
    local config=${RECUR_MACHINE_CONFIG:-$RECUR_ROOT/shells/machine_config.sh}
    if [[ -n ${RECUR_MACHINE_CONFIG:-} && ! -f $RECUR_MACHINE_CONFIG ]]; then
        recur_die "RECUR_MACHINE_CONFIG=$RECUR_MACHINE_CONFIG does not exist"
    fi
    if [[ -f $config ]]; then
        # shellcheck source=/dev/null
        source "$config"
    fi
    if [[ -n ${RECUR_MODULES:-} ]]; then
        command -v module >/dev/null || recur_die "RECUR_MODULES is set but the 'module' command is missing"
        # shellcheck disable=SC2086  # a space-separated list of modules
        module load $RECUR_MODULES
    fi
    if [[ -n ${RECUR_VENV:-} ]]; then
        [[ -f $RECUR_VENV/bin/activate ]] || recur_die "RECUR_VENV=$RECUR_VENV has no bin/activate"
        # shellcheck source=/dev/null
        source "$RECUR_VENV/bin/activate"
    fi
    PYTHON=${PYTHON:-python}
    command -v "$PYTHON" >/dev/null || recur_die "python interpreter '$PYTHON' not found (set RECUR_VENV or PYTHON)"
}

# recur_sbatch [sbatch options...] SCRIPT [args...]: submit from the checkout, print the job id.
# The job's output goes to logs/ (created here: slurm does not create the directory of --output).
recur_sbatch() {
    mkdir -p "$RECUR_ROOT/logs"
    (cd "$RECUR_ROOT" && sbatch --parsable "$@") | cut -d';' -f1
}

# Where runs go: $RECUR_OUT_ROOT from the machine config, else runs/ in the checkout.
recur_out_root() { echo "${RECUR_OUT_ROOT:-$RECUR_ROOT/runs}"; }

recur_require_file() {  # recur_require_file PATH WHAT
    [[ -f $RECUR_ROOT/$1 || -f $1 ]] || recur_die "$2 $1 does not exist"
}
