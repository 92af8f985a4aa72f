#!/usr/bin/env bash
# GPU throughput of resnet18 and se_resnet18 at 256 px: fp32 against AMP + channels-last (see bench/gpu.py).
# Usage: bash bench/gpu.sh DATA_ROOT   (or the dataset root in ODIR_DATA)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PYTHON" -m bench.gpu "$@"
