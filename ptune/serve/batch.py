"""The running batch's key/value cache as pure tensor functions: rows join, rows leave, every row its own prefix.

A P-Tuning v2 prefix is nothing but P key/value slots at the start of a row's cache (no RoPE is applied to
them; see ptune/model/prefix.py), so rows that use different prefixes, prefixes of different lengths, or none, can
share one forward pass: each row's cache holds its own prefix slots, and the attention mask says which
slots are real. Every row is left-padded to the batch's cache length T:

    row a (prefix of 4):  [pad pad | pa pa pa pa | prompt a ...... | generated a ...]
    row b (no prefix):    [pad pad   pad pad pad pad   pad | prompt b | generated b ......]

Attention ignores where a key sits (positions are carried by the RoPE already applied to the keys, and each
row's query positions count from its first prompt token, as `ptune predict` gives them: `prompt_block` from 0,
to which the engine adds P for a prefix recorded "after_prefix"), so padding changes nothing but the number
of masked slots. Shapes: B rows, L layers, G key/value heads, T cache length,
hn head dim; a cache is L pairs (keys, values), each [B, G, T, hn], with a mask [B, T] (1 = real slot).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ptune.model.load import positions_from_mask

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each [B, G, T, hn]


@dataclass
class BatchCache:
    """The cache of the running rows: `layers` (L pairs of [B, G, T, hn]) and `mask` [B, T] (long, 1 = real)."""

    layers: KV
    mask: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])


def left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """`t` with zeros put in front along `dim` until it is `length` long (unchanged when it already is)."""
    missing = length - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def merge(a: BatchCache | None, b: BatchCache) -> BatchCache:
    """The rows of `a`, then those of `b`, in one cache: the shorter one is left-padded to the longer."""
    if a is None:
        return b
    length = max(a.length, b.length)
    layers = [
        (
            torch.cat([left_pad(ka, length, 2), left_pad(kb, length, 2)]),
            torch.cat([left_pad(va, length, 2), left_pad(vb, length, 2)]),
        )
        for (ka, va), (kb, vb) in zip(a.layers, b.layers, strict=True)
    ]
    return BatchCache(layers, torch.cat([left_pad(a.mask, length, 1), left_pad(b.mask, length, 1)]))


def keep_rows(cache: BatchCache, keep: Sequence[int]) -> BatchCache | None:
    """Only the rows `keep` (indices, in that order); the leading slots that are padding in every kept row
    are dropped, so the cache never stays longer than its longest row. None when no row is kept."""
    if not keep:
        return None
    index = torch.tensor(list(keep), dtype=torch.long, device=cache.mask.device)
    mask = cache.mask.index_select(0, index)
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1]
    layers = [
        (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
        for k, v in cache.layers
    ]
    return BatchCache(layers, mask[:, start:])


def prefix_block(prefixes: Sequence[KV | None]) -> BatchCache | None:
    """The prefixes of new rows as the start of their cache: row i holds prefix i ([1, G, P_i, hn] per layer)
    left-padded to the longest P; a row without a prefix (None) is all padding. None when no row has one."""
    present = [p for p in prefixes if p is not None]
    if not present:
        return None
    longest = max(p[0][0].shape[2] for p in present)
    template = present[0]
    layers: KV = []
    for layer in range(len(template)):
        keys, values = [], []
        for p in prefixes:
            k, v = p[layer] if p is not None else (template[layer][0][:, :, :0], template[layer][1][:, :, :0])
            keys.append(left_pad(k, longest, 2))
            values.append(left_pad(v, longest, 2))
        layers.append((torch.cat(keys), torch.cat(values)))
    device = template[0][0].device
    lengths = [0 if p is None else p[0][0].shape[2] for p in prefixes]
    mask = torch.tensor([[0] * (longest - n) + [1] * n for n in lengths], dtype=torch.long, device=device)
    return BatchCache(layers, mask)


def prompt_block(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """New rows' prompts, left-padded: (input_ids [n, S], mask [n, S], positions [n, S]); positions count
    from 0 at each row's first prompt token (`[0]*pad + range(len)`), as `ptune predict` numbers them."""
    longest = max(len(p) for p in prompts)
    ids = [[pad_id] * (longest - len(p)) + list(p) for p in prompts]
    mask = [[0] * (longest - len(p)) + [1] * len(p) for p in prompts]
    input_ids = torch.tensor(ids, dtype=torch.long, device=device)
    attention = torch.tensor(mask, dtype=torch.long, device=device)
    return input_ids, attention, positions_from_mask(attention, longest, device)


def admit_count(running: int, waiting_lengths: Sequence[int], max_batch: int, max_prefill_tokens: int) -> int:
    """How many of the waiting requests (prompt lengths, oldest first) join the batch now: as many as there
    are free rows, while their prompts total at most `max_prefill_tokens` (always at least one when a row
    is free, so that a long prompt is never starved)."""
    free = max(max_batch - running, 0)
    count, tokens = 0, 0
    for length in waiting_lengths[:free]:
        if count and tokens + length > max_prefill_tokens:
            break
        count, tokens = count + 1, tokens + length
    return count
