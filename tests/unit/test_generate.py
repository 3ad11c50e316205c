"""Batched, left-padded, cached generation with the prefix equals greedy decoding by full recomputation."""

from __future__ import annotations

import pytest
import torch

from ptune.data.chat_format import strip_answer
from ptune.infer.generate import GenerationSettings, generate
from ptune.model.load import load_model
from tools.tiny import make_tiny_checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), "chatglm3", seed=2)


def _greedy_by_recompute(model, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("pre_seq_len", [0, 4])
def test_cached_batched_generation_equals_recomputation(folder, pre_seq_len):
    torch.manual_seed(0)
    model = load_model(folder, dtype="float32", device="cpu", pre_seq_len=pre_seq_len or None)
    if pre_seq_len:
        with torch.no_grad():  # a larger prefix so it visibly changes the answers
            model.prefix_encoder.embedding.weight.mul_(3.0)
    prompts = [[1000, 1002, 50, 60, 70, 80, 90], [1000, 1002, 33, 44]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = generate(model, ids, mask, stop_ids=[], pad_id=0, settings=GenerationSettings(max_new_tokens=6))
    for row, prompt in enumerate(prompts):
        assert out[row].tolist() == _greedy_by_recompute(model, prompt, 6)


def test_rows_stop_at_their_own_end_id(folder):
    model = load_model(folder, dtype="float32", device="cpu")
    ids = torch.tensor([[1000, 1002, 50, 60], [1000, 1002, 33, 44]])
    first = generate(model, ids, torch.ones_like(ids), [], 0, GenerationSettings(max_new_tokens=5))
    stop = int(first[0, 1])  # make row 0's second token a stop id
    out = generate(model, ids, torch.ones_like(ids), [stop], 0, GenerationSettings(max_new_tokens=5))
    assert out[0, :2].tolist() == first[0, :2].tolist()
    assert out[0, 2:].tolist() == [0] * (out.shape[1] - 2)  # padded after its stop id
    assert strip_answer(out[0].tolist(), [stop]) == [int(first[0, 0])]


def test_min_new_tokens_and_sampling_are_seeded(folder):
    model = load_model(folder, dtype="float32", device="cpu")
    ids = torch.tensor([[1000, 1002, 50, 60]])
    settings = GenerationSettings(max_new_tokens=4, min_new_tokens=4, do_sample=True)
    a = generate(model, ids, torch.ones_like(ids), [2], 0, settings, torch.Generator().manual_seed(3))
    b = generate(model, ids, torch.ones_like(ids), [2], 0, settings, torch.Generator().manual_seed(3))
    assert a.shape == (1, 4) and torch.equal(a, b) and 2 not in a.tolist()[0]
