#!/usr/bin/env bash
# THUDM's ptuning/train.sh, on ptune: P-tune with torchrun, on one machine or several.
#   NUM_GPUS=4 bash scripts/train.sh configs/chatglm3-6b-adgen.json [--flag value ...]
# Several machines: run the same command on every machine, each with its NODE_RANK (0 .. NNODES-1):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 NUM_GPUS=8 bash scripts/train.sh CONFIG.json ...
# MASTER_ADDR:MASTER_PORT is where torchrun's c10d rendezvous listens (on the machine with NODE_RANK 0).
# Hyperparameters live in the config; flags after it override them.
set -euo pipefail
NUM_GPUS=${NUM_GPUS:-1}
NNODES=${NNODES:-1}
if [ "$NNODES" = 1 ]; then
  exec torchrun --standalone --nnodes=1 --nproc-per-node="$NUM_GPUS" -m ptune train "$@"
fi
: "${NODE_RANK:?set NODE_RANK (0 .. NNODES-1) on each machine}"
: "${MASTER_ADDR:?set MASTER_ADDR to the address of the machine with NODE_RANK 0}"
MASTER_PORT=${MASTER_PORT:-29500}
# c10d: NODE_RANK 0 hosts the rendezvous at MASTER_ADDR:MASTER_PORT. torchrun numbers the machines itself, in the
# order of their addresses (host names, or NODE_ADDR where set): the same machines get the same ranks again
# after a restart, which a run writing into each machine's own folder (--save_on_each_node) needs for its RNG files.
IS_HOST=$([ "$NODE_RANK" = 0 ] && echo 1 || echo 0)
exec torchrun --nnodes="$NNODES" --nproc-per-node="$NUM_GPUS" --rdzv-backend=c10d \
  --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="${RDZV_ID:-ptune}" --rdzv-conf="is_host=$IS_HOST" \
  ${NODE_ADDR:+--local-addr="$NODE_ADDR"} -m ptune train "$@"
