#!/usr/bin/env bash
# ptune train under DeepSpeed ZeRO-2 (the launcher of THUDM's ds_train_finetune.sh). UNTESTED: needs GPUs and
# `pip install deepspeed`. Read docs/multi-gpu.md first: scripts/train.sh (torchrun) is the tested way, and
# ZeRO-2 saves next to nothing when only the prefix trains.
#   NUM_GPUS=4 bash scripts/ds_train.sh configs/chatglm3-6b-adgen.json [--flag value ...]
# Hyperparameters come from the config and the flags only: scripts/ds_zero2.json sets every value to "auto".
set -euo pipefail
NUM_GPUS=${NUM_GPUS:-1}
MASTER_PORT=${MASTER_PORT:-29500}
deepspeed --num_gpus="$NUM_GPUS" --master_port="$MASTER_PORT" --module ptune train "$@" \
  --deepspeed "$(dirname "$0")/ds_zero2.json"
