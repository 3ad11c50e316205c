"""Speed and memory benchmark on the ADGEN-shaped workload (docs/workload.md).

Builds a ChatGLM3-shaped `GlmForCausalLM` with random weights directly on the target device (nothing is
written to disk), wraps it exactly as `load_model` does (`PrefixTunedLM` + `PrefixEncoder`), and measures:
- train: the real `PrefixTrainer` (the tool's Seq2SeqTrainer subclass) with the tool's `Collator` on a
  `datasets.Dataset` of synthetic samples; timed between optimizer steps after warm-up;
- predict: the real `ptune.infer.generate.generate` on left-padded prompts (the Collator's `prompt_ids`), batches
  sorted by prompt length; whole generate calls timed after one warm-up batch.
Prints one aligned table (and optionally writes it as JSON).

Usage: `python scripts/bench.py --shape tiny` (CPU, seconds) or `--shape 6b --micro_batch 1,4,16,32`.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch

from ptune.bench.throughput import Row, device_peak_tflops, format_table, predict_row, train_row
from ptune.bench.workload import (  # noqa: F401 (make_samples, ... are part of ptune.bench.run's interface)
    SHAPES,
    SpecialIds,
    build_model,
    make_prompt_samples,
    make_samples,
    special_ids,
    wrap,
)
from ptune.config.parse import Parser
from ptune.io.errors import UserError
from ptune.io.files import write_json
from ptune.model.load import matmul_params


# --------------------------------------------------------------------------------------------------- CLI
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="ptune bench",
        description="Training and generation throughput and peak memory of ptune on the ADGEN-shaped "
        "workload (random weights; see docs/workload.md). With --serve: the serving benchmark instead "
        "(ptune bench --serve --help).",
    )
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--micro_batch", type=_int_list, default=[4], help="training micro-batches, e.g. 1,4,16")
    p.add_argument("--grad_accum", type=_positive, default=1, help="gradient accumulation steps")
    p.add_argument("--pre_seq_len", type=_int_list, default=[128], help="prefix lengths, e.g. 32,128,512")
    p.add_argument("--steps", type=_positive, default=10, help="timed optimizer steps")
    p.add_argument("--warmup_steps", type=_non_negative, default=2, help="untimed optimizer steps first")
    p.add_argument("--predict_batch", type=_int_list, default=[16], help="generation batches, e.g. 1,16")
    p.add_argument("--predict_steps", type=_positive, default=2, help="timed generate calls per row")
    p.add_argument("--new_tokens", type=_positive, default=64, help="tokens generated for every prompt")
    p.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float16", "float32"),
        default="auto",
        help="auto: bfloat16 on CUDA (float16 without bf16 support), float32 on the CPU",
    )
    p.add_argument("--activation_checkpointing", choices=("on", "off"), default="off")
    p.add_argument("--group_by_length", action="store_true", help="train_sampling_strategy group_by_length")
    p.add_argument("--no_train", action="store_true")
    p.add_argument("--no_predict", action="store_true")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="device peak for the 'of peak' column (default: 989 on H100/H200 in bf16/fp16)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quantization_bit",
        type=int,
        choices=(4, 8),
        help="bitsandbytes NF4/int8 decoder linears (the tool's flag)",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument(  # read by main before this parser: the flags after it are the server benchmark's
        "--serve",
        action="store_true",
        help="benchmark ptune serve instead (streaming clients); its own flags: ptune bench --serve --help",
    )
    return p


def run(args: argparse.Namespace) -> tuple[list[Row], dict]:
    """Every requested configuration: for each pre_seq_len, a train row per micro-batch, then a predict row
    per generation batch. Returns the rows and a description of the run."""
    from ptune.model.load import resolve_dtype

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {args.device}: CUDA is not available")
        if device.index not in (None, 0):  # the Trainer always trains on cuda:0
            raise UserError(f"--device {args.device}: use CUDA_VISIBLE_DEVICES={device.index} --device cuda")
        device = torch.device("cuda", 0)
    dtype = resolve_dtype(args.dtype, device)
    peak = args.peak_tflops if args.peak_tflops is not None else device_peak_tflops(device, dtype)
    peak_source = "given" if args.peak_tflops is not None else "data sheet"
    if peak is None:  # the CPU, or a GPU without a known figure: this machine's timed matmul in this dtype
        from ptune.plan.check import matmul_tflops

        peak, peak_source = matmul_tflops(device, dtype), "measured matmul"
    base, cfg = build_model(args.shape, dtype, device, args.seed)
    ids = special_ids(cfg["padded_vocab_size"])
    n_params = matmul_params(base)  # counted before quantization: FLOPs are the same, only storage shrinks
    if args.quantization_bit:
        from ptune.model.quantize import quantize_decoder

        quantize_decoder(base, args.quantization_bit, device)
    most = max(args.micro_batch) * args.grad_accum * (args.warmup_steps + args.steps)
    samples = [] if args.no_train else make_samples(most, args.seed, ids)
    rows: list[Row] = []
    from ptune.plan.check import bench_inputs, check_row

    for psl in args.pre_seq_len:
        model = wrap(base, psl, args.shape, args.seed)
        planned = bench_inputs(cfg, args.shape, model, args)  # one plan per prefix: traces shared by rows
        if not args.no_train:
            for mb in args.micro_batch:
                rows.append(train_row(model, samples, args, mb, n_params, peak))
                check_row(rows[-1], planned, model)
        if not args.no_predict:
            for pb in args.predict_batch:
                rows.append(predict_row(model, args, pb, n_params, peak, ids))
                check_row(rows[-1], planned, model)
        del model
    meta = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype)[6:],
        "matmul_params": n_params,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "activation_checkpointing": args.activation_checkpointing,
        "group_by_length": args.group_by_length,
        "quantization_bit": args.quantization_bit,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "grad_accum": args.grad_accum,
        "predict_steps": args.predict_steps,
        "new_tokens": args.new_tokens,
        "seed": args.seed,
        "torch": torch.__version__,
    }
    return rows, meta


def main(argv: list[str] | None = None) -> int:
    """`ptune bench [...]`: print the table. Bad input raises UserError (`ptune VERB: error: ...`, exit 2).
    `ptune bench --serve ...` benchmarks a live `ptune serve` instead (ptune/bench/serve.py)."""
    if argv is not None and "--serve" in argv:
        from ptune.bench import serve as serve_bench

        return serve_bench.main([a for a in argv if a != "--serve"])
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the Trainer's info/warnings would interleave with the table
    try:
        rows, meta = run(args)
    finally:
        hf_logging.set_verbosity(verbosity)
    quant = f", int{meta['quantization_bit']} base" if meta["quantization_bit"] else ""
    print(
        f"shape {meta['shape']} (N = {meta['matmul_params']:.3e} matmul params), {meta['device']}, "
        f"{meta['dtype']}{quant}, "
        f"activation checkpointing {meta['activation_checkpointing']}, group_by_length "
        f"{'on' if meta['group_by_length'] else 'off'}; train: {meta['steps']} steps timed after "
        f"{meta['warmup_steps']}; predict: {meta['predict_steps']} batches x {meta['new_tokens']} new tokens"
    )
    print(f"of peak: of {meta['peak_tflops']:.3g} TFLOP/s ({meta['peak_source']})")
    print(format_table(rows))
    print(
        "tokens/s: real (non-pad) tokens for train, new tokens for predict. TFLOP/s: model FLOPs, "
        "4·N per real token for train (frozen base: no weight gradients), 2·N per prompt and new token for "
        "predict. peak GiB: measured (CUDA: max_memory_allocated; CPU: MemTracker over the row's longest batch, "
        "after the timed run); plan GiB: what `ptune plan` predicts for that batch."
    )
    if args.json:
        payload = {"meta": meta, "rows": [asdict(r) for r in rows]}
        write_json(Path(args.json), payload)  # atomically, a NaN as null
    return 0
