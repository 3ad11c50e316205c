"""--quantization_bit 4|8: bitsandbytes layers in the decoder; training still changes only the prefix."""

from __future__ import annotations

import pytest
import torch

from ptune.model.load import load_model
from tools.tiny import make_tiny_checkpoint

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), "chatglm3", seed=4)


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 900, (2, 12), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100
    return ids, labels


@pytest.mark.parametrize("bits,layer_type", [(8, "Linear8bitLt"), (4, "Linear4bit")])
def test_quantized_base_trains_only_the_prefix(folder, bits, layer_type):
    model = load_model(folder, dtype="float32", device="cpu", pre_seq_len=4, quantization_bit=bits)
    layer = model.base.model.layers[0]
    assert type(layer.self_attn.q_proj).__name__ == layer_type
    assert type(layer.mlp.down_proj).__name__ == layer_type
    assert type(model.base.lm_head).__name__ == "Linear"  # the output layer stays in the compute dtype
    assert model.prefix_encoder.embedding.weight.dtype == torch.float32
    before = {n: p.detach().clone() for n, p in model.base.named_parameters()}
    prefix_before = model.prefix_encoder.embedding.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    ids, labels = _batch()
    model(ids, labels=labels).loss.backward()
    opt.step()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prefix_encoder.embedding.weight"}
    for name, param in model.base.named_parameters():
        assert torch.equal(param, before[name]), name
    assert not torch.equal(model.prefix_encoder.embedding.weight, prefix_before)


def test_int8_loss_within_two_percent_of_bf16(folder):
    """The bar: loss on the tiny model with an int8 base within 2% of the bf16 base."""
    ids, labels = _batch()
    torch.manual_seed(0)
    full = load_model(folder, dtype="bfloat16", device="cpu", pre_seq_len=4)
    torch.manual_seed(0)
    int8 = load_model(folder, dtype="bfloat16", device="cpu", pre_seq_len=4, quantization_bit=8)
    int8.prefix_encoder.load_state_dict(full.prefix_encoder.state_dict())
    with torch.no_grad():
        a, b = full(ids, labels=labels).loss.item(), int8(ids, labels=labels).loss.item()
    assert abs(a - b) / a < 0.02


def test_4bit_runs_the_same_on_a_cpu_with_avx512_bf16(folder, monkeypatch):
    """bitsandbytes repacks a 4-bit weight for its fused bf16 kernel on CPUs with avx512_bf16 (common Xeons) at
    the first eval-mode, no-grad call; the tiny model's 96-wide layers then fail (`shape '[64, 1]' is invalid
    for input of size 96`), and a repacked layer has no backward pass. Here the CPU is made to look like one
    (on a real one the patch changes nothing): ptune's layers must stay on the path every CPU takes, giving
    the same logits and, in a train -> eval -> train sequence, the same prefix gradients."""
    ids, labels = _batch()

    def load():
        return load_model(
            folder, dtype="float32", device="cpu", pre_seq_len=4, quantization_bit=4, prefix_dropout=0.0
        )

    plain = load()
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)  # what Linear4bit asks at creation
    xeon = load()
    xeon.prefix_encoder.load_state_dict(plain.prefix_encoder.state_dict())
    grads = []
    for model in (plain, xeon):
        with torch.no_grad():
            logits = model(ids).logits  # eval mode: where bitsandbytes would repack
        model.train()
        model(ids, labels=labels).loss.backward()
        grads.append((logits, model.prefix_encoder.embedding.weight.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(grads[0][1], grads[1][1]) and bool(grads[0][1].abs().sum() > 0)
