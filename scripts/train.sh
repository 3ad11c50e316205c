#!/usr/bin/env bash
# THUDM's ptuning/train.sh, on ptune: P-tune ChatGLM2-6B on ADGEN with torchrun.
#   NUM_GPUS=1 bash scripts/train.sh configs/chatglm2-6b-adgen.json [--flag value ...]
# Hyperparameters live in the config; flags after it override them.
set -euo pipefail
NUM_GPUS=${NUM_GPUS:-1}
torchrun --standalone --nnodes=1 --nproc-per-node="$NUM_GPUS" -m ptune train "$@"
