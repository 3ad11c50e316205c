#!/usr/bin/env bash
# The offline demo: make the tiny ChatGLM3-format base on first use, P-tune a prefix on the shipped sample data
# (eval_rouge-l at step 0, 120 and 240), predict the dev set, then show what the prefix changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tiny model's matrices are too small to gain from a second thread, which only waits when a core is busy.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [ ! -f .cache/demo-base/config.json ]; then
  echo "== 1/4 making the demo's base model in .cache/demo-base (first run only, ~20 s)"
  rm -rf .cache/demo-base.partial  # built aside and renamed when complete: an interrupted run leaves no base
  python -m scripts.make_demo_base .cache/demo-base.partial
  mv .cache/demo-base.partial .cache/demo-base
fi
# ptune never trains over a folder that holds checkpoints: keep the previous demo run aside instead.
if [ -d output/demo ]; then rm -rf output/demo.previous && mv output/demo output/demo.previous; fi
echo "== 2/4 P-tuning a 16-token prefix on data/demo/train.json: 240 steps, evaluated at step 0, 120, 240 (~15 s)"
ptune train configs/demo.json "$@"
echo "== 3/4 predicting data/demo/dev.json with the trained prefix, and with the base alone (--compare_base)"
ptune predict configs/demo.json --ptuning_checkpoint output/demo --compare_base true "$@"
echo "== 4/4 the dev predictions before (the base alone) and after P-tuning"
python scripts/demo_report.py
echo "predictions: output/demo/generated_predictions.txt   curves: output/demo/training_curves.png"
