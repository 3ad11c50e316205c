#!/usr/bin/env bash
# THUDM's ptuning/evaluate.sh, on ptune: eval_loss + ROUGE/BLEU of a prefix checkpoint on the dev set.
#   NUM_GPUS=1 bash scripts/evaluate.sh configs/chatglm2-6b-adgen.json --ptuning_checkpoint output/.../checkpoint-3000
set -euo pipefail
NUM_GPUS=${NUM_GPUS:-1}
torchrun --standalone --nnodes=1 --nproc-per-node="$NUM_GPUS" -m ptune eval "$@" --predict_with_generate true
