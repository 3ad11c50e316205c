#!/usr/bin/env bash
# The offline demo: make the tiny ChatGLM3-format checkpoint on first use, P-tune it on the shipped sample
# data (watch eval_rouge-l rise from the step-0 evaluation), then predict and score the dev set.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .cache/tiny-chatglm3/config.json ]; then
  python scripts/make_tiny.py .cache/tiny-chatglm3 --family chatglm3 --pretrain data/demo/train.json --pretrain_steps 400
fi
# ptune never trains over a folder that holds checkpoints: keep the previous demo run aside instead.
if [ -d output/demo ]; then rm -rf output/demo.previous && mv output/demo output/demo.previous; fi
ptune train configs/demo.json "$@"
ptune predict configs/demo.json --ptuning_checkpoint output/demo "$@"
echo "predictions: output/demo/generated_predictions.txt   curves: output/demo/training_curves.png"
