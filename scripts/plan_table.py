"""Print the README's "Planning memory" table: the peak GPU memory `ptune plan` predicts for P-Tuning v2 of
ChatGLM2-6B, ChatGLM3-6B and GLM-4-9B-chat at bf16 / int8 / int4, P = 128, ADGEN lengths (64 + 128),
micro-batch 1 / 8 / 16 with activation checkpointing off / on, predict at batch 16 (64 + 128 tokens) and serve at
32 x 2048; and the same plan at THUDM's published setting (int4, batch 1, P = 128, 64 + 64 tokens).

    python scripts/plan_table.py ../shared/reference/formats/{chatglm2-6b,chatglm3-6b,glm-4-9b-chat}

Each argument is a folder holding the model's config.json (no weights are read).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from ptune.plan.devices import GIB
from ptune.plan.report import PlanInputs, generate_parts, train_parts

BITS = ((None, "bf16"), (8, "int8"), (4, "int4"))
BATCHES = (1, 8, 16)


def _gib(parts: dict) -> str:
    return f"{sum(parts.values()) / GIB:.1f}"


def rows_for(folder: Path) -> list[str]:
    """One markdown row per quantization for the model in `folder`; the traces are shared between them."""
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    base = PlanInputs.of_model(
        cfg,
        folder,
        torch.bfloat16,
        pre_seq_len=128,
        seq=192,
        answer=128,
        prompt=64,
        new_tokens=128,
        eval_batch=16,
    )
    rows = []
    for bits, name in BITS:
        inputs = dataclasses.replace(base, bits=bits)  # the same cache: quantization changes no trace
        cells = [train_parts(inputs, b, ckpt) for b in BATCHES for ckpt in (False, True)]
        cells.append(generate_parts(inputs, 16, 64, 128))
        cells.append(generate_parts(inputs, 32, 2046, 2))
        rows.append(f"| {folder.name} | {name} | " + " | ".join(_gib(c) for c in cells) + " |")
    return rows


def thudm_setting(folder: Path) -> str:
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    inputs = PlanInputs.of_model(
        cfg, folder, torch.float16, pre_seq_len=128, seq=128, answer=64, prompt=64, new_tokens=64, bits=4
    )
    parts = train_parts(inputs, 1, False)
    detail = ", ".join(f"{k} {v / GIB:.2f}" for k, v in parts.items())
    return (
        f"{folder.name}, int4 (fp16 compute), batch 1, P = 128, 64 + 64 tokens: {_gib(parts)} GiB ({detail})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    header = (
        ["model", "base"]
        + [f"mb {b} {c}" for b in BATCHES for c in ("", "ckpt")]
        + ["predict 16", "serve 32x2048"]
    )
    print("| " + " | ".join(h.strip() for h in header) + " |")
    print("|" + "---|" * len(header))
    for folder in args.folders:
        for row in rows_for(folder):
            print(row, flush=True)
    print()
    print("THUDM's setting: " + thudm_setting(args.folders[0]))
    print(f"(planned in {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
