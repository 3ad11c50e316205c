"""Ground truth for the test suite: the ORIGINAL ChatGLM2/3 and GLM-4 forward pass, in plain PyTorch.

ptune loads `chatglm` checkpoints onto transformers' `GlmForCausalLM` (q/k/v split, renamed keys, its own
PrefixEncoder outside the model).  To check that mapping we need what THUDM's remote `modeling_chatglm.py`
computes, but that code no longer runs on transformers 5.x.  This module re-derives it from the written
description (docs/checkpoints.md §4-§6), independently of transformers' Glm code, and works
directly on the ORIGINAL state-dict key names and the ORIGINAL config.json dict.

Layout: batch-first `[B, S, ...]` throughout (chatglm2/3 run seq-first; that is numerically irrelevant).
Gradients flow to every tensor of the state dict that requires grad (e.g. prefix-encoder parameters).

Public API:
  reference_forward(config, state_dict, input_ids, attention_mask=None, position_ids=None, labels=None,
                    prefix_dropout_training=False) -> (logits float32 [B, S, V], loss | None)
  forward_with_cache(config, state_dict, input_ids, attention_mask=None, position_ids=None,
                     past_key_values=None) -> (logits [B, S, V] in model dtype, presents)
  prefix_key_values(config, state_dict, batch_size, dtype, dropout_training=False) -> [(k, v)] * L
  build_attention_mask(padding_mask, batch_size, seq_len, past_len, device) -> bool [B, 1, S, past+S]
  rms_norm, rope_cache, apply_rope
  make_random_chatglm_state_dict(config, seed, dtype=float32), make_random_prefix_state_dict(config, ...)

Not covered: chatglm2's fp16 `inv_freq`-dtype RoPE quirk (we compute theta in fp32, as chatglm3 / GLM-4
do; fp32 runs are unaffected), chatglm2-6b-32k's position-interpolation `rope_ratio`, and the unused config
variants no released model has (non-MQA, LayerNorm, post-layernorm residuals, linear biases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

EMBED = "transformer.embedding.word_embeddings.weight"
INV_FREQ = "transformer.rotary_pos_emb.inv_freq"
LAYER = "transformer.encoder.layers.{}."
FINAL_NORM = "transformer.encoder.final_layernorm.weight"
OUTPUT = "transformer.output_layer.weight"
PREFIX = "transformer.prefix_encoder."

# (config key, value the original supports here): variants of the original code no released model uses.
_REQUIRED_FLAGS = (
    ("multi_query_attention", True),
    ("rmsnorm", True),
    ("post_layer_norm", True),
    ("original_rope", True),
    ("add_bias_linear", False),
    ("apply_residual_connection_post_layernorm", False),
    ("fp32_residual_connection", False),
)


@dataclass(frozen=True)
class Dims:
    """The config values the forward pass needs, with the original config class defaults."""

    num_layers: int
    hidden: int
    ffn: int
    heads: int  # np: query heads
    groups: int  # g: key/value heads
    head_dim: int  # hn = kv_channels
    vocab: int
    eps: float
    rope_base: float  # 10000 * rope_ratio
    seq_length: int  # RoPE cache length
    pre_seq_len: int  # P, 0 = no prefix
    prefix_projection: bool
    qkv_bias: bool | None  # add_qkv_bias; None (absent) = use the bias if the state dict has one

    @property
    def rope_elems(self) -> int:
        """n_elem: the number of head dims RoPE rotates (`RotaryEmbedding(kv_channels // 2)`)."""
        return self.head_dim // 2

    @property
    def prefix_kv_size(self) -> int:
        """Width of one PrefixEncoder row: L * 2 * G * hn."""
        return self.num_layers * 2 * self.groups * self.head_dim


def dims(config: dict) -> Dims:
    """Read an original config.json dict; raise ValueError on a variant this reference does not implement."""
    for key, supported in _REQUIRED_FLAGS:
        if key in config and bool(config[key]) != supported:
            raise ValueError(f"chatglm reference: config {key}={config[key]!r} is not supported")
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    return Dims(
        num_layers=int(config["num_layers"]),
        hidden=hidden,
        ffn=int(config["ffn_hidden_size"]),
        heads=heads,
        groups=int(config.get("multi_query_group_num", 1)),
        head_dim=int(config.get("kv_channels") or hidden // heads),
        vocab=int(config["padded_vocab_size"]),
        eps=float(config.get("layernorm_epsilon", 1e-5)),
        rope_base=10000.0 * float(config.get("rope_ratio", 1) or 1),
        seq_length=int(config.get("seq_length", 2048)),
        pre_seq_len=int(config.get("pre_seq_len") or 0),
        prefix_projection=bool(config.get("prefix_projection", False)),
        qkv_bias=bool(config["add_qkv_bias"]) if "add_qkv_bias" in config else None,
    )


# --------------------------------------------------------------------------------------------- building blocks


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Original RMSNorm: variance in fp32, then `weight * normalized` BEFORE casting back to x's dtype.

    (Glm casts first and multiplies after; that differs by <= 1 ulp, in fp16/bf16 only.)
    """
    in_dtype = x.dtype
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    return (weight * x).to(in_dtype)


def rope_cache(seq_length: int, n_elem: int, base: float, dtype: torch.dtype, device=None) -> torch.Tensor:
    """The original cos/sin cache `[seq_length, n_elem // 2, 2]` (last axis = (cos, sin)).

    theta_i = base^(-2i / n_elem), i = 0 .. n_elem/2 - 1, angle = position * theta_i, all in fp32; the cache
    is then cast to fp16/bf16 when the model runs in one of those ("mimic complex32").
    """
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float, device=device) / n_elem))
    positions = torch.arange(seq_length, dtype=torch.float, device=device)
    angles = torch.outer(positions, theta).float()
    cache = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dtype in (torch.float16, torch.bfloat16):
        cache = cache.to(dtype)
    return cache


def apply_rope(x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """Rotate the first `2 * cache.shape[-2]` head dims of x as interleaved adjacent pairs (GPT-J style).

    x: `[B, H, S, hn]`; cache: `[B, S, n_elem // 2, 2]` (the rope cache indexed by position ids).
    out[2i] = x[2i] cos - x[2i+1] sin, out[2i+1] = x[2i+1] cos + x[2i] sin; dims >= n_elem pass through.
    """
    batch, heads, seq, head_dim = x.shape
    rot_dim = cache.shape[-2] * 2
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    pairs = x_rot.reshape(batch, heads, seq, rot_dim // 2, 2)
    cache = cache.view(batch, 1, seq, rot_dim // 2, 2)
    cos, sin = cache[..., 0], cache[..., 1]
    rotated = torch.stack(
        [pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin], dim=-1
    )
    return torch.cat([rotated.flatten(3), x_pass], dim=-1)


def build_attention_mask(
    padding_mask: torch.Tensor | None, batch_size: int, seq_len: int, past_len: int, device=None
) -> torch.Tensor:
    """The original `get_masks`: bool `[B, 1, S, past_len + S]`, True = masked.

    padding_mask: `[B, past_len + S]` (1 = real token) or None.  The causal square gets `past_len` columns of
    ones in front (every query sees the whole past / prefix), is multiplied by the padding mask over keys,
    and - only when there is no past - pad query rows are un-masked entirely (`full -= pad[..., None] - 1`).
    Whenever the original builds no mask (no padding, no past; or one query over a past) it attends with
    `is_causal=True` / no mask, which this function reproduces with padding_mask=None.
    """
    full = torch.ones(batch_size, seq_len, seq_len, device=device).tril()
    if past_len:
        full = torch.cat([torch.ones(batch_size, seq_len, past_len, device=device), full], dim=-1)
    if padding_mask is not None:
        full = full * padding_mask.unsqueeze(1)
        if not past_len:
            full = full - (padding_mask.unsqueeze(-1) - 1)
    return (full < 0.5).unsqueeze(1)


def prefix_key_values(
    config: dict,
    state_dict: dict[str, torch.Tensor],
    batch_size: int,
    dtype: torch.dtype,
    dropout_training: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """P-Tuning v2 `get_prompt`: per layer (key, value), each `[B, G, P, hn]`, in `dtype`.

    PrefixEncoder rows `[P, L*2*G*hn]` (embedding, or embedding -> Linear -> Tanh -> Linear with
    prefix_projection) -> `view(B, P, L*2, G, hn)` -> Dropout(0.1) if training -> `permute(2, 1, 0, 3, 4)`:
    layer i's key is slot 2i and its value slot 2i+1 of the `L*2` axis.  Keys are NOT rotated.
    """
    d = dims(config)
    if not d.pre_seq_len:
        raise ValueError("chatglm reference: config has no pre_seq_len")
    weight = state_dict[PREFIX + "embedding.weight"]
    tokens = torch.arange(d.pre_seq_len, device=weight.device).unsqueeze(0).expand(batch_size, -1)
    kv = F.embedding(tokens, weight)
    if d.prefix_projection:
        kv = F.linear(kv, state_dict[PREFIX + "trans.0.weight"], state_dict[PREFIX + "trans.0.bias"])
        kv = F.linear(
            torch.tanh(kv), state_dict[PREFIX + "trans.2.weight"], state_dict[PREFIX + "trans.2.bias"]
        )
    kv = kv.to(dtype).view(batch_size, d.pre_seq_len, d.num_layers * 2, d.groups, d.head_dim)
    if dropout_training:
        kv = F.dropout(kv, p=0.1, training=True)
    slots = kv.permute(2, 0, 3, 1, 4)  # [L*2, B, G, P, hn]
    return [(slots[2 * i], slots[2 * i + 1]) for i in range(d.num_layers)]


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention with grouped KV: q `[B, np, S, hn]`, k/v `[B, g, K, hn]`, mask bool.

    Head h reads KV group h // (np / g) (the original expands a new axis after the group axis).  Scores and
    softmax in fp32 (the original's kernels accumulate in fp32), probabilities cast back to v's dtype.
    """
    batch, heads, _, head_dim = q.shape
    groups, kv_len = k.shape[1], k.shape[2]
    rep = heads // groups
    k = k.unsqueeze(2).expand(batch, groups, rep, kv_len, head_dim).reshape(batch, heads, kv_len, head_dim)
    v = v.unsqueeze(2).expand(batch, groups, rep, kv_len, head_dim).reshape(batch, heads, kv_len, head_dim)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (1.0 / math.sqrt(head_dim))
    scores = scores.masked_fill(mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


def _layer(
    d: Dims,
    sd: dict[str, torch.Tensor],
    i: int,
    x: torch.Tensor,
    rope: torch.Tensor,
    mask: torch.Tensor,
    past: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One GLMBlock (pre-norm): returns the new hidden states `[B, S, hidden]` and this call's (k, v)."""
    p = LAYER.format(i)
    batch, seq, _ = x.shape
    h = rms_norm(x, sd[p + "input_layernorm.weight"], d.eps)
    bias_key = p + "self_attention.query_key_value.bias"
    bias = sd.get(bias_key) if d.qkv_bias is None else (sd[bias_key] if d.qkv_bias else None)
    qkv = F.linear(h, sd[p + "self_attention.query_key_value.weight"], bias)
    q, k, v = qkv.split([d.heads * d.head_dim, d.groups * d.head_dim, d.groups * d.head_dim], dim=-1)
    q = q.view(batch, seq, d.heads, d.head_dim).transpose(1, 2)
    k = k.view(batch, seq, d.groups, d.head_dim).transpose(1, 2)
    v = v.view(batch, seq, d.groups, d.head_dim).transpose(1, 2)
    q, k = apply_rope(q, rope), apply_rope(k, rope)
    if past is not None:  # cached keys were rotated when they were computed; prefix keys never are
        k = torch.cat([past[0], k], dim=2)
        v = torch.cat([past[1], v], dim=2)
    context = _attention(q, k, v, mask).transpose(1, 2).reshape(batch, seq, d.heads * d.head_dim)
    x = x + F.linear(context, sd[p + "self_attention.dense.weight"])
    h = rms_norm(x, sd[p + "post_attention_layernorm.weight"], d.eps)
    gate, up = F.linear(h, sd[p + "mlp.dense_h_to_4h.weight"]).chunk(2, dim=-1)
    x = x + F.linear(F.silu(gate) * up, sd[p + "mlp.dense_4h_to_h.weight"])
    return x, (k, v)


# ------------------------------------------------------------------------------------------------ forward


def forward_with_cache(
    config: dict,
    state_dict: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The transformer over `input_ids [B, S]` after an optional cache; no prefix encoder, no loss.

    attention_mask: `[B, past_len + S]` (covers the cache, as the original's padding mask does) or None.
    position_ids: `[B, S]`, default `arange(S)` for every row (never offset by the cache length: the original
    indexes its RoPE cache with exactly what it is given).  past_key_values: per layer `(k, v)`, each
    `[B, G, past_len, hn]`.  Returns logits `[B, S, V]` in the model dtype (= embedding dtype) and per layer
    the full `(k, v)` `[B, G, past_len + S, hn]` (keys rotated), usable as the next call's cache.
    """
    d = dims(config)
    sd = state_dict
    batch, seq = input_ids.shape
    dtype = sd[EMBED].dtype
    past_len = past_key_values[0][0].shape[2] if past_key_values else 0
    if attention_mask is not None and attention_mask.shape != (batch, past_len + seq):
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != {(batch, past_len + seq)}")
    if position_ids is None:
        position_ids = torch.arange(seq, device=input_ids.device).unsqueeze(0).expand(batch, -1)
    if int(position_ids.max()) >= d.seq_length or int(position_ids.min()) < 0:
        raise ValueError(f"position ids must lie in [0, seq_length={d.seq_length})")
    rope = rope_cache(d.seq_length, d.rope_elems, d.rope_base, dtype, input_ids.device)[position_ids]
    mask = build_attention_mask(attention_mask, batch, seq, past_len, input_ids.device)

    x = F.embedding(input_ids, sd[EMBED])
    presents = []
    for i in range(d.num_layers):
        x, kv = _layer(d, sd, i, x, rope, mask, past_key_values[i] if past_key_values else None)
        presents.append(kv)
    x = rms_norm(x, sd[FINAL_NORM], d.eps)
    return F.linear(x, sd[OUTPUT]), presents


def reference_forward(
    config: dict,
    state_dict: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    prefix_dropout_training: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What `ChatGLMForConditionalGeneration(input_ids, attention_mask, position_ids, labels)` returns.

    input_ids/attention_mask/position_ids/labels: `[B, S]`; attention_mask covers the real tokens only (the
    P prefix columns are prepended here, as the original does).  With `config["pre_seq_len"]` set, the
    state dict must hold `transformer.prefix_encoder.*` (any float dtype: its output is cast to the model
    dtype); prefix_dropout_training applies the original Dropout(0.1) on the prefix KV (torch's global RNG).
    Returns (logits `[B, S, V]` float32 - the model-dtype logits upcast, loss or None): the loss is the mean
    CrossEntropy(ignore_index=-100) of fp32 logits shifted by one, rounded to the model dtype as the
    original does, returned as float32.
    """
    d = dims(config)
    has_prefix_weights = any(k.startswith(PREFIX) for k in state_dict)
    if has_prefix_weights != bool(d.pre_seq_len):
        raise ValueError("chatglm reference: config pre_seq_len and prefix_encoder weights disagree")
    dtype = state_dict[EMBED].dtype
    batch = input_ids.shape[0]
    past = None
    if d.pre_seq_len:
        past = prefix_key_values(config, state_dict, batch, dtype, prefix_dropout_training)
        if attention_mask is not None:
            attention_mask = torch.cat(
                [attention_mask.new_ones(batch, d.pre_seq_len), attention_mask], dim=-1
            )
    logits, _ = forward_with_cache(config, state_dict, input_ids, attention_mask, position_ids, past)
    logits = logits.float()
    loss = None
    if labels is not None:
        shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
        loss = F.cross_entropy(shift_logits, labels[:, 1:].reshape(-1), ignore_index=-100)
        loss = loss.to(dtype).float()
    return logits, loss


# ------------------------------------------------------------------------------------------- random weights


def make_random_chatglm_state_dict(
    config: dict,
    seed: int,
    dtype: torch.dtype = torch.float32,
    *,
    std: float = 0.02,
    include_inv_freq: bool = True,
) -> dict[str, torch.Tensor]:
    """A random checkpoint with the original key names and shapes (deterministic in `seed`).

    Matrices ~ N(0, std), the qkv bias ~ N(0, std), norm weights 1 + N(0, 0.05).  Like real checkpoints it
    also holds the unused `transformer.rotary_pos_emb.inv_freq` buffer (include_inv_freq=False drops it).
    """
    d = dims(config)
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape: int, scale: float = std) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    def norm_weight() -> torch.Tensor:
        return (1.0 + torch.randn(d.hidden, generator=gen) * 0.05).to(dtype)

    qkv_rows = (d.heads + 2 * d.groups) * d.head_dim
    sd = {EMBED: normal(d.vocab, d.hidden)}
    if include_inv_freq:  # ignores rope_ratio in the real files too
        n = d.rope_elems
        sd[INV_FREQ] = (1.0 / (10000 ** (torch.arange(0, n, 2, dtype=torch.float) / n))).to(dtype)
    for i in range(d.num_layers):
        p = LAYER.format(i)
        sd[p + "input_layernorm.weight"] = norm_weight()
        sd[p + "self_attention.query_key_value.weight"] = normal(qkv_rows, d.hidden)
        sd[p + "self_attention.query_key_value.bias"] = normal(qkv_rows)
        sd[p + "self_attention.dense.weight"] = normal(d.hidden, d.heads * d.head_dim)
        sd[p + "post_attention_layernorm.weight"] = norm_weight()
        sd[p + "mlp.dense_h_to_4h.weight"] = normal(2 * d.ffn, d.hidden)
        sd[p + "mlp.dense_4h_to_h.weight"] = normal(d.hidden, d.ffn)
    sd[FINAL_NORM] = norm_weight()
    sd[OUTPUT] = normal(d.vocab, d.hidden)
    return sd


def make_random_prefix_state_dict(
    config: dict, pre_seq_len: int, prefix_projection: bool, seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random `transformer.prefix_encoder.*` weights (the original keeps the encoder in fp32).

    embedding ~ N(0, 1) (nn.Embedding's init); with projection `trans.0` (Linear kv -> hidden) and
    `trans.2` (Linear hidden -> kv) ~ N(0, 1/sqrt(fan_in)), biases ~ N(0, 0.1).  To use them, merge into
    the model state dict and set `config["pre_seq_len"]` / `config["prefix_projection"]` to match.
    """
    d = dims({**config, "pre_seq_len": pre_seq_len, "prefix_projection": prefix_projection})
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    kv = d.prefix_kv_size
    sd = {PREFIX + "embedding.weight": normal(pre_seq_len, kv, scale=1.0)}
    if prefix_projection:
        sd[PREFIX + "trans.0.weight"] = normal(d.hidden, kv, scale=kv**-0.5)
        sd[PREFIX + "trans.0.bias"] = normal(d.hidden, scale=0.1)
        sd[PREFIX + "trans.2.weight"] = normal(kv, d.hidden, scale=d.hidden**-0.5)
        sd[PREFIX + "trans.2.bias"] = normal(kv, scale=0.1)
    return sd
