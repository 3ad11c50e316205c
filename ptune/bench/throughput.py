"""Measuring one benchmark row (docs/workload.md): training throughput with the real `PrefixTrainer` and
`Collator`, generation throughput with the real `generate`, FLOPs and peak memory; and the aligned table.
`ptune bench` (ptune/bench/run.py) decides which rows to run and prints them.
"""

from __future__ import annotations

import gc
import math
import resource
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from ptune.bench.workload import PAD_ID, SpecialIds, make_prompt_samples
from ptune.data.labels import IGNORE_INDEX

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
    "plan GiB",
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
    longest: tuple[int, int] = (0, 0)  # train: (tokens, supervised tokens per row) of the longest batch;
    # predict: (prompt tokens, new tokens) of the longest batch; what `ptune plan` predicts the peak for
    plan_gib: float | None = None  # the plan's predicted peak for this row (ptune.plan.check)


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
        self.shapes: list[tuple[int, int]] = []  # (padded length, supervised tokens per row rounded up)

    def __call__(self, rows):
        batch = self.collator(rows)
        self.tokens.append(int(batch["attention_mask"].sum()))
        supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        self.shapes.append((batch["input_ids"].shape[1], -(-supervised // batch["input_ids"].shape[0])))
        return batch


def train_row(model, samples, args, micro_batch: int, n_params: int, peak: float | None) -> Row:
    """Train `args.warmup_steps + args.steps` optimizer steps with PrefixTrainer; time the last `args.steps`.

    The time of a step is measured from the end of the previous step to its own end, so it includes the
    data loader and collation as well as forward, backward and the optimizer (the wall time a run spends).
    """
    import datasets
    from transformers import PrinterCallback, Seq2SeqTrainingArguments

    from ptune.data.rows import Collator
    from ptune.train.trainer import PrefixTrainer

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
    row = _row(
        "train",
        micro_batch,
        args.grad_accum,
        model.pre_seq_len,
        samples_timed,
        tokens,
        seconds,
        flops,
        peak,
        gib,
        kind,
        args.steps,
        step_seconds,
    )
    row.longest = max(collator.shapes)
    return row


def predict_row(model, args, batch_size: int, n_params: int, peak: float | None, ids: SpecialIds) -> Row:
    """Generate exactly `args.new_tokens` tokens (sampling, top_p 0.7, temperature 0.95) for
    `args.predict_steps` batches of prompts sorted by length; time whole generate calls after a warm-up call
    on the longest batch."""
    from ptune.data.rows import Collator
    from ptune.infer.generate import GenerationSettings, generate

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
    row = _row(
        "predict",
        batch_size,
        1,
        model.pre_seq_len,
        len(samples),
        new_tokens,
        seconds,
        flops,
        peak,
        gib,
        kind,
        len(batches),
        seconds,
    )
    row.longest = (max(b["prompt_ids"].shape[1] for b in batches), args.new_tokens)
    return row


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


def _gib(x: float) -> str:
    """GiB with two decimals, or three significant digits below 1 GiB (the tiny shape's MiB)."""
    return f"{x:.2f}" if x >= 1 else f"{x:.3g}"


def format_table(rows: list[Row]) -> str:
    """One aligned plain-text table: header, rule, one line per row."""
    cells = [list(HEADER)]
    for r in rows:
        batch = f"{r.micro_batch} x {r.grad_accum}" if r.mode == "train" else str(r.micro_batch)
        fraction = "-" if r.peak_fraction is None else f"{100 * r.peak_fraction:.1f}%"
        memory = _gib(r.peak_gib) + (" RSS" if r.memory_kind == "rss" else "")
        plan = "-" if r.plan_gib is None else _gib(r.plan_gib)
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
                plan,
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
