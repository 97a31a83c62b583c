#!/usr/bin/env bash
# Set up (once) and run the embedded default: a tiny recurrent model on generated algorithmic data, CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python train.py "$@"
