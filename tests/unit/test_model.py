"""ptune.load_model on original-format folders against the independent re-implementation of the original
ChatGLM forward (tests/reference/chatglm_reference.py): logits and losses within 1e-5 in float32, with and
without a prefix (projection on and off), left padding, gradient checkpointing, freezing and strict loading.
The mapping under test is described in docs/checkpoints.md."""

from __future__ import annotations

import json

import pytest
import torch

from ptune.bench.workload import chatglm_config
from ptune.io.errors import UserError
from ptune.model.convert import PREFIX_KEY
from ptune.model.load import load_model
from tests.reference.chatglm_reference import make_random_prefix_state_dict, reference_forward
from tools import tiny

VOCAB = 128


def _folder(tmp_path, family="chatglm3", safetensors=False, **overrides):
    cfg = {**chatglm_config(family, VOCAB, tiny.TINY_DIMS), **overrides}
    state = tiny.random_chatglm_weights(cfg, seed=1, std=0.2)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    tiny.write_sharded(tmp_path, state, cfg["num_layers"], safetensors, torch.float32)
    return cfg, state


def _prefix_file(tmp_path, cfg, pre_seq_len, projection):
    prefix = make_random_prefix_state_dict(cfg, pre_seq_len, projection, seed=3)
    ckpt = tmp_path / "prefix"
    ckpt.mkdir()
    torch.save(prefix, ckpt / "pytorch_model.bin")
    return ckpt, prefix


def _batch(seed=0, pad_left=(0, 3)):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(pad_left), 9), generator=g)
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pad_left):
        ids[row, :pad] = 0
        mask[row, :pad] = 0
    labels = ids.clone()
    labels[:, :4] = -100
    labels[mask == 0] = -100
    return ids, mask, labels


@pytest.mark.parametrize("family,safetensors", [("chatglm2", False), ("chatglm3", False), ("glm4", True)])
def test_logits_match_original_without_prefix(tmp_path, family, safetensors):
    cfg, state = _folder(tmp_path, family, safetensors)
    model = load_model(tmp_path, dtype="float32", device="cpu")
    ids, _, labels = _batch(pad_left=(0, 0))
    out = model(ids, labels=labels)
    ref_logits, ref_loss = reference_forward(cfg, state, ids, labels=labels)
    assert (out.logits - ref_logits).abs().max().item() < 1e-5
    assert abs(out.loss.item() - ref_loss.item()) < 1e-5


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_padded_batch_without_prefix_matches_original_on_every_row(tmp_path, attn):
    """The original un-masks pad query rows when there is no prefix; ptune reproduces even those rows."""
    cfg, state = _folder(tmp_path, "chatglm3")
    model = load_model(tmp_path, dtype="float32", device="cpu", attn_implementation=attn)
    ids, mask, labels = _batch(pad_left=(0, 3))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(ids, attention_mask=mask, labels=labels)
    ref_logits, ref_loss = reference_forward(
        cfg, state, ids, attention_mask=mask, position_ids=positions, labels=labels
    )
    assert (out.logits - ref_logits).abs().max().item() < 1e-5
    assert abs(out.loss.item() - ref_loss.item()) < 1e-5


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("family", ["chatglm2", "glm4"])
def test_logits_and_loss_match_original_with_prefix_and_left_padding(tmp_path, family, projection):
    cfg, state = _folder(tmp_path, family, family == "glm4")
    ckpt, prefix = _prefix_file(tmp_path, cfg, pre_seq_len=5, projection=projection)
    model = load_model(tmp_path, dtype="float32", device="cpu", ptuning_checkpoint=ckpt)
    assert model.pre_seq_len == 5 and model.prefix_encoder.config.prefix_projection is projection
    ids, mask, labels = _batch()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(ids, attention_mask=mask, labels=labels)
    ref_cfg = {**cfg, "pre_seq_len": 5, "prefix_projection": projection}
    ref_logits, ref_loss = reference_forward(
        ref_cfg, {**state, **prefix}, ids, attention_mask=mask, position_ids=positions, labels=labels
    )
    assert (out.logits - ref_logits).abs().max().item() < 1e-5  # every row, pad query rows included
    assert abs(out.loss.item() - ref_loss.item()) < 1e-5


def test_prefix_gradients_match_original(tmp_path):
    cfg, state = _folder(tmp_path, "chatglm3")
    ckpt, prefix = _prefix_file(tmp_path, cfg, pre_seq_len=4, projection=True)
    model = load_model(tmp_path, dtype="float32", device="cpu", ptuning_checkpoint=ckpt, prefix_dropout=0.0)
    ids, mask, labels = _batch()
    model.train()
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    ref_prefix = {k: v.clone().requires_grad_(True) for k, v in prefix.items()}
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    _, ref_loss = reference_forward(
        {**cfg, "pre_seq_len": 4, "prefix_projection": True},
        {**state, **ref_prefix},
        ids,
        attention_mask=mask,
        position_ids=positions,
        labels=labels,
    )
    ref_loss.backward()
    for name, param in model.prefix_encoder.named_parameters():
        ref_grad = ref_prefix[PREFIX_KEY + name].grad
        assert (param.grad - ref_grad).abs().max().item() < 1e-6, name


@pytest.mark.parametrize("projection", [False, True])
def test_activation_checkpointing_gives_identical_loss_and_prefix_grads(tmp_path, projection):
    _folder(tmp_path, "chatglm3")
    ids, mask, labels = _batch()
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = load_model(
            tmp_path, dtype="float32", device="cpu", pre_seq_len=4, prefix_projection=projection
        )
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        torch.manual_seed(1)  # same prefix-dropout masks in both runs
        loss = model(ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.prefix_encoder.named_parameters()}
        results.append((loss.item(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == loss_b
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=1e-7)


def test_optimizer_step_changes_only_the_prefix(tmp_path):
    _folder(tmp_path, "chatglm3")
    model = load_model(tmp_path, dtype="float32", device="cpu", pre_seq_len=4)
    before_base = {n: p.detach().clone() for n, p in model.base.named_parameters()}
    before_prefix = {n: p.detach().clone() for n, p in model.prefix_encoder.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in model.prefix_encoder.parameters()}
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    ids, mask, labels = _batch()
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    opt.step()
    for n, p in model.base.named_parameters():
        assert torch.equal(p, before_base[n]), n
    for n, p in model.prefix_encoder.named_parameters():
        assert not torch.equal(p, before_prefix[n]), n


def test_prefix_stays_float32_on_half_base(tmp_path):
    _folder(tmp_path, "chatglm3")
    model = load_model(tmp_path, dtype="bfloat16", device="cpu", pre_seq_len=4)
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.prefix_encoder.parameters())
    ids, mask, labels = _batch()
    model.train()
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    assert model.prefix_encoder.embedding.weight.grad.dtype == torch.float32


def test_weight_names_match_real_index(tmp_path):
    """The tiny writer's index has exactly the real index's name patterns (layer numbers folded)."""
    import re
    from pathlib import Path

    real_dir = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "formats"
    if not real_dir.is_dir():
        pytest.skip("shared/reference/formats is not beside this checkout")
    for family, real, ours in [
        ("chatglm2", "chatglm2-6b/pytorch_model.bin.index.json", "pytorch_model.bin.index.json"),
        ("chatglm3", "chatglm3-6b/pytorch_model.bin.index.json", "pytorch_model.bin.index.json"),
        ("glm4", "glm-4-9b-chat/model.safetensors.index.json", "model.safetensors.index.json"),
    ]:
        out = tmp_path / family
        out.mkdir()
        _folder(out, family, family == "glm4")

        def patterns(path):
            names = json.loads(Path(path).read_text())["weight_map"]
            return {re.sub(r"\.layers\.\d+\.", ".layers.N.", n) for n in names}

        assert patterns(out / ours) == patterns(real_dir / real)


def test_strict_loading_refuses_missing_and_misshapen_weights(tmp_path):
    cfg, state = _folder(tmp_path, "chatglm3")
    shard = tmp_path / "pytorch_model-00002-of-00002.bin"
    part = torch.load(shard, weights_only=True)
    part.pop("transformer.output_layer.weight")
    torch.save(part, shard)
    with pytest.raises(UserError, match="lacks 1 weights.*lm_head"):
        load_model(tmp_path, dtype="float32", device="cpu")
    part["transformer.output_layer.weight"] = torch.zeros(VOCAB + 1, cfg["hidden_size"])
    torch.save(part, shard)
    with pytest.raises(
        UserError, match=r"pytorch_model-00002-of-00002.bin: 'transformer.output_layer.weight' has shape"
    ):
        load_model(tmp_path, dtype="float32", device="cpu")


def test_prefix_checkpoint_mismatch_names_both_sizes(tmp_path):
    cfg, _ = _folder(tmp_path, "chatglm3")
    ckpt, _ = _prefix_file(tmp_path, cfg, pre_seq_len=5, projection=False)
    with pytest.raises(UserError, match="pre_seq_len 5, but --pre_seq_len 8"):
        load_model(tmp_path, dtype="float32", device="cpu", ptuning_checkpoint=ckpt, pre_seq_len=8)
    other = {**cfg, "num_layers": 3}
    bad = make_random_prefix_state_dict(other, 5, False, seed=0)
    torch.save(bad, ckpt / "pytorch_model.bin")
    with pytest.raises(UserError, match="prefix width 192 does not fit this model"):
        load_model(tmp_path, dtype="float32", device="cpu", ptuning_checkpoint=ckpt)


def test_pickle_with_code_is_refused(tmp_path):
    cfg, _ = _folder(tmp_path, "chatglm3")
    ckpt = tmp_path / "evil"
    ckpt.mkdir()
    torch.save(
        {"transformer.prefix_encoder.embedding.weight": torch.zeros(2, 2), "x": print},
        ckpt / "pytorch_model.bin",
    )
    with pytest.raises(UserError, match="not a weights-only PyTorch file"):
        load_model(tmp_path, dtype="float32", device="cpu", ptuning_checkpoint=ckpt)


def test_chatglm_v1_and_unsupported_variants_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "chatglm", "position_encoding_2d": True}))
    with pytest.raises(UserError, match="ChatGLM-6B \\(v1\\)"):
        load_model(tmp_path, device="cpu")
    _folder(tmp_path, "chatglm2", rope_ratio=16)
    with pytest.raises(UserError, match="rope_ratio=16"):
        load_model(tmp_path, device="cpu")
    (tmp_path / "modeling_chatglm.py").write_text(
        "        seq_idx = torch.arange(seq_len) / self.rope_ratio\n"
    )
    model = load_model(tmp_path, dtype="float32", device="cpu")
    assert model.config.rope_parameters["rope_type"] == "linear"
    assert model.config.rope_parameters["factor"] == 16.0


def test_native_llama_with_prefix_trains_only_prefix(tmp_path):
    tiny.make_tiny_checkpoint(tmp_path, "llama")
    model = load_model(tmp_path, dtype="float32", device="cpu", pre_seq_len=3)
    ids = torch.randint(10, 100, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    model.activation_checkpointing_enable()
    model.train()
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    assert model.prefix_encoder.embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.base.parameters())


@pytest.mark.parametrize("family", ["chatglm2", "chatglm3", "glm4", "llama"])
def test_each_tiny_family_loads_strictly_with_its_tokenizer(tmp_path, family):
    from ptune.data.chat_format import encode_example
    from ptune.families.registry import load_tokenizer

    folder = tiny.make_tiny_checkpoint(tmp_path, family)
    tok = load_tokenizer(folder)
    assert tok.family == ("native" if family == "llama" else family)
    model = load_model(folder, dtype="float32", device="cpu", pre_seq_len=2)
    ids, labels = encode_example(tok, "类型#上衣", "这件上衣。", [], 32, 16)
    out = model(torch.tensor([ids]), labels=torch.tensor([labels]))
    assert out.logits.shape == (1, len(ids), model.config.vocab_size) and torch.isfinite(out.loss)
    assert max(ids) < model.config.vocab_size


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_prefix_holding_non_finite_values_is_refused_at_load(tiny, tmp_path, value):
    """eval / predict / chat (`load_model`) and serve (`ptune.serve.cli.load`) refuse a diverged prefix with one
    line naming the file, rather than answer NaN (serve: fail every sampled request to it)."""
    from safetensors.torch import load_file, save_file

    from ptune.bench.serve import random_prefix
    from ptune.serve.cli import load

    ckpt = random_prefix(tiny, tmp_path / "p", 3, seed=0)
    state = load_file(ckpt / "model.safetensors")
    state[PREFIX_KEY + "embedding.weight"][1, 2] = value
    save_file(state, ckpt / "model.safetensors")
    message = (
        f"{ckpt}: the prefix tensor embedding.weight holds 1 non-finite values (NaN or inf); the run that wrote "
        "it diverged, so it cannot be used (an earlier checkpoint may be sound)"
    )
    with pytest.raises(UserError) as e:
        load_model(tiny, device="cpu", ptuning_checkpoint=ckpt)
    assert str(e.value) == message
    with pytest.raises(UserError) as e:
        load(str(tiny), {"p": str(ckpt)})
    assert str(e.value) == message


class _Runs:
    """A pickle that would run code when unpickled (never is: weights_only)."""

    def __reduce__(self):
        return (print, ("ran",))


def test_native_folder_problems_are_one_line_errors(tmp_path):
    # issue 16: a pickle in a native folder gave a traceback quoting torch's advice to load it with
    # weights_only=False; an index naming a file outside the folder was followed; int64 weights were cast.
    from safetensors.torch import load_file, save_file

    folder = tiny.make_tiny_checkpoint(tmp_path / "llama", "llama")
    weights = load_file(folder / "model.safetensors")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in folder.iterdir():
        if f.name != "model.safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    torch.save({"lm_head.weight": _Runs()}, pickled / "pytorch_model.bin")
    with pytest.raises(UserError) as error:
        load_model(pickled, dtype="float32", device="cpu")
    assert str(error.value) == (
        f"{pickled / 'pytorch_model.bin'}: not a weights-only PyTorch file (Unsupported global: GLOBAL print)"
    )
    index = {"weight_map": {name: "../llama/model.safetensors" for name in weights}}
    (pickled / "pytorch_model.bin").unlink()
    (pickled / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError) as error:
        load_model(pickled, dtype="float32", device="cpu")
    assert str(error.value) == (
        f"{pickled / 'model.safetensors.index.json'}: weight_map names '../llama/model.safetensors', which is "
        "not a file inside the model folder; ptune reads only the folder's own shards"
    )
    (pickled / "model.safetensors.index.json").unlink()
    save_file(
        {**weights, "lm_head.weight": weights["lm_head.weight"].long()}, str(pickled / "model.safetensors")
    )
    with pytest.raises(UserError, match=r"model.safetensors: 'lm_head.weight' holds integers \(I64\), not"):
        load_model(pickled, dtype="float32", device="cpu")


def test_chatglm_integer_weights_are_refused_not_cast(tmp_path):
    _folder(tmp_path, "chatglm3")
    shard = tmp_path / "pytorch_model-00002-of-00002.bin"
    part = torch.load(shard, weights_only=True)
    part["transformer.output_layer.weight"] = part["transformer.output_layer.weight"].long()
    torch.save(part, shard)
    with pytest.raises(UserError) as error:
        load_model(tmp_path, dtype="float32", device="cpu")
    assert str(error.value).startswith(
        f"{shard}: 'transformer.output_layer.weight' holds integers (torch.int64), not floating-point weights"
    )


def test_a_prefix_longer_than_the_model_positions_is_refused_before_allocating(tmp_path):
    cfg, _ = _folder(tmp_path, "chatglm3")
    positions = cfg.get("seq_length", 8192)
    with pytest.raises(UserError) as error:
        load_model(tmp_path, dtype="float32", device="cpu", pre_seq_len=positions + 1)
    assert str(error.value) == (
        f"--pre_seq_len {positions + 1}: longer than the {positions} positions of {tmp_path} (max_position_embeddings)"
    )
