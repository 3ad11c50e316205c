"""Predicted (`ptune plan`, fake tensors) against measured (the same step on real tensors) peak memory of a
training step with and without activation checkpointing, and of a generation, for the benchmark's ChatGLM3-6B
shape (or GLM-4-9B's: 40 layers, 151,552-word vocabulary), random weights, at bf16 / int8 / int4.

    python scripts/plan_vs_measured.py --layers 2 --bits 0,8,4      # CPU: ~2 GB of memory, minutes on 2 cores
    python scripts/plan_vs_measured.py --device cuda --shape 6b --train 1,1c,8,8c,16,16c \\
        --generate 16x64+128,32x2046+2 --json pvm.json              # GPU: the README's table, full depth

CPU: measured by MemTracker on the real tensors (what the plan traces, without the CUDA constants).
CUDA: measured by the caching allocator (torch.cuda.max_memory_allocated after reset_peak_memory_stats), the
same two AdamW steps / generation as the trace, without any tracker; printed beside the plan's traced peak
(allocated memory) and beside its full prediction (traced + CUDA context + allocator slack), which is compared
with the allocator's reserved peak plus the memory outside the allocator (context, cuBLAS, kernels) read from
cudaMemGetInfo.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from ptune.bench.workload import SHAPES, build_model, wrap
from ptune.plan.devices import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES, GIB
from ptune.plan.report import PlanInputs, generate_parts, train_parts
from ptune.plan.trace import trace_generate, trace_train, train_batch

# GLM-4-9B-chat's dimensions (its config.json: the 6B's layer, 40 layers, 151,552 words); memory does not
# depend on the rope ratio or the norm epsilon, the only other differences.
EXTRA_SHAPES = {"9b": {**SHAPES["6b"], "num_layers": 40, "padded_vocab_size": 151552}}


def _train_specs(text: str) -> list[tuple[int, bool]]:
    """'1,1c,8,8c' -> [(1, False), (1, True), (8, False), (8, True)]: micro-batch, c = checkpointing on."""
    specs = []
    for item in text.split(","):
        item = item.strip()
        specs.append((int(item.rstrip("c")), item.endswith("c")))
    return specs


def _generate_specs(text: str) -> list[tuple[int, int, int]]:
    """'16x64+128,32x2046+2' -> [(16, 64, 128), (32, 2046, 2)]: batch x prompt + new tokens."""
    specs = []
    for item in text.split(","):
        batch, rest = item.strip().split("x")
        prompt, new = rest.split("+")
        specs.append((int(batch), int(prompt), int(new)))
    return specs


def _outside_allocator(device: torch.device) -> int:
    """Bytes the process holds on the GPU outside PyTorch's caching allocator (context, cuBLAS, kernels): used
    device memory minus the allocator's reserved bytes (one process on the GPU)."""
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return total - free - torch.cuda.memory_reserved(device)


def _cuda_peak(device: torch.device, run, *args) -> tuple[int, int]:
    """(max allocated, max reserved) bytes while `run(*args)` runs, counted from what is allocated now."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    run(*args)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def _cuda_train(model, batch: int, seq: int, answer: int, checkpointing: bool) -> None:
    """What `trace.trace_train` runs, on real tensors: two AdamW steps, gradients kept between them."""
    device = model.device
    inputs = {k: v.to(device) for k, v in train_batch(batch, seq, answer).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable()
    try:
        for _ in range(2):
            model(**inputs).loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    finally:
        model.activation_checkpointing_disable()
        model.eval()


def _cuda_generate(model, batch: int, prompt: int, new_tokens: int) -> None:
    """What `trace.trace_generate` runs, on real tensors, for all `new_tokens` steps."""
    from ptune.infer.generate import GenerationSettings, iter_tokens

    settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True)
    ids = torch.zeros(batch, prompt, dtype=torch.long, device=model.device)
    tokens = list(iter_tokens(model, ids, torch.ones_like(ids), stop_ids=[0], settings=settings))
    torch.stack(tokens, dim=1)


def compare(bits: int | None, shape: str, layers: int | None, train, generate, device, rows: list) -> None:
    SHAPES["cut"] = {**(EXTRA_SHAPES.get(shape) or SHAPES[shape])}
    if layers:
        SHAPES["cut"]["num_layers"] = layers
    start = time.perf_counter()
    base, cfg = build_model("cut", torch.bfloat16, device, 0)
    if bits:
        from ptune.model.quantize import quantize_decoder

        quantize_decoder(base, bits, device)
    model = wrap(base, 128, "cut", 0)
    name = f"int{bits}" if bits else "bf16"
    what = f"{shape} ({SHAPES['cut']['num_layers']} layers) {name}"
    print(f"{what}: random model built on {device} in {time.perf_counter() - start:.1f} s", flush=True)
    inputs = PlanInputs(
        cfg=cfg,
        folder="<random>",
        dtype=torch.bfloat16,
        pre_seq_len=128,
        projection=False,
        bits=bits,
        train_batch=1,
        eval_batch=1,
        seq=192,
        answer=128,
        prompt=64,
        new_tokens=2,
        checkpointing=False,
        device=device.type,
    )
    cuda = device.type == "cuda"
    jobs = [("train", b, ckpt) for b, ckpt in train] + [("generate", *g) for g in generate]
    for job in jobs:
        if job[0] == "train":
            _, batch, ckpt = job
            label = f"train {batch} x 192 ckpt {'on' if ckpt else 'off'}"
            t0 = time.perf_counter()
            parts = train_parts(inputs, batch, ckpt)
            planned = time.perf_counter() - t0
            t0 = time.perf_counter()
            if cuda:
                allocated, reserved = _cuda_peak(device, _cuda_train, model, batch, 192, 128, ckpt)
            else:
                allocated = reserved = trace_train(model, batch, 192, 128, ckpt).total
        else:
            _, batch, prompt, new = job
            label = f"generate {batch} x {prompt}+{new}"
            t0 = time.perf_counter()
            parts = generate_parts(inputs, batch, prompt, new)
            planned = time.perf_counter() - t0
            t0 = time.perf_counter()
            if cuda:
                allocated, reserved = _cuda_peak(device, _cuda_generate, model, batch, prompt, new)
            else:
                allocated = reserved = trace_generate(model, batch, prompt, new).total
        measured_s = time.perf_counter() - t0
        traced = sum(v for k, v in parts.items() if k != "cuda")
        row = {
            "shape": shape,
            "layers": SHAPES["cut"]["num_layers"],
            "base": name,
            "phase": label,
            "plan_traced_gib": traced / GIB,
            "measured_gib": allocated / GIB,
            "traced_vs_measured": traced / allocated - 1,
            "plan_seconds": planned,
            "measure_seconds": measured_s,
        }
        line = (
            f"{name:5} {label:30} predicted {traced / GIB:8.4f} GiB  measured {allocated / GIB:8.4f} GiB  "
            f"({traced / allocated - 1:+.1%})"
        )
        if cuda:
            outside = _outside_allocator(device)
            plan = sum(parts.values())
            used = reserved + outside
            row |= {
                "plan_gib": plan / GIB,
                "reserved_gib": reserved / GIB,
                "outside_allocator_gib": outside / GIB,
                "device_used_gib": used / GIB,
                "plan_vs_device_used": plan / used - 1,
                "reserved_over_allocated": reserved / allocated - 1,
            }
            line += (
                f" | plan {plan / GIB:7.2f} GiB vs reserved+outside {used / GIB:7.2f} GiB ({plan / used - 1:+.1%});"
                f" reserved/allocated {reserved / allocated - 1:+.1%}, outside the allocator {outside / GIB:.2f} GiB"
            )
        print(f"{line}  [plan {planned:.0f} s, measured in {measured_s:.1f} s]", flush=True)
        rows.append(row)
    del model, base
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--shape", choices=("6b", "9b", "tiny"), default="6b")
    parser.add_argument(
        "--layers", type=int, default=None, help="decoder layers (default: 2 on the CPU, the shape's on CUDA)"
    )
    parser.add_argument("--bits", default="0,8,4", help="0 = bf16, 8, 4; comma-separated")
    parser.add_argument("--batch", type=int, default=1, help="training micro-batch when --train is not given")
    parser.add_argument(
        "--train", default=None, help="micro-batches to measure, c = with checkpointing (default: B,Bc)"
    )
    parser.add_argument(
        "--generate", default="4x64+2", help="generations: batch x prompt + new tokens, comma-separated"
    )
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    layers = args.layers if args.layers is not None else (2 if device.type == "cpu" else None)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("plan_vs_measured: --device cuda but torch sees no CUDA device")
        torch.ones(64, 64, device=device) @ torch.ones(64, 64, device=device)  # context + cuBLAS handle
        print(
            f"{torch.cuda.get_device_name(device)}: outside the allocator after CUDA + cuBLAS init "
            f"{_outside_allocator(device) / GIB:.3f} GiB (the plan assumes {CUDA_CONTEXT_BYTES / GIB:.2f} GiB "
            f"+ {ALLOCATOR_SLACK:.0%} slack)",
            flush=True,
        )
    train = _train_specs(args.train or f"{args.batch},{args.batch}c")
    rows: list = []
    for bits in args.bits.split(","):
        compare(int(bits) or None, args.shape, layers, train, _generate_specs(args.generate), device, rows)
        if args.json:  # after each base, so that a later failure keeps what was measured
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
