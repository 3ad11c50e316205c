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

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

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
from ptune.config.argtypes import at_least, check_choices
from ptune.config.fields import (
    Dtype,
    check_quantization_bit,
    device_field,
    dtype_field,
    int_list_field,
    quantization_bit_field,
)
from ptune.config.parser import Command, parse_command
from ptune.io.errors import UserError
from ptune.io.files import write_json
from ptune.model.load import matmul_params


# --------------------------------------------------------------------------------------------------- CLI
@dataclass
class BenchArguments:
    """`ptune bench`'s arguments (`ptune bench --serve` reads ptune.bench.serve's ServeBenchArguments instead)."""

    shape: Literal[tuple(sorted(SHAPES))] = field(default="tiny", metadata={"help": "model shape"})  # type: ignore[valid-type]
    micro_batch: list[int] = int_list_field([4], "training micro-batches, e.g. 1,4,16")
    grad_accum: int = field(default=1, metadata={"parse": at_least(1), "help": "gradient accumulation steps"})
    pre_seq_len: list[int] = int_list_field([128], "prefix lengths, e.g. 32,128,512")
    steps: int = field(default=10, metadata={"parse": at_least(1), "help": "timed optimizer steps"})
    warmup_steps: int = field(
        default=2, metadata={"parse": at_least(0), "help": "untimed optimizer steps first"}
    )
    predict_batch: list[int] = int_list_field([16], "generation batches, e.g. 1,16")
    predict_steps: int = field(
        default=2, metadata={"parse": at_least(1), "help": "timed generate calls per row"}
    )
    new_tokens: int = field(
        default=64, metadata={"parse": at_least(1), "help": "tokens generated for every prompt"}
    )
    dtype: Dtype = dtype_field()
    activation_checkpointing: Literal["on", "off"] = "off"
    group_by_length: bool = field(default=False, metadata={"help": "train_sampling_strategy group_by_length"})
    no_train: bool = False
    no_predict: bool = False
    device: str | None = device_field("cuda, cuda:N or cpu (default: cuda when available)")
    peak_tflops: float | None = field(
        default=None,
        metadata={"help": "device peak for the 'of peak' column (default: 989 on H100/H200 in bf16/fp16)"},
    )
    seed: int = 0
    quantization_bit: int | None = quantization_bit_field()
    json: str | None = field(default=None, metadata={"help": "also write the results to this JSON file"})
    serve: bool = field(  # read by main before the parser: the flags after it are the server benchmark's
        default=False,
        metadata={
            "switch": True,
            "help": "benchmark ptune serve instead (streaming clients); its own flags: ptune bench --serve --help",
        },
    )

    def __post_init__(self):
        check_choices(self)
        check_quantization_bit(self)


COMMAND = Command(
    "ptune bench",
    (BenchArguments,),
    "Training and generation throughput and peak memory of ptune on the ADGEN-shaped workload (random "
    "weights; see docs/workload.md). With --serve: the serving benchmark instead (ptune bench --serve --help).",
)


def run(args: BenchArguments) -> tuple[list[Row], dict]:
    """Every requested configuration: for each pre_seq_len, a train row per micro-batch, then a predict row
    per generation batch. Returns the rows and a description of the run."""
    from ptune.model.devices import resolve_dtype

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
    (args,) = parse_command(COMMAND, argv)
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
