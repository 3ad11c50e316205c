"""Speed and memory benchmark on the ADGEN-shaped workload (docs/workload.md).

Builds a ChatGLM3-shaped `GlmForCausalLM` with random weights directly on the target device (nothing is
written to disk), wraps it exactly as `load_model` does (`PrefixTunedLM` + `PrefixEncoder`), and measures:
- train: the real `PrefixTrainer` (the tool's Seq2SeqTrainer subclass) with the tool's `Collator` on a
  `datasets.Dataset` of synthetic samples; timed between optimizer steps after warm-up;
- predict: the real `ptune.generate.generate` on left-padded prompts (the Collator's `prompt_ids`), batches
  sorted by prompt length; whole generate calls timed after one warm-up batch.
Prints one aligned table (and optionally writes it as JSON).

Usage: `python scripts/bench.py --shape tiny` (CPU, seconds) or `--shape 6b --micro_batch 1,4,16,32`.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ptune.errors import UserError
from ptune.model import matmul_params
from ptune.parse import Parser
from ptune.workload import (  # noqa: F401 (make_samples, ... are part of ptune.bench's interface)
    PAD_ID,
    SHAPES,
    SpecialIds,
    build_model,
    make_prompt_samples,
    make_samples,
    special_ids,
    wrap,
)

PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0))

HEADER = (
    "mode",
    "batch",
    "pre_seq_len",
    "samples/s",
    "tokens/s",
    "TFLOP/s",
    "of peak",
    "peak GiB",
)


# ---------------------------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA only: the CPU's peak RSS cannot be reset)."""
    if device.type == "cuda":
        gc.collect()  # free the previous row's Trainer, optimizer state and cache before measuring
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, kind): CUDA peak allocated since the last reset, or the process's peak RSS on the CPU (which
    never resets, so CPU rows show the high-water mark of the whole run so far)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB
    return rss_bytes / 2**30, "rss"


def device_peak_tflops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Dense bf16/fp16 peak of the device when its name is known, else None."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


@dataclass
class Row:
    mode: str  # "train" | "predict"
    micro_batch: int  # predict: the generation batch
    grad_accum: int  # predict: 1
    pre_seq_len: int
    samples: int  # timed samples (predict: prompts)
    tokens: int  # train: real (non-pad) tokens; predict: new tokens
    seconds: float
    samples_per_s: float
    tokens_per_s: float
    tflops: float
    peak_fraction: float | None
    peak_gib: float
    memory_kind: str
    timed_steps: int  # optimizer steps (train) or generate calls (predict)
    step_seconds: float  # train: sum of on_step_begin → on_step_end (without data loading); predict: seconds


class StepTimer:
    """Trainer callback: wall time at each optimizer step's begin and end (after a CUDA sync)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.begin: list[float] = []
        self.end: list[float] = []

    def as_callback(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                sync(timer.device)
                timer.begin.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kwargs):
                sync(timer.device)
                timer.end.append(time.perf_counter())

        return _Callback()


class CountingCollator:
    """The tool's Collator, recording the real (non-pad) token count of every batch in collation order.

    Batches are consumed in collation order (accelerate may collate one batch ahead), so optimizer step k
    trained on batches [k·accum, (k+1)·accum) of `tokens`.
    """

    def __init__(self, collator):
        self.collator = collator
        self.tokens: list[int] = []

    def __call__(self, rows):
        batch = self.collator(rows)
        self.tokens.append(int(batch["attention_mask"].sum()))
        return batch


def train_row(model, samples, args, micro_batch: int, n_params: int, peak: float | None) -> Row:
    """Train `args.warmup_steps + args.steps` optimizer steps with PrefixTrainer; time the last `args.steps`.

    The time of a step is measured from the end of the previous step to its own end, so it includes the
    data loader and collation as well as forward, backward and the optimizer (the wall time a run spends).
    """
    import datasets
    from transformers import PrinterCallback, Seq2SeqTrainingArguments

    from ptune.data import Collator
    from ptune.trainer import PrefixTrainer

    device = model.device
    total_steps = args.warmup_steps + args.steps
    per_step = micro_batch * args.grad_accum
    rows = samples[: total_steps * per_step]
    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": [r["input_ids"] for r in rows],
            "labels": [r["labels"] for r in rows],
            "length": [len(r["input_ids"]) for r in rows],  # read by the group_by_length sampler
        }
    )
    collator = CountingCollator(Collator(pad_id=PAD_ID))
    timer = StepTimer(device)
    reset_peak(device)
    with tempfile.TemporaryDirectory(prefix="ptune-bench-") as out:
        training_args = Seq2SeqTrainingArguments(
            output_dir=out,
            per_device_train_batch_size=micro_batch,
            gradient_accumulation_steps=args.grad_accum,
            max_steps=total_steps,
            learning_rate=2e-2,  # THUDM's P-Tuning v2 rate
            activation_checkpointing=args.activation_checkpointing == "on",
            train_sampling_strategy="group_by_length" if args.group_by_length else "random",
            remove_unused_columns=False,
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            use_cpu=device.type == "cpu",
            seed=args.seed,
        )
        if device.type == "cuda":
            # One GPU, as measured: with several visible the stock Trainer would wrap the model in DataParallel.
            _ = training_args.device  # sets up the device and _n_gpu first
            training_args._n_gpu = 1
        trainer = PrefixTrainer(
            model=model,
            args=training_args,
            train_dataset=dataset,
            data_collator=collator,
            callbacks=[timer.as_callback()],
        )
        trainer.remove_callback(PrinterCallback)  # it prints the end-of-training metrics dict
        trainer.train()
        del trainer
    model.activation_checkpointing_disable()
    model.eval()
    gib, kind = peak_memory(device)
    if len(timer.end) != total_steps:
        raise RuntimeError(f"the Trainer ran {len(timer.end)} optimizer steps, expected {total_steps}")
    w = args.warmup_steps
    start = timer.end[w - 1] if w > 0 else timer.begin[0]
    seconds = timer.end[-1] - start
    step_seconds = sum(e - b for b, e in zip(timer.begin[w:], timer.end[w:], strict=True))
    tokens = sum(collator.tokens[w * args.grad_accum : total_steps * args.grad_accum])
    samples_timed = args.steps * per_step
    # Model FLOPs of a frozen-base prefix step: forward 2·N per token plus the backward pass through the
    # activations 2·N per token (no weight gradients: the base is frozen) = 4·N per real token. The usual
    # 6·N counts weight gradients that are never computed here; attention score FLOPs and the
    # recomputation under activation checkpointing are not counted (model FLOPs, not hardware FLOPs).
    flops = 4 * n_params * tokens
    return _row("train", micro_batch, args.grad_accum, model.pre_seq_len, samples_timed, tokens, seconds,
                flops, peak, gib, kind, args.steps, step_seconds)  # fmt: skip


def predict_row(model, args, batch_size: int, n_params: int, peak: float | None, ids: SpecialIds) -> Row:
    """Generate exactly `args.new_tokens` tokens (sampling, top_p 0.7, temperature 0.95) for
    `args.predict_steps` batches of prompts sorted by length; time whole generate calls after a warm-up call
    on the longest batch."""
    from ptune.data import Collator
    from ptune.generate import GenerationSettings, generate

    device = model.device
    samples = make_prompt_samples(batch_size * args.predict_steps, args.seed + 1, ids)
    collate = Collator(pad_id=ids.pad, with_prompts=True)
    batches = [collate(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]
    settings = GenerationSettings(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        do_sample=True,
        top_p=0.7,
        temperature=0.95,
    )
    g = torch.Generator(device=device).manual_seed(args.seed)
    model.eval()

    def run(batch) -> torch.Tensor:
        return generate(
            model,
            batch["prompt_ids"].to(device),
            batch["prompt_mask"].to(device),
            stop_ids=[ids.eos],
            pad_id=ids.pad,
            settings=settings,
            generator=g,
        )

    reset_peak(device)
    run(batches[-1])
    sync(device)
    seconds, new_tokens, prompt_tokens = 0.0, 0, 0
    for batch in batches:
        start = time.perf_counter()
        out = run(batch)
        sync(device)
        seconds += time.perf_counter() - start
        new_tokens += out.numel()
        prompt_tokens += int(batch["prompt_mask"].sum())
    gib, kind = peak_memory(device)
    # Model FLOPs of inference: 2·N per token through the model, prompt (prefill) and new tokens alike.
    flops = 2 * n_params * (prompt_tokens + new_tokens)
    return _row("predict", batch_size, 1, model.pre_seq_len, len(samples), new_tokens, seconds, flops,
                peak, gib, kind, len(batches), seconds)  # fmt: skip


def _row(mode, mb, accum, psl, samples, tokens, seconds, flops, peak, gib, kind, steps, step_seconds) -> Row:
    seconds = max(seconds, 1e-9)
    tflops = flops / seconds / 1e12
    return Row(
        mode=mode,
        micro_batch=mb,
        grad_accum=accum,
        pre_seq_len=psl,
        samples=samples,
        tokens=tokens,
        seconds=seconds,
        samples_per_s=samples / seconds,
        tokens_per_s=tokens / seconds,
        tflops=tflops,
        peak_fraction=None if peak is None else tflops / peak,
        peak_gib=gib,
        memory_kind=kind,
        timed_steps=steps,
        step_seconds=step_seconds,
    )


# ------------------------------------------------------------------------------------------------- output
def _num(x: float) -> str:
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 0.01:
        return f"{x:.2f}"
    return f"{x:.2e}"


def format_table(rows: list[Row]) -> str:
    """One aligned plain-text table: header, rule, one line per row."""
    cells = [list(HEADER)]
    for r in rows:
        batch = f"{r.micro_batch} x {r.grad_accum}" if r.mode == "train" else str(r.micro_batch)
        fraction = "-" if r.peak_fraction is None else f"{100 * r.peak_fraction:.1f}%"
        memory = f"{r.peak_gib:.2f}" + (" RSS" if r.memory_kind == "rss" else "")
        cells.append(
            [
                r.mode,
                batch,
                str(r.pre_seq_len),
                _num(r.samples_per_s),
                _num(r.tokens_per_s),
                _num(r.tflops),
                fraction,
                memory,
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


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
        "workload (random weights; see docs/workload.md).",
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
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
                   help="auto: bfloat16 on CUDA (float16 without bf16 support), float32 on the CPU")  # fmt: skip
    p.add_argument("--activation_checkpointing", choices=("on", "off"), default="off")
    p.add_argument("--group_by_length", action="store_true", help="train_sampling_strategy group_by_length")
    p.add_argument("--no_train", action="store_true")
    p.add_argument("--no_predict", action="store_true")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="device peak for the 'of peak' column (default: 989 on H100/H200 in bf16/fp16)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quantization_bit",
        type=int,
        choices=(4, 8),
        help="bitsandbytes NF4/int8 decoder linears (the tool's flag)",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def run(args: argparse.Namespace) -> tuple[list[Row], dict]:
    """Every requested configuration: for each pre_seq_len, a train row per micro-batch, then a predict row
    per generation batch. Returns the rows and a description of the run."""
    from ptune.model import resolve_dtype

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {args.device}: CUDA is not available")
        if device.index not in (None, 0):  # the Trainer always trains on cuda:0
            raise UserError(f"--device {args.device}: use CUDA_VISIBLE_DEVICES={device.index} --device cuda")
        device = torch.device("cuda", 0)
    dtype = resolve_dtype(args.dtype, device)
    peak = args.peak_tflops if args.peak_tflops is not None else device_peak_tflops(device, dtype)
    base, cfg = build_model(args.shape, dtype, device, args.seed)
    ids = special_ids(cfg["padded_vocab_size"])
    n_params = matmul_params(base)  # counted before quantization: FLOPs are the same, only storage shrinks
    if args.quantization_bit:
        from ptune.quantize import quantize_decoder

        quantize_decoder(base, args.quantization_bit, device)
    most = max(args.micro_batch) * args.grad_accum * (args.warmup_steps + args.steps)
    samples = [] if args.no_train else make_samples(most, args.seed, ids)
    rows: list[Row] = []
    for psl in args.pre_seq_len:
        model = wrap(base, psl, args.shape, args.seed)
        if not args.no_train:
            for mb in args.micro_batch:
                rows.append(train_row(model, samples, args, mb, n_params, peak))
        if not args.no_predict:
            for pb in args.predict_batch:
                rows.append(predict_row(model, args, pb, n_params, peak, ids))
        del model
    meta = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype)[6:],
        "matmul_params": n_params,
        "peak_tflops": peak,
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
    `ptune bench --serve ...` benchmarks a live `ptune serve` instead (ptune/serve/bench.py)."""
    if argv is not None and "--serve" in argv:
        from ptune.serve import bench as serve_bench

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
    print(format_table(rows))
    print(
        "tokens/s: real (non-pad) tokens for train, new tokens for predict. TFLOP/s: model FLOPs, "
        "4·N per real token for train (frozen base: no weight gradients), 2·N per prompt and new token for "
        "predict."
    )
    if args.json:
        payload = {"meta": meta, "rows": [asdict(r) for r in rows]}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0
