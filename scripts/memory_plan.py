#!/usr/bin/env python
"""GPU memory per process for P-Tuning v2 under DDP and FSDP, computed (not measured) from a model's config.json.

    python scripts/memory_plan.py /models/glm-4-9b-chat /models/chatglm3-6b --gpus 2,4,8

Per process, in GiB:
- weights, bf16/fp16 (2 bytes): DDP keeps all of them; FSDP keeps 1/N of every weight, and while a step runs it
  also holds the embedding and output layer whole (they share the root unit with the prefix, gathered for the
  whole forward and backward) plus two gathered decoder layers (the one computing and the one prefetched);
- the prefix: float32 weights, gradients and two Adam moments, 16 bytes per parameter (sharded 1/N by FSDP);
- activations, the same for both: with --activation_checkpointing, each layer's input kept (L·S·H·2 bytes for
  micro-batch 1 × S tokens) plus one layer recomputed (~S·(3H + 2·F)·2·2 bytes), and a fixed 1 GiB for the
  CUDA context, allocator slack and the answer-token loss.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GiB = 2**30


def parameter_counts(config: dict) -> dict[str, int]:
    """Parameters of a ChatGLM2/3 / GLM-4 checkpoint by part: one decoder layer, all of them, embedding + head."""
    hidden, ffn = config["hidden_size"], config["ffn_hidden_size"]
    kv = config["kv_channels"] * config.get("multi_query_group_num", config["num_attention_heads"])
    qkv_out = hidden + 2 * kv
    layer = hidden * qkv_out + qkv_out * config.get("add_qkv_bias", True)  # query_key_value (+ bias)
    layer += hidden * hidden + hidden * 2 * ffn + ffn * hidden + 2 * hidden  # dense, MLP (SwiGLU), 2 RMSNorms
    layers = config["num_layers"]
    vocab = config["padded_vocab_size"]
    return {"layer": layer, "decoder": layers * layer + hidden, "embed_head": 2 * vocab * hidden}


def prefix_parameters(config: dict, pre_seq_len: int) -> int:
    """The prefix encoder's embedding [P, L·2·G·hn] (no projection)."""
    groups = config.get("multi_query_group_num", config["num_attention_heads"])
    return pre_seq_len * config["num_layers"] * 2 * groups * config["kv_channels"]


def per_process(config: dict, gpus: int, pre_seq_len: int, tokens: int) -> tuple[float, float, float]:
    """(DDP GiB, FSDP GiB, activations GiB included in both) per process."""
    counts = parameter_counts(config)
    weights = 2 * (counts["decoder"] + counts["embed_head"])
    prefix = 16 * prefix_parameters(config, pre_seq_len)
    hidden, ffn = config["hidden_size"], config["ffn_hidden_size"]
    activations = config["num_layers"] * tokens * hidden * 2 + tokens * (3 * hidden + 2 * ffn) * 4 + GiB
    ddp = weights + prefix + activations
    gathered = 2 * counts["embed_head"] * (1 - 1 / gpus) + 2 * 2 * counts["layer"]
    fsdp = weights / gpus + gathered + prefix / gpus + activations
    return ddp / GiB, fsdp / GiB, activations / GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model folders (or config.json files)")
    parser.add_argument("--gpus", default="2,4,8")
    parser.add_argument("--pre_seq_len", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=1024, help="prompt + answer tokens of micro-batch 1")
    args = parser.parse_args()
    gpus = [int(n) for n in args.gpus.split(",")]
    print("| model | parameters | GPUs | DDP GiB/process | FSDP GiB/process | of which activations |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        path = Path(model)
        config = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        counts = parameter_counts(config)
        total = (counts["decoder"] + counts["embed_head"]) / 1e9
        name = config.get("_name_or_path", str(path)).split("/")[-1]
        for n in gpus:
            ddp, fsdp, activations = per_process(config, n, args.pre_seq_len, args.tokens)
            print(f"| {name} | {total:.2f} B | {n} | {ddp:.1f} | {fsdp:.1f} | {activations:.1f} |")
    print(
        f"\nmicro-batch 1 x {args.tokens} tokens, --activation_checkpointing, pre_seq_len {args.pre_seq_len}"
    )


if __name__ == "__main__":
    main()
