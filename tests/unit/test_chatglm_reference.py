"""Self-consistency checks of the plain-PyTorch ChatGLM reference, tests/reference/chatglm_reference.py.

The reference is the ground truth ptune's GlmForCausalLM loader is compared against, so it gets its own
tests: hand-computed RoPE and masks, properties that hold only if causality, padding, GQA grouping and the
prefix slot layout are right, and the equivalence "P-Tuning v2 prefix == a KV cache computed at position 0".
"""

import math

import pytest
import torch

from tests.reference.chatglm_reference import (
    EMBED,
    INV_FREQ,
    PREFIX,
    apply_rope,
    build_attention_mask,
    forward_with_cache,
    make_random_chatglm_state_dict,
    make_random_prefix_state_dict,
    prefix_key_values,
    reference_forward,
    rms_norm,
    rope_cache,
)

TINY = {
    "num_layers": 2,
    "hidden_size": 32,
    "ffn_hidden_size": 48,
    "kv_channels": 8,
    "num_attention_heads": 4,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "padded_vocab_size": 64,
    "layernorm_epsilon": 1e-5,
    "seq_length": 64,
    "add_qkv_bias": True,
}
# std 0.2 (not 0.02): with 0.02 the attention is nearly uniform and RoPE / mask mistakes move logits < 1e-4.
STD = 0.2
ATOL = 1e-5


def tiny_state_dict(seed=0, dtype=torch.float32):
    return make_random_chatglm_state_dict(TINY, seed, dtype, std=STD)


def with_prefix(pre_seq_len, projection=False, seed=1):
    """(config, state dict) of the tiny model with a random prefix encoder merged in."""
    config = {**TINY, "pre_seq_len": pre_seq_len, "prefix_projection": projection}
    sd = {**tiny_state_dict(), **make_random_prefix_state_dict(TINY, pre_seq_len, projection, seed)}
    return config, sd


def random_ids(batch, seq, seed=0):
    return torch.randint(
        1, TINY["padded_vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(seed)
    )


# ------------------------------------------------------------------------------------------ building blocks


def test_rope_hand_example_chatglm_base():
    # head_dim 8 -> n_elem 4: theta = 10000^(-0/4), 10000^(-2/4) = 1, 0.01; dims 4..7 pass through.
    x = torch.arange(1.0, 9.0).view(1, 1, 1, 8)
    cache = rope_cache(16, 4, 10000.0, torch.float32)[torch.tensor([[2]])]
    a, b = 2.0, 0.02
    expected = [
        1 * math.cos(a) - 2 * math.sin(a),
        2 * math.cos(a) + 1 * math.sin(a),
        3 * math.cos(b) - 4 * math.sin(b),
        4 * math.cos(b) + 3 * math.sin(b),
        5.0,
        6.0,
        7.0,
        8.0,
    ]
    torch.testing.assert_close(apply_rope(x, cache).flatten(), torch.tensor(expected), atol=1e-6, rtol=0)


def test_rope_hand_example_glm4_base():
    # GLM-4: base = 10000 * rope_ratio (500) = 5e6 -> theta_1 = 5e6^(-1/2).
    x = torch.tensor([0.5, -1.0, 2.0, 0.25, 9.0, 9.0, 9.0, 9.0]).view(1, 1, 1, 8)
    cache = rope_cache(16, 4, 5e6, torch.float32)[torch.tensor([[7]])]
    a, b = 7.0, 7.0 / math.sqrt(5e6)
    expected = [
        0.5 * math.cos(a) + 1.0 * math.sin(a),
        -1.0 * math.cos(a) + 0.5 * math.sin(a),
        2.0 * math.cos(b) - 0.25 * math.sin(b),
        0.25 * math.cos(b) + 2.0 * math.sin(b),
        9.0,
        9.0,
        9.0,
        9.0,
    ]
    torch.testing.assert_close(apply_rope(x, cache).flatten(), torch.tensor(expected), atol=1e-6, rtol=0)


def test_rope_cache_is_cast_to_half_dtypes():
    assert rope_cache(4, 4, 1e4, torch.bfloat16).dtype == torch.bfloat16
    assert rope_cache(4, 4, 1e4, torch.float16).dtype == torch.float16
    assert rope_cache(4, 4, 1e4, torch.float32).shape == (4, 2, 2)


def test_rms_norm_multiplies_weight_before_cast():
    x = torch.tensor([[3.0, 4.0]])
    out = rms_norm(x, torch.tensor([2.0, 0.5]), 0.0)
    rms = math.sqrt((9 + 16) / 2)
    torch.testing.assert_close(out, torch.tensor([[2 * 3 / rms, 0.5 * 4 / rms]]))


def test_rms_norm_rounds_once_in_half_precision():
    # Original: (weight * fp32-normalized).to(bf16) - one rounding; Glm's order rounds twice.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=gen).to(torch.bfloat16)
    w = (1 + torch.randn(32, generator=gen) * 0.3).to(torch.bfloat16)
    normalized = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)
    out = rms_norm(x, w, 1e-5)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (w.float() * normalized).to(torch.bfloat16))
    assert not torch.equal(out, w * normalized.to(torch.bfloat16))


def test_mlp_path_by_hand_with_attention_switched_off():
    """One layer whose attention output projection is zero: logits = out(norm(h + down(silu(gate) * up)))."""
    config = {**TINY, "num_layers": 1}
    sd = make_random_chatglm_state_dict(config, 0, std=STD)
    layer = "transformer.encoder.layers.0."
    sd[layer + "self_attention.dense.weight"] = torch.zeros(32, 32)
    ids = random_ids(1, 5)
    w = {k: v.double() for k, v in sd.items()}

    def norm(x, weight):
        return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)

    h = w[EMBED][ids[0]]
    gate, up = (
        norm(h, w[layer + "post_attention_layernorm.weight"]) @ w[layer + "mlp.dense_h_to_4h.weight"].T
    ).split(48, -1)
    down = w[layer + "mlp.dense_4h_to_h.weight"].T
    final, out = w["transformer.encoder.final_layernorm.weight"], w["transformer.output_layer.weight"].T
    expected = norm(h + (torch.nn.functional.silu(gate) * up) @ down, final) @ out
    swapped = norm(h + (torch.nn.functional.silu(up) * gate) @ down, final) @ out
    logits, _ = reference_forward(config, sd, ids)
    torch.testing.assert_close(logits[0].double(), expected, atol=ATOL, rtol=0)
    assert (swapped - expected).abs().max() > 1e-2


def test_mask_no_prefix_left_padding_unmasks_pad_query_rows():
    mask = build_attention_mask(torch.tensor([[0, 1, 1], [1, 1, 1]]), 2, 3, 0)
    allowed = ~mask[:, 0]
    expected = torch.tensor(
        [
            [[1, 1, 1], [0, 1, 0], [0, 1, 1]],  # pad query row sees everything; real rows never see the pad
            [[1, 0, 0], [1, 1, 0], [1, 1, 1]],  # unpadded row: plain causal
        ],
        dtype=torch.bool,
    )
    assert mask.shape == (2, 1, 3, 3)
    assert torch.equal(allowed, expected)


def test_mask_with_prefix_pad_rows_see_only_prefix():
    padding = torch.tensor([[1, 1, 0, 1, 1]])  # 2 prefix ones + left-padded [0, 1, 1]
    allowed = ~build_attention_mask(padding, 1, 3, 2)[0, 0]
    expected = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(allowed, expected)


def test_mask_without_padding_is_causal_after_past():
    allowed = ~build_attention_mask(None, 1, 2, 3)[0, 0]
    assert torch.equal(allowed, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))


def test_prefix_slot_layout_matches_hand_formula():
    config = {**TINY, "pre_seq_len": 3}
    layers, groups, hn = 2, 2, 8
    weight = torch.arange(3 * layers * 2 * groups * hn, dtype=torch.float32).view(3, -1)
    kvs = prefix_key_values(config, {PREFIX + "embedding.weight": weight}, 2, torch.float32)
    assert len(kvs) == layers
    for i, (k, v) in enumerate(kvs):
        assert k.shape == v.shape == (2, groups, 3, hn)
        for b in range(2):
            for g in range(groups):
                for p in range(3):
                    key_start = ((2 * i) * groups + g) * hn
                    value_start = ((2 * i + 1) * groups + g) * hn
                    assert torch.equal(k[b, g, p], weight[p, key_start : key_start + hn])
                    assert torch.equal(v[b, g, p], weight[p, value_start : value_start + hn])


def test_prefix_projection_uses_trans_0_tanh_trans_2():
    config, sd = with_prefix(3, projection=True)
    kv_size = 2 * 2 * 2 * 8
    mlp = torch.nn.Sequential(torch.nn.Linear(kv_size, 32), torch.nn.Tanh(), torch.nn.Linear(32, kv_size))
    mlp.load_state_dict({k.removeprefix(PREFIX + "trans."): v for k, v in sd.items() if ".trans." in k})
    with torch.no_grad():
        projected = mlp(sd[PREFIX + "embedding.weight"])
    got = prefix_key_values(config, sd, 1, torch.float32)
    want = prefix_key_values(
        {**config, "prefix_projection": False}, {PREFIX + "embedding.weight": projected}, 1, torch.float32
    )
    for (k1, v1), (k2, v2) in zip(got, want, strict=True):
        torch.testing.assert_close(k1, k2, atol=1e-6, rtol=0)
        torch.testing.assert_close(v1, v2, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------- forward properties


@pytest.mark.parametrize("pre_seq_len", [0, 3])
def test_causality_prefix_of_sequence(pre_seq_len):
    config, sd = with_prefix(pre_seq_len) if pre_seq_len else (TINY, tiny_state_dict())
    ids = random_ids(2, 10)
    full, _ = reference_forward(config, sd, ids)
    part, _ = reference_forward(config, sd, ids[:, :6])
    assert full.shape == (2, 10, 64) and full.dtype == torch.float32
    torch.testing.assert_close(part, full[:, :6], atol=ATOL, rtol=0)
    changed, _ = reference_forward(config, sd, torch.cat([ids[:, :6], (ids[:, 6:] + 1) % 64], dim=1))
    torch.testing.assert_close(changed[:, :6], full[:, :6], atol=ATOL, rtol=0)
    assert (changed[:, 6:] - full[:, 6:]).abs().max() > 1e-2


@pytest.mark.parametrize("pre_seq_len", [0, 3])
def test_left_padding_matches_unpadded_row(pre_seq_len):
    config, sd = with_prefix(pre_seq_len) if pre_seq_len else (TINY, tiny_state_dict())
    ids = random_ids(1, 7)
    pad = 4
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0] * pad + [1] * 7])
    positions = torch.tensor([[0] * pad + list(range(7))])
    alone, _ = reference_forward(config, sd, ids)
    other = random_ids(1, 11, seed=5)  # an unpadded row beside it
    batch_ids = torch.cat([padded, other])
    batch_mask = torch.cat([mask, torch.ones(1, 11, dtype=torch.long)])
    batch_positions = torch.cat([positions, torch.arange(11)[None]])
    batch, _ = reference_forward(config, sd, batch_ids, batch_mask, batch_positions)
    torch.testing.assert_close(batch[1:], reference_forward(config, sd, other)[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(batch[:1, pad:], alone, atol=ATOL, rtol=0)
    # Without the mask the pad tokens leak into the real positions: the check above is not vacuous.
    leaky, _ = reference_forward(config, sd, padded, None, positions)
    assert (leaky[:, pad:] - alone).abs().max() > 1e-2


def test_only_relative_positions_matter():
    sd = tiny_state_dict()
    ids = random_ids(2, 9)
    base, _ = reference_forward(TINY, sd, ids)
    shifted, _ = reference_forward(TINY, sd, ids, position_ids=torch.arange(9).expand(2, -1) + 17)
    torch.testing.assert_close(shifted, base, atol=ATOL, rtol=0)
    scrambled, _ = reference_forward(TINY, sd, ids, position_ids=torch.arange(9).flip(0).expand(2, -1))
    assert (scrambled - base).abs().max() > 1e-2


def test_prefix_equals_kv_cache_computed_at_position_zero():
    """A P-Tuning v2 prefix is a raw KV cache: unrotated keys, queries not offset by P.

    Keys computed at position 0 are unrotated, so the cache of two tokens run at positions [0, 0], written
    into the PrefixEncoder rows in the documented slot order (layer i: key = slot 2i, value = slot 2i+1),
    must reproduce the continuation of that same 2-token run - catching a swapped key/value, a wrong layer
    order, a rotated prefix or an offset query position.
    """
    sd = tiny_state_dict()
    head = random_ids(1, 2, seed=3)
    tail = random_ids(1, 6, seed=4)
    _, presents = forward_with_cache(TINY, sd, head, position_ids=torch.tensor([[0, 0]]))
    rows = [
        torch.cat([torch.cat([k[0, :, p].flatten(), v[0, :, p].flatten()]) for k, v in presents])
        for p in range(2)
    ]
    config = {**TINY, "pre_seq_len": 2, "prefix_projection": False}
    prefixed, _ = reference_forward(config, {**sd, PREFIX + "embedding.weight": torch.stack(rows)}, tail)
    continued, _ = reference_forward(
        TINY, sd, torch.cat([head, tail], 1), position_ids=torch.tensor([[0, 0, *range(6)]])
    )
    torch.testing.assert_close(prefixed, continued[:, 2:], atol=ATOL, rtol=0)
    swapped = [
        torch.cat([torch.cat([v[0, :, p].flatten(), k[0, :, p].flatten()]) for k, v in presents])
        for p in range(2)
    ]
    wrong, _ = reference_forward(config, {**sd, PREFIX + "embedding.weight": torch.stack(swapped)}, tail)
    assert (wrong - prefixed).abs().max() > 1e-2


def _swap_query_heads(sd, a, b, hn=8):
    """Swap query heads a and b (qkv rows + dense input columns) in every layer."""
    out = dict(sd)
    for i in range(TINY["num_layers"]):
        p = f"transformer.encoder.layers.{i}.self_attention."
        order = list(range(TINY["num_attention_heads"]))
        order[a], order[b] = b, a
        rows = torch.cat([torch.arange(h * hn, (h + 1) * hn) for h in order])
        q_rows = TINY["num_attention_heads"] * hn
        full_rows = torch.cat([rows, torch.arange(q_rows, sd[p + "query_key_value.weight"].shape[0])])
        out[p + "query_key_value.weight"] = sd[p + "query_key_value.weight"][full_rows]
        out[p + "query_key_value.bias"] = sd[p + "query_key_value.bias"][full_rows]
        out[p + "dense.weight"] = sd[p + "dense.weight"][:, rows]
    return out


def test_gqa_head_h_reads_group_h_div_heads_per_group():
    # 4 heads, 2 groups: heads {0, 1} -> group 0, {2, 3} -> group 1 (not h % g).
    sd = tiny_state_dict()
    ids = random_ids(2, 8)
    base, _ = reference_forward(TINY, sd, ids)
    same_group, _ = reference_forward(TINY, _swap_query_heads(sd, 0, 1), ids)
    other_group, _ = reference_forward(TINY, _swap_query_heads(sd, 0, 2), ids)
    torch.testing.assert_close(same_group, base, atol=ATOL, rtol=0)
    assert (other_group - base).abs().max() > 1e-2


def test_loss_is_mean_shifted_cross_entropy_ignoring_minus_100():
    sd = tiny_state_dict()
    ids = random_ids(2, 6)
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, 5] = -100
    logits, loss = reference_forward(TINY, sd, ids, labels=labels)
    terms = [
        -torch.log_softmax(logits[b, t - 1].double(), -1)[labels[b, t]]
        for b in range(2)
        for t in range(1, 6)
        if labels[b, t] != -100
    ]
    assert len(terms) == 7
    assert loss.dtype == torch.float32
    assert abs(loss.item() - (sum(terms) / len(terms)).item()) < 1e-5
    assert reference_forward(TINY, sd, ids)[1] is None


def test_prefix_dropout_only_when_training():
    config, sd = with_prefix(4)
    ids = random_ids(1, 5)
    eval_a, _ = reference_forward(config, sd, ids)
    eval_b, _ = reference_forward(config, sd, ids)
    assert torch.equal(eval_a, eval_b)
    torch.manual_seed(7)
    train_a, _ = reference_forward(config, sd, ids, prefix_dropout_training=True)
    torch.manual_seed(7)
    train_b, _ = reference_forward(config, sd, ids, prefix_dropout_training=True)
    assert torch.equal(train_a, train_b)
    assert (train_a - eval_a).abs().max() > 1e-3


def test_gradients_reach_prefix_encoder():
    config, sd = with_prefix(3, projection=True)
    params = {k: v.clone().requires_grad_(True) for k, v in sd.items() if k.startswith(PREFIX)}
    ids = random_ids(2, 5)
    _, loss = reference_forward(config, {**sd, **params}, ids, labels=ids)
    loss.backward()
    for name, param in params.items():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().max() > 0, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_track_float32(dtype):
    config, sd = with_prefix(2)
    half = {k: (v if k.startswith(PREFIX) else v.to(dtype)) for k, v in sd.items()}  # encoder stays fp32
    ids = random_ids(2, 6)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6])
    ref, ref_loss = reference_forward(config, sd, ids, mask, labels=ids)
    got, loss = reference_forward(config, half, ids, mask, labels=ids)
    assert got.dtype == torch.float32 and loss.dtype == torch.float32
    assert loss.item() == loss.to(dtype).item()  # rounded to the model dtype, as the original does
    assert (got - ref).abs().max() < 0.1
    assert abs(loss.item() - ref_loss.item()) < 0.05


# ------------------------------------------------------------------------------------------ weights, config


def test_random_state_dict_has_original_names_and_shapes():
    sd = make_random_chatglm_state_dict(TINY, 0)
    expected = {EMBED: (64, 32), INV_FREQ: (2,), "transformer.encoder.final_layernorm.weight": (32,)}
    expected["transformer.output_layer.weight"] = (64, 32)
    for i in range(2):
        p = f"transformer.encoder.layers.{i}."
        expected[p + "input_layernorm.weight"] = (32,)
        expected[p + "self_attention.query_key_value.weight"] = (4 * 8 + 2 * 2 * 8, 32)
        expected[p + "self_attention.query_key_value.bias"] = (64,)
        expected[p + "self_attention.dense.weight"] = (32, 32)
        expected[p + "post_attention_layernorm.weight"] = (32,)
        expected[p + "mlp.dense_h_to_4h.weight"] = (96, 32)
        expected[p + "mlp.dense_4h_to_h.weight"] = (32, 48)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert torch.equal(sd[INV_FREQ], torch.tensor([1.0, 0.01]))
    again = make_random_chatglm_state_dict(TINY, 0)
    assert all(torch.equal(sd[k], again[k]) for k in sd)
    assert not torch.equal(make_random_chatglm_state_dict(TINY, 1)[EMBED], sd[EMBED])
    assert INV_FREQ not in make_random_chatglm_state_dict(TINY, 0, include_inv_freq=False)
    assert make_random_chatglm_state_dict(TINY, 0, torch.bfloat16)[EMBED].dtype == torch.bfloat16


def test_random_prefix_state_dict_shapes():
    plain = make_random_prefix_state_dict(TINY, 5, False, 0)
    assert {k: tuple(v.shape) for k, v in plain.items()} == {PREFIX + "embedding.weight": (5, 64)}
    proj = make_random_prefix_state_dict(TINY, 5, True, 0)
    assert {k: tuple(v.shape) for k, v in proj.items()} == {
        PREFIX + "embedding.weight": (5, 64),
        PREFIX + "trans.0.weight": (32, 64),
        PREFIX + "trans.0.bias": (32,),
        PREFIX + "trans.2.weight": (64, 32),
        PREFIX + "trans.2.bias": (64,),
    }


def test_config_mismatch_and_unsupported_variants_raise():
    sd = tiny_state_dict()
    ids = random_ids(1, 3)
    with pytest.raises(ValueError, match="pre_seq_len"):
        reference_forward({**TINY, "pre_seq_len": 2}, sd, ids)
    with pytest.raises(ValueError, match="pre_seq_len"):
        reference_forward(TINY, {**sd, **make_random_prefix_state_dict(TINY, 2, False, 0)}, ids)
    with pytest.raises(ValueError, match="multi_query_attention"):
        reference_forward({**TINY, "multi_query_attention": False}, sd, ids)
    with pytest.raises(ValueError, match="seq_length"):
        reference_forward(TINY, sd, ids, position_ids=torch.tensor([[0, 1, 64]]))
