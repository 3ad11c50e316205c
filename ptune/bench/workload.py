"""The benchmark's synthetic workload (docs/workload.md): ADGEN-shaped samples and a ChatGLM3-shaped model
with random weights, made directly on the device. Used by `ptune bench`; nothing here touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ptune.data.labels import IGNORE_INDEX
from ptune.io.errors import UserError
from ptune.model.convert import glm_config

# The real ChatGLM2/3 vocabulary and special ids (docs/workload.md). Smaller vocabularies keep each special id
# at the same distance from the top, so the tiny shape has the same layout: content ids, then [MASK], [gMASK]...
REAL_VOCAB = 65024
REAL_GMASK, REAL_SOP, REAL_MASK = 64790, 64792, 64789
EOS_ID, PAD_ID = 2, 0
FIRST_CONTENT_ID = 3  # 0 <unk>/pad, 1 <s>, 2 </s>

SOURCE_LEN = (20, 63)  # uniform, inclusive
TARGET_LEN = (40, 126)
PROMPT_LEN = (40, 64)  # generation prompts: [gMASK, sop] + this many tokens

# The dimensions of each shape; the other config.json fields are ChatGLM3's (`chatglm_config`).
SHAPES = {
    # The test suite's tiny models' dimensions (tools/tiny.py TINY_DIMS; tests/e2e/test_bench.py checks).
    "tiny": {
        "num_layers": 2,
        "hidden_size": 64,
        "ffn_hidden_size": 96,
        "kv_channels": 16,
        "num_attention_heads": 4,
        "multi_query_group_num": 2,
        "padded_vocab_size": 1024,
    },
    "6b": {
        "num_layers": 28,
        "hidden_size": 4096,
        "ffn_hidden_size": 13696,
        "num_attention_heads": 32,
        "multi_query_group_num": 2,
        "kv_channels": 128,
        "padded_vocab_size": REAL_VOCAB,
    },
}

_AUTO_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
}


def chatglm_config(family: str, vocab: int, dims: dict) -> dict:
    """A `chatglm` folder's config.json with every field the real ChatGLM2/3 / GLM-4 one has (docs/checkpoints.md),
    at the given dimensions (`num_layers`, `hidden_size`, `ffn_hidden_size`, `kv_channels`,
    `num_attention_heads`): what the benchmark's random model and the tiny test models (tools/tiny.py) carry."""
    glm4 = family == "glm4"
    cfg = {
        "_name_or_path": f"ptune/tiny-{family}",
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": dict(_AUTO_MAP),
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": dims["ffn_hidden_size"],
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": dims["hidden_size"],
        "kv_channels": dims["kv_channels"],
        "layernorm_epsilon": 1.5625e-07 if glm4 else 1e-05,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
        "num_attention_heads": dims["num_attention_heads"],
        "num_layers": dims["num_layers"],
        "original_rope": True,
        "padded_vocab_size": vocab,
        "post_layer_norm": True,
        "rmsnorm": True,
        "seq_length": 8192 if family == "chatglm3" else (131072 if glm4 else 32768),
        "use_cache": True,
        "torch_dtype": "bfloat16" if glm4 else "float16",
        "transformers_version": "4.44.0" if glm4 else "4.30.2",
        "tie_word_embeddings": False,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    if glm4:
        cfg["attn_implementation"] = "sdpa"
        cfg["num_hidden_layers"] = cfg["num_layers"]
        cfg["rope_ratio"] = 500
    cfg.update(dims)  # any other field given (multi_query_group_num, padded_vocab_size, ...)
    return cfg


# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, matched on the CUDA device name, first hit wins.


@dataclass(frozen=True)
class SpecialIds:
    gmask: int
    sop: int
    eos: int
    pad: int
    content_end: int  # content tokens are drawn from [FIRST_CONTENT_ID, content_end)


def special_ids(vocab: int) -> SpecialIds:
    """The ChatGLM3 special ids for a vocabulary of `vocab` rows (the real ones at 65,024)."""
    shift = REAL_VOCAB - vocab
    if REAL_MASK - shift <= FIRST_CONTENT_ID + 1:
        raise UserError(f"vocabulary of {vocab} rows is too small for the ChatGLM special ids")
    return SpecialIds(REAL_GMASK - shift, REAL_SOP - shift, EOS_ID, PAD_ID, REAL_MASK - shift)


# ------------------------------------------------------------------------------------------------ samples
def make_samples(
    n: int, seed: int, ids: SpecialIds, source_len=SOURCE_LEN, target_len=TARGET_LEN
) -> list[dict[str, list[int]]]:
    """`n` ADGEN-shaped training samples, deterministic in `seed` (the first k of n are the k-sample set).

    input_ids = [gMASK, sop] + source + target + [eos]; labels are IGNORE_INDEX over [gMASK, sop] + source and equal
    input_ids after it, exactly as THUDM's preprocessing builds them.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        s = int(rng.integers(source_len[0], source_len[1] + 1))
        t = int(rng.integers(target_len[0], target_len[1] + 1))
        tokens = rng.integers(FIRST_CONTENT_ID, ids.content_end, size=s + t).tolist()
        prompt = [ids.gmask, ids.sop] + tokens[:s]
        answer = tokens[s:] + [ids.eos]
        samples.append({"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer})
    return samples


def make_prompt_samples(n: int, seed: int, ids: SpecialIds) -> list[dict[str, list[int]]]:
    """Samples whose prompt is [gMASK, sop] + 40..64 tokens (the generation workload), sorted by prompt length
    so that each batch pads little."""
    samples = make_samples(n, seed, ids, source_len=PROMPT_LEN)
    return sorted(samples, key=lambda r: r["labels"].count(IGNORE_INDEX))


# --------------------------------------------------------------------------------------------------- model
def build_model(shape: str, dtype: torch.dtype, device: torch.device, seed: int):
    """(base GlmForCausalLM, config dict) with random weights made directly on `device` in `dtype`.

    Every matrix, bias and embedding is normal(0, 0.02), norm weights are 1 (docs/workload.md); seeded, so the
    same seed gives the same weights on the same device. The base is built on the meta device first, so the
    6B shape never exists in float32 nor on the host.
    """
    from transformers import GlmForCausalLM

    cfg = chatglm_config("chatglm3", SHAPES[shape]["padded_vocab_size"], SHAPES[shape])
    config = glm_config(cfg, Path(f"<random {shape}>"))
    config._attn_implementation = "sdpa"  # as load_glm does
    with torch.device("meta"):
        base = GlmForCausalLM(config)
    base = base.to(dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    # The rotary inverse frequencies are a non-persistent float32 buffer: rebuild it for real, as load_glm does.
    base.model.rotary_emb = type(base.model.rotary_emb)(config=config).to(device)
    return base.eval(), cfg


def wrap(base, pre_seq_len: int, shape: str, seed: int):
    """`PrefixTunedLM` around `base` with a fresh prefix, exactly as `load_model(pre_seq_len=...)` builds it."""
    from ptune.model.load import BaseSource, PrefixTunedLM
    from ptune.model.prefix import PrefixEncoder, prefix_config_for

    torch.manual_seed(seed)
    encoder = PrefixEncoder(prefix_config_for(base, pre_seq_len, False)).to(base.device)
    source = BaseSource(path=f"<random {shape}>", model_type="chatglm", dtype=str(base.dtype)[6:])
    return PrefixTunedLM(base, encoder, source).eval()
