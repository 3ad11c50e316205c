"""`ptune bench`'s check of the plan: for every row, the peak `ptune plan` predicts beside the one measured
(CUDA: torch.cuda.max_memory_allocated; CPU: the same training step / generation measured on the real tensors
by MemTracker, after the timed run so that the tracker's overhead does not touch the speed figures); and the
CPU's matmul peak, timed, for the "of peak" column where no data-sheet figure applies."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from ptune.plan.devices import GIB
from ptune.plan.report import PlanInputs, generate_parts, train_parts
from ptune.plan.trace import trace_generate, trace_train


def bench_inputs(cfg: dict, shape: str, model, args) -> PlanInputs:
    """PlanInputs for the benchmark's random model (its chatglm config.json dict) and flags."""
    return PlanInputs.of_model(
        cfg,
        Path(f"<random {shape}>"),
        model.dtype,
        pre_seq_len=model.pre_seq_len,
        seq=1,
        answer=1,
        prompt=1,
        new_tokens=args.new_tokens,
        bits=args.quantization_bit,
        checkpointing=args.activation_checkpointing == "on",
        device=model.device.type,
    )


def check_row(row, inputs: PlanInputs, model) -> None:
    """Fill `row.plan_gib`; on the CPU also replace the RSS high-water mark by the measured peak of the row's
    longest batch (MemTracker on the real tensors: one training step, or one whole generation)."""
    length, other = row.longest
    if row.mode == "train":
        ckpt = inputs.checkpointing
        inputs = dataclasses.replace(inputs, seq=length, answer=other)  # the same trace cache
        row.plan_gib = sum(train_parts(inputs, row.micro_batch, ckpt).values()) / GIB
        measure = lambda: trace_train(model, row.micro_batch, length, other, ckpt)  # noqa: E731
    else:
        row.plan_gib = sum(generate_parts(inputs, row.micro_batch, length, other).values()) / GIB
        measure = lambda: trace_generate(model, row.micro_batch, length, other)  # noqa: E731
    if model.device.type == "cpu":
        row.peak_gib, row.memory_kind = measure().total / GIB, "memtracker"
        model.eval()


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """This device's dense matmul throughput in `dtype` (TFLOP/s): the best of `repeats` timed [size, size]
    products after one warm-up, 2·size³ FLOPs each. The "of peak" reference where no data sheet applies."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12
