#!/usr/bin/env bash
# One local NVIDIA GPU: a venv with CUDA jax, then any job in bfloat16.
#
#   bash launch/gpu.sh --config=configs/pretrain/bert_base.py:phase1 --workdir=/tmp/base \
#       [--config.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
if [ ! -f "$VENV/.installed" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e . 'jax[cuda12]'
  touch "$VENV/.installed"
fi
# Let XLA take GPU memory as it needs it rather than 75 % up front, so a
# debugging session can share the card; drop this for full-speed runs.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
exec "$VENV/bin/python" -m train.main --config.model.dtype=bfloat16 \
  --config.model.attention_impl=cudnn "$@"
