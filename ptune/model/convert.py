"""Original `chatglm` checkpoints (ChatGLM2-6B, ChatGLM3-6B, GLM-4-9B-chat) onto transformers' `GlmForCausalLM`.

The remote code those folders ship no longer runs on transformers 5.x, so ptune reads them itself:
`glm_config` maps config.json field by field, `convert_tensor` maps weights key by key, and `load_glm`
streams the shards one at a time onto a meta-initialised model, so a 12.5 GB checkpoint never exists twice
in host memory. The mapping is documented in docs/checkpoints.md §2-§4 (tests/unit/test_model.py checks it).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import GlmConfig, GlmForCausalLM

from ptune.families.registry import checkpoint_family
from ptune.io.errors import UserError
from ptune.io.files import read_json
from ptune.model.weight_files import integer_weights, iter_tensors, weight_files

PREFIX_KEY = "transformer.prefix_encoder."

# Fields whose non-default value describes an architecture GlmForCausalLM cannot express. No released
# ChatGLM2/3 or GLM-4 checkpoint sets them, so refusing is safer than converting into wrong numbers.
_UNREPRESENTABLE = {
    "rmsnorm": True,
    "post_layer_norm": True,
    "add_bias_linear": False,
    "apply_residual_connection_post_layernorm": False,
    "multi_query_attention": True,
}

_LAYER_RE = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
# Original key → GlmForCausalLM key: per layer (after `transformer.encoder.layers.N.` / `model.layers.N.`), and
# outside the layers; the fused query_key_value is split by `convert_tensor` (tools/tiny.py fuses it back).
LAYER_MAP = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",  # as is: the first half is the gate in both
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
TOP_MAP = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}


def _tokenizer_config(folder: Path | None) -> dict:
    """The folder's tokenizer_config.json, or {} when absent or unreadable (the tokenizer reports those)."""
    if folder is None:
        return {}
    try:
        return read_json(folder / "tokenizer_config.json", missing_ok=True)
    except UserError:
        return {}


def _rope_parameters(cfg: dict, folder: Path) -> dict:
    """RoPE settings for GlmConfig: rotary on half of each head, base 10000·rope_ratio or linear interpolation.

    ChatGLM2-6B-32k divides positions by rope_ratio (position interpolation = linear scaling), while
    ChatGLM3-*-32k/128k (2024 code) and GLM-4 multiply the base. A family that always multiplies it says so
    (`Family.rope_ratio_scales_base`, GLM-4); config.json alone cannot tell ChatGLM2 from ChatGLM3, so for
    those we read the folder's modeling file as text (never executed).
    """
    ratio = cfg.get("rope_ratio", 1)
    params = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    if ratio in (1, 1.0, None):
        return params
    family = checkpoint_family(cfg, _tokenizer_config(folder))
    if family is not None and family.rope_ratio_scales_base:
        params["rope_theta"] = 10000.0 * ratio
        return params
    source = folder / "modeling_chatglm.py"
    text = source.read_text(encoding="utf-8", errors="replace") if source.is_file() else ""
    if re.search(r"seq_idx\s*=.*/\s*self\.rope_ratio", text):
        return {**params, "rope_type": "linear", "factor": float(ratio)}
    if re.search(r"base\s*=\s*base\s*\*\s*self\.rope_ratio", text):
        params["rope_theta"] = 10000.0 * ratio
        return params
    raise UserError(
        f"{folder / 'config.json'}: rope_ratio={ratio} but {source.name} is missing or does not say whether it "
        "scales positions (ChatGLM2-32k) or the RoPE base (ChatGLM3-32k/128k); keep the checkpoint's "
        "modeling_chatglm.py in the folder so ptune can tell"
    )


def glm_config(cfg: dict, folder: Path) -> GlmConfig:
    """Map an original `chatglm` config.json dict onto a `GlmConfig` (docs/checkpoints.md §2)."""
    where = folder / "config.json"
    if "position_encoding_2d" in cfg or "num_layers" not in cfg or "padded_vocab_size" not in cfg:
        raise UserError(
            f"{where}: this is ChatGLM-6B (v1) or an unknown chatglm variant; ptune supports ChatGLM2-6B, "
            "ChatGLM3-6B and GLM-4-9B (v1 uses a different architecture)"
        )
    for key, needed in _UNREPRESENTABLE.items():
        if bool(cfg.get(key, needed)) != needed:
            raise UserError(
                f"{where}: {key}={cfg[key]} is not supported (no released ChatGLM2/3/GLM-4 uses it)"
            )
    heads = cfg["num_attention_heads"]
    return GlmConfig(
        vocab_size=cfg["padded_vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["ffn_hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=cfg.get("multi_query_group_num", heads),
        head_dim=cfg.get("kv_channels", cfg["hidden_size"] // heads),
        attention_bias=cfg.get("add_qkv_bias", False),
        attention_dropout=cfg.get("attention_dropout", 0.0),
        rms_norm_eps=cfg.get("layernorm_epsilon", 1e-5),
        max_position_embeddings=cfg.get("seq_length", 8192),
        hidden_act="silu",
        tie_word_embeddings=False,
        pad_token_id=cfg.get("pad_token_id", 0),
        eos_token_id=cfg.get("eos_token_id", 2),
        rope_parameters=_rope_parameters(cfg, folder),
    )


def convert_tensor(name: str, tensor: torch.Tensor, config: GlmConfig) -> list[tuple[str, torch.Tensor]]:
    """One original tensor → the Glm tensors it becomes ([] for the unused `rotary_pos_emb.inv_freq` buffer).

    `query_key_value` [(np + 2g)·hn, h] is a plain row split into q [np·hn], k [g·hn], v [g·hn]
    (multi-query layout `[all q heads | all k groups | all v groups]`). Raises KeyError for unknown names.
    """
    if name in TOP_MAP:
        return [(TOP_MAP[name], tensor)]
    if name == "transformer.rotary_pos_emb.inv_freq":
        return []
    m = _LAYER_RE.match(name)
    if not m:
        raise KeyError(name)
    idx, rest = m.groups()
    prefix = f"model.layers.{idx}."
    if rest in LAYER_MAP:
        return [(prefix + LAYER_MAP[rest], tensor)]
    if rest in ("self_attention.query_key_value.weight", "self_attention.query_key_value.bias"):
        kind = rest.rsplit(".", 1)[1]
        q = config.num_attention_heads * config.head_dim
        kv = config.num_key_value_heads * config.head_dim
        if tensor.shape[0] != q + 2 * kv:
            raise ValueError(f"{name}: {tensor.shape[0]} rows, expected {q + 2 * kv}")
        q_t, k_t, v_t = tensor.split([q, kv, kv], dim=0)
        return [
            (f"{prefix}self_attn.{p}_proj.{kind}", t.contiguous())
            for p, t in zip("qkv", (q_t, k_t, v_t), strict=True)
        ]
    raise KeyError(name)


def load_glm(
    folder: Path, cfg: dict, dtype: torch.dtype, device: torch.device, attn_implementation: str = "sdpa"
) -> tuple[GlmForCausalLM, dict[str, torch.Tensor]]:
    """Build `GlmForCausalLM` for an original chatglm folder, streaming its shards; strict on names and shapes.

    Returns the model (eval mode, on `device`, in `dtype`) and any `transformer.prefix_encoder.*` tensors
    the checkpoint itself carries (a THUDM P-tuned full save), keyed without that prefix.
    """
    config = glm_config(cfg, folder)
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = GlmForCausalLM(config)
    expected = {name: p.shape for name, p in model.state_dict().items()}
    loaded: set[str] = set()
    prefix: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        batch = {}
        for name, tensor in iter_tensors(path):
            if not tensor.is_floating_point():  # `t.to(dtype)` below would cast it silently
                raise integer_weights(path, name, tensor.dtype)
            if name.startswith(PREFIX_KEY):
                prefix[name[len(PREFIX_KEY) :]] = tensor.float()
                continue
            try:
                pieces = convert_tensor(name, tensor, config)
            except KeyError:
                raise UserError(
                    f"{path}: unexpected weight {name!r} for a {config.num_hidden_layers}-layer model"
                ) from None
            except ValueError as e:
                raise UserError(f"{path}: {e}") from None
            for new, t in pieces:
                if new not in expected:
                    raise UserError(
                        f"{path}: weight {name!r} does not fit a {config.num_hidden_layers}-layer model"
                    )
                if tuple(t.shape) != tuple(expected[new]):
                    raise UserError(
                        f"{path}: {name!r} has shape {list(t.shape)}, config.json implies {list(expected[new])}"
                    )
                batch[new] = t.to(device=device, dtype=dtype)
        model.load_state_dict(batch, strict=False, assign=True)
        loaded.update(batch)
        del batch
    missing = sorted(set(expected) - loaded)
    if missing:
        raise UserError(f"{folder}: checkpoint lacks {len(missing)} weights, e.g. {missing[0]!r}")
    # The rotary inverse frequencies are a non-persistent buffer: still on meta, rebuild them for real.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config).to(device)
    model.eval()
    return model, prefix
