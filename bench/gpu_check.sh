#!/usr/bin/env bash
# GPU check: SSL pretraining, embedding, a fine-tuning round and FAISS search on phantoms at 224 px, on the GPU
# (bf16, channels-last, FAISS on the GPU when faiss sees one) beside the CPU; prints images/s. Under 8 minutes.
#
#   bench/gpu_check.sh                      # a machine with an NVIDIA GPU
#   GPU_CHECK_SMALL=1 bench/gpu_check.sh    # small sizes: checks the script itself on a CPU-only box
#
# PYTHON picks the interpreter (default: the repository's .venv); GPU_CHECK_OUT the folder for gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
# every step is sized to finish well inside the limit; the timeout only stops a hung run
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PYTHON" bench/gpu_check.py
