#!/usr/bin/env bash
# Generate answers for test_file with a prefix checkpoint: generated_predictions.txt + predict_results.json.
#   NUM_GPUS=1 bash scripts/predict.sh configs/chatglm2-6b-adgen.json --ptuning_checkpoint output/.../checkpoint-3000
set -euo pipefail
NUM_GPUS=${NUM_GPUS:-1}
torchrun --standalone --nnodes=1 --nproc-per-node="$NUM_GPUS" -m ptune predict "$@"
