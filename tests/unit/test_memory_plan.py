"""scripts/memory_plan.py: the parameter counts it computes from a config are the published checkpoints' sizes.

The configs are THUDM's (/work/shared/reference/formats, trimmed to what the count reads); the expected
byte counts are the `total_size` of their weight index files, which also hold a 64-byte rotary `inv_freq` buffer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMON = {
    "hidden_size": 4096,
    "ffn_hidden_size": 13696,
    "kv_channels": 128,
    "multi_query_group_num": 2,
    "num_attention_heads": 32,
    "add_qkv_bias": True,
}
GLM4_9B = {**COMMON, "num_layers": 40, "padded_vocab_size": 151552}
CHATGLM3_6B = {**COMMON, "num_layers": 28, "padded_vocab_size": 65024}


def memory_plan():
    spec = importlib.util.spec_from_file_location("memory_plan", REPO / "scripts" / "memory_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config,index_bytes", [(GLM4_9B, 18_799_902_784), (CHATGLM3_6B, 12_487_168_064)])
def test_parameter_counts_match_the_published_checkpoints(config, index_bytes):
    counts = memory_plan().parameter_counts(config)
    assert 2 * (counts["decoder"] + counts["embed_head"]) + 64 == index_bytes


def test_fsdp_holds_a_share_of_the_weights_and_ddp_all_of_them():
    plan = memory_plan()
    counts = plan.parameter_counts(GLM4_9B)
    weights = 2 * (counts["decoder"] + counts["embed_head"]) / 2**30
    ddp2, fsdp2, act = plan.per_process(GLM4_9B, 2, 128, 1024)
    ddp8, fsdp8, _ = plan.per_process(GLM4_9B, 8, 128, 1024)
    assert ddp2 == ddp8 > weights + act  # DDP: every process holds the whole base
    gathered = 2 * (counts["embed_head"] * 7 / 8 + 2 * counts["layer"]) / 2**30
    assert fsdp8 == pytest.approx(weights / 8 + gathered + act, abs=0.01)  # + the prefix/8: ~5 MB
    assert fsdp8 < fsdp2 < ddp2
