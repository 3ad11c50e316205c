#!/usr/bin/env bash
# ptune train with the frozen base sharded over the GPUs by FSDP (each GPU holds 1/NUM_GPUS of the decoder
# layers' weights; the prefix and its Adam state are gathered into ordinary prefix-only checkpoints).
#   NUM_GPUS=4 bash scripts/fsdp_train.sh configs/glm4-9b-adgen.json [--flag value ...]
# Several machines: the same NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT as scripts/train.sh.
# The FSDP settings are in scripts/fsdp_config.json; eval and predict run in one process (ptune refuses --fsdp there).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
exec bash "$HERE/train.sh" "$@" --fsdp "full_shard auto_wrap" --fsdp_config "$HERE/fsdp_config.json"
