"""Predicted (`ptune plan`, fake tensors) against measured (the same step on real tensors, MemTracker) peak
memory of a training step with and without activation checkpointing, and of a generation, for the benchmark's
ChatGLM3-6B shape cut to a few layers, at bf16 / int8 / int4 on this machine's CPU.

    python scripts/plan_vs_measured.py --layers 2 --bits 0,8,4      # ~2 GB of memory, minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time

import torch

from ptune.bench.workload import SHAPES, build_model, wrap
from ptune.plan.devices import GIB
from ptune.plan.report import PlanInputs, generate_parts, train_parts
from ptune.plan.trace import trace_generate, trace_train


def compare(bits: int | None, layers: int, batch: int, seq: int, answer: int) -> None:
    SHAPES["cut"] = {**SHAPES["6b"], "num_layers": layers}
    base, cfg = build_model("cut", torch.bfloat16, torch.device("cpu"), 0)
    if bits:
        from ptune.model.quantize import quantize_decoder

        quantize_decoder(base, bits, torch.device("cpu"))
    model = wrap(base, 128, "cut", 0)
    inputs = PlanInputs(
        cfg=cfg,
        folder="<random>",
        dtype=torch.bfloat16,
        pre_seq_len=128,
        projection=False,
        bits=bits,
        train_batch=batch,
        eval_batch=batch,
        seq=seq,
        answer=answer,
        prompt=64,
        new_tokens=2,
        checkpointing=False,
        device="cpu",
    )
    name = f"int{bits}" if bits else "bf16"
    for ckpt in (False, True):
        predicted = sum(train_parts(inputs, batch, ckpt).values())
        start = time.perf_counter()
        measured = trace_train(model, batch, seq, answer, ckpt).total
        print(
            f"{name:5} train ckpt {'on ' if ckpt else 'off'}  predicted {predicted / GIB:.4f} GiB  measured "
            f"{measured / GIB:.4f} GiB  ({predicted / measured - 1:+.1%}; measured in {time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    predicted = sum(generate_parts(inputs, 4, 64, 2).values())
    measured = trace_generate(model, 4, 64, 2).total
    print(
        f"{name:5} generate 4 x 64+2  predicted {predicted / GIB:.4f} GiB  measured {measured / GIB:.4f} GiB  "
        f"({predicted / measured - 1:+.1%})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--bits", default="0,8,4", help="0 = bf16, 8, 4; comma-separated")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    for bits in args.bits.split(","):
        compare(int(bits) or None, args.layers, args.batch, 192, 128)


if __name__ == "__main__":
    main()
