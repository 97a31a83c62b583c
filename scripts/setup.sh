#!/usr/bin/env bash
# Idempotent set-up of .venv with everything recur needs on a CPU machine.
# torch is pinned first so pip takes the local CPU build instead of a multi-GB CUDA wheel;
# deepspeed builds from source against that torch, so it comes after (no build isolation).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
STAMP=.venv/.recur-setup-done
if [[ -f $STAMP && $STAMP -nt pyproject.toml ]]; then exit 0; fi
[[ -d .venv ]] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==${TORCH_VERSION}"
.venv/bin/pip install -q -e ".[dev,wandb,eval]"
.venv/bin/pip install -q --no-build-isolation "deepspeed>=0.15"
touch "$STAMP"
