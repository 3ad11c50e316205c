#!/usr/bin/env bash
# One device check on a CUDA machine (one H200 here), from the repository root:
#     bash scripts/gpu_check.sh
# Writes to $OUT (6 files at most: the device tool brings back 8): gpu_check.log (everything printed), steps.tsv
# (step, exit code, seconds), plan_vs_measured_{6b,9b}.json and bench_6b_{ckpt,nockpt}.json; the e2e steps'
# JSON summaries stay in $GPU_CHECK_WORK (their content is printed in the log).
# Steps, most valuable first, each under its own `timeout` and independent of the others:
#   install      the carried wheels (.whl/) into /tmp/site; versions, nvidia-smi
#   plan_6b      ptune plan's predicted peak vs torch.cuda.max_memory_allocated, ChatGLM3-6B shape, 28 layers,
#                bf16, P=128, 64+128 tokens: the README's table (scripts/plan_vs_measured.py --device cuda)
#   bench_ckpt   ptune bench, 6B shape, checkpointing on: train 16/32/64 x 1, predict 16/64 (docs/performance.md)
#   demo         scripts/demo.sh on CUDA (bf16): train 240 steps, predict --compare_base, demo_report
#   eval         ptune eval --compare_base on the demo's prefix
#   gate         ptune train far beyond the GPU: exit 2, one line, before reading weights
#   bench_nockpt ptune bench, 6B shape, checkpointing off: train 32/64 x 1
#   plan_9b      as plan_6b at GLM-4-9B's shape (40 layers, 151,552 words)
#   demo_fp32    the demo's training again in float32 on CUDA (the bf16 loss curve beside it)
#   serve        ptune bench --serve on the demo's base and prefix, on CUDA: 1 and 8 streaming clients
# GPU_CHECK_DEVICE=cpu: a dry run on this CPU (tiny shapes, ~3 minutes on 2 cores). GPU_CHECK_BUDGET (seconds,
# default 300): steps are cut to fit it, and skipped once it is spent. GPU_CHECK_STEPS: a space-separated
# subset of the step names, in the order above.
set -o pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TRANSFORMERS_NO_ADVISORY_WARNINGS=1
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BUDGET=${GPU_CHECK_BUDGET:-300}
STEPS=${GPU_CHECK_STEPS:-install plan_6b bench_ckpt demo eval gate bench_nockpt plan_9b demo_fp32 serve}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
T0=$SECONDS

have_cuda() {
  python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
}

# step NAME LIMIT CMD...: run CMD under `timeout`, cut to what is left of the budget; record rc and seconds.
step() {
  local name=$1 limit=$2 left rc start
  shift 2
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  left=$((BUDGET - (SECONDS - T0)))
  if [ "$left" -lt 15 ]; then
    echo "== [$name] SKIPPED: ${left}s left of the ${BUDGET}s budget"
    printf '%s\tskipped\t0\n' "$name" >>"$OUT/steps.tsv"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo
  echo "== [$name] start $(date +%T), limit ${limit}s, $((SECONDS - T0))s into the check"
  start=$SECONDS
  # the steps are functions: exported (export -f below) so that `timeout` can run them in a child bash
  timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@"
  rc=$?
  [ "$rc" -eq 124 ] && echo "== [$name] TIMED OUT after ${limit}s"
  echo "== [$name] rc=$rc in $((SECONDS - start))s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$OUT/steps.tsv"
  return 0
}

need_gpu() {
  if [ "$DEVICE" = cuda ] && ! have_cuda; then
    echo "FAILED: torch sees no CUDA device (torch.cuda.is_available() is False); GPU_CHECK_DEVICE=cpu dry-runs this step on the CPU"
    return 3
  fi
}

# ----------------------------------------------------------------------------------------------- the steps
do_install() {
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "FAILED: pip install of .whl/*.whl"; return 1; }
  else
    echo "no .whl/ folder: using the installed packages"
  fi
  python3 - <<'EOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
names = ["transformers", "tokenizers", "huggingface-hub", "datasets", "accelerate", "safetensors", "pyarrow",
         "fsspec", "regex", "numpy", "pandas", "jieba", "rouge-chinese", "nltk", "httpx2", "anyio", "idna",
         "typing-extensions", "tqdm", "pyyaml", "sentencepiece", "tiktoken", "protobuf", "hf-xet",
         "fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core", "opentelemetry-api"]
vs = []
for n in names:
    try:
        vs.append(f"{n} {md.version(n)}")
    except md.PackageNotFoundError:
        vs.append(f"{n} MISSING")
print("; ".join(vs))
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
          f"bf16 {torch.cuda.is_bf16_supported()}")
else:
    print("device: no CUDA device visible to torch")
import transformers, datasets, ptune.cli  # noqa: E401,F401 - the imports every step needs
print("imports ok: transformers", transformers.__version__, "datasets", datasets.__version__)
EOF
  local rc=$?
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm --format=csv
  return $rc
}

do_plan() {  # do_plan SHAPE TRAIN GENERATE
  need_gpu || return $?
  if [ "$DEVICE" = cuda ]; then
    python3 scripts/plan_vs_measured.py --device cuda --shape "$1" --bits 0 --train "$2" --generate "$3" \
      --json "$OUT/plan_vs_measured_$1.json"
  else  # dry run: the tiny shape on the CPU, measured by MemTracker
    python3 scripts/plan_vs_measured.py --device cpu --shape tiny --bits 0 --train 1,1c,4 --generate 4x16+8 \
      --json "$OUT/plan_vs_measured_$1.json"
  fi
}

do_bench() {  # do_bench NAME FLAGS...
  need_gpu || return $?
  local name=$1
  shift
  if [ "$DEVICE" = cuda ]; then
    python3 -m ptune bench --shape 6b --device cuda --pre_seq_len 128 --group_by_length "$@" --json "$OUT/$name.json"
  else
    python3 -m ptune bench --shape tiny --device cpu --pre_seq_len 128 --group_by_length --micro_batch 2 \
      --predict_batch 4 --new_tokens 8 --steps 2 --warmup_steps 1 --json "$OUT/$name.json"
  fi
}

do_demo() {
  mkdir -p "$WORK/bin"
  printf '#!/bin/sh\nexec python3 -m ptune "$@"\n' >"$WORK/bin/ptune"  # demo.sh calls `ptune`
  chmod +x "$WORK/bin/ptune"
  PATH="$WORK/bin:$PATH" bash scripts/demo.sh || return $?
  python3 scripts/gpu_check_report.py e2e --train output/demo --predict output/demo --json "$WORK/demo.json"
}

do_eval() {
  [ -f output/demo/model.safetensors ] || { echo "FAILED: no output/demo prefix (the demo step failed)"; return 4; }
  python3 -m ptune eval configs/demo.json --ptuning_checkpoint output/demo --output_dir "$WORK/demo-eval" \
    --compare_base true || return $?
  python3 scripts/gpu_check_report.py e2e --eval "$WORK/demo-eval" --json "$WORK/eval.json"
}

do_demo_fp32() {
  [ -f .cache/demo-base/config.json ] || { echo "FAILED: no demo base (the demo step failed)"; return 4; }
  python3 -m ptune train configs/demo.json --dtype float32 --output_dir "$WORK/demo-fp32" || return $?
  python3 scripts/gpu_check_report.py e2e --train output/demo --train "$WORK/demo-fp32" --json "$WORK/demo_fp32.json"
}

do_serve() {
  [ -f output/demo/model.safetensors ] || { echo "FAILED: no output/demo prefix (the demo step failed)"; return 4; }
  python3 -m ptune bench --serve --model_name_or_path .cache/demo-base --prefix demo=output/demo --device "$DEVICE" \
    --concurrency 1,8 --prefixes 1 --requests 4 --max_tokens 16
}

do_gate() {
  need_gpu || return $?
  python3 scripts/gpu_check_report.py config6b "$WORK/chatglm3-6b-config" || return $?
  local start=$SECONDS rc
  # 64 x 2048 tokens without checkpointing: hundreds of GiB. Only config.json is there: had the gate let it
  # through, loading would fail with another message (no tokenizer, no weights).
  python3 -m ptune train configs/demo.json --model_name_or_path "$WORK/chatglm3-6b-config" \
    --output_dir "$WORK/gate" --pre_seq_len 128 --max_source_length 1024 --max_target_length 1024 \
    --per_device_train_batch_size 64 >"$WORK/gate.log" 2>&1
  rc=$?
  cat "$WORK/gate.log"
  python3 scripts/gpu_check_report.py gate "$WORK/gate.log" "$rc" "$((SECONDS - start))" --json "$WORK/gate.json"
}

export ROOT OUT DEVICE STEPS WORK
export -f have_cuda need_gpu do_install do_plan do_bench do_demo do_eval do_demo_fp32 do_gate do_serve

main() {
  echo "gpu_check: device $DEVICE, budget ${BUDGET}s, steps: $STEPS; $(date -u +%FT%TZ); $(git rev-parse --short HEAD 2>/dev/null)"
  : >"$OUT/steps.tsv"
  mkdir -p "$WORK"
  if ls .whl/*.whl >/dev/null 2>&1; then export PYTHONPATH=/tmp/site:$ROOT; else export PYTHONPATH=$ROOT; fi
  step install 90 do_install
  step plan_6b 110 do_plan 6b 1,1c,8,8c,16,16c 16x64+128,32x2046+2
  step bench_ckpt 120 do_bench bench_6b_ckpt --activation_checkpointing on --micro_batch 16,32,64 \
    --predict_batch 16,64 --new_tokens 64 --steps 5 --warmup_steps 2 --predict_steps 1
  step demo 120 do_demo
  step eval 45 do_eval
  step gate 60 do_gate
  step bench_nockpt 80 do_bench bench_6b_nockpt --activation_checkpointing off --micro_batch 32,64 --no_predict \
    --steps 5 --warmup_steps 2
  step plan_9b 90 do_plan 9b 1,1c,8c,16,16c 16x64+128
  step demo_fp32 60 do_demo_fp32
  step serve 60 do_serve
  echo
  echo "== summary ($((SECONDS - T0))s): step, exit code, seconds"
  cat "$OUT/steps.tsv"
  [ "$DEVICE" = cuda ] && have_cuda && nvidia-smi --query-gpu=memory.used,clocks.sm --format=csv,noheader
  return 0
}

main 2>&1 | tee "$OUT/gpu_check.log"
