"""The model side of the server: one frozen base, each prefix's keys/values computed once, prefill and decode.

A prefix in inference is a constant: `PrefixEncoder(1, dtype)` gives the same L pairs [1, G, P, hn] for every
request (no dropout in eval), so it is computed once when the server starts and only copied into the rows
that use it (ptune/serve/batch.py). The forward passes are those of `ptune.infer.generate.iter_tokens`: the prompt
prefilled after the prefix slots with positions from each row's first prompt token (from 0, or from P for a
prefix recorded "after_prefix": each row its own), then one token per row and step, each at its own next
position, so greedy answers are token for token those of `ptune predict`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicCache

from ptune.infer.generate import GenerationSettings, decoder_pass, next_tokens, sampling_warpers
from ptune.model.load import PrefixTunedLM
from ptune.model.prefix import PrefixEncoder, cache_argument
from ptune.serve.batch import KV, BatchCache, prefix_block, prompt_block


class Engine:
    """Runs the base model for the scheduler. `prefixes`: name → PrefixEncoder (already on the model's device)."""

    def __init__(self, model: PrefixTunedLM, prefixes: dict[str, PrefixEncoder], pad_id: int):
        self.model = model
        self.pad_id = pad_id
        self.decoder = model.base.get_decoder()
        self.head = model.base.get_output_embeddings()
        self.cache_kw = cache_argument(type(self.decoder))
        with torch.inference_mode():
            self.prefix_kv: dict[str, KV] = {
                name: [(k.contiguous(), v.contiguous()) for k, v in encoder.eval()(1, model.dtype)]
                for name, encoder in prefixes.items()
            }
        # Where each prefix's rows number their first prompt token (PrefixConfig.position_offset: 0 or P).
        self.position_offsets = {name: encoder.config.position_offset for name, encoder in prefixes.items()}

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def _forward(self, input_ids, mask, positions, layers: KV | None) -> tuple[torch.Tensor, KV]:
        """One decoder pass over input_ids [B, S] after the cache `layers` ([B, G, T, hn]; mask [B, T + S]):
        (logits of each row's last position [B, V] float32, the grown cache [B, G, T + S, hn])."""
        cache = DynamicCache(ddp_cache_data=layers) if layers else DynamicCache()
        hidden = decoder_pass(self.decoder, self.cache_kw, cache, input_ids, mask, positions)
        return self.head(hidden).float(), [(layer.keys, layer.values) for layer in cache.layers]

    def first_position(self, prefix: str | None) -> int:
        """The position of a row's first prompt token: P for a prefix recorded "after_prefix", else 0."""
        return 0 if prefix is None else self.position_offsets[prefix]

    def prefill(
        self, prompts: Sequence[Sequence[int]], prefixes: Sequence[str | None]
    ) -> tuple[BatchCache, torch.Tensor]:
        """New rows (prompt ids, prefix name or None each) in one pass: their cache [n, G, P + S, hn] and
        the logits of their first answer token [n, V]."""
        start = prefix_block([None if name is None else self.prefix_kv[name] for name in prefixes])
        input_ids, prompt_mask, positions = prompt_block(prompts, self.pad_id, self.device)
        offsets = [self.first_position(name) for name in prefixes]
        if any(offsets):
            positions = positions + torch.tensor(offsets, device=positions.device)[:, None]
        mask = prompt_mask if start is None else torch.cat([start.mask, prompt_mask], dim=1)
        logits, layers = self._forward(input_ids, mask, positions, None if start is None else start.layers)
        return BatchCache(layers, mask), logits

    def decode(
        self, cache: BatchCache, tokens: torch.Tensor, positions: torch.Tensor
    ) -> tuple[BatchCache, torch.Tensor]:
        """One step for every running row: tokens [B] at positions [B] → (the cache one slot longer, logits [B, V])."""
        mask = torch.cat([cache.mask, cache.mask.new_ones(cache.rows, 1)], dim=1)
        logits, layers = self._forward(tokens[:, None], mask, positions[:, None], cache.layers)
        return BatchCache(layers, mask), logits


def pick_tokens(
    logits: torch.Tensor, sampling: Sequence[GenerationSettings], generators: Sequence[torch.Generator | None]
) -> list[int | str]:
    """logits [B, V] → one token per row, each by its own rule (`ptune.infer.generate.next_tokens`): greedy rows
    by argmax over the whole batch at once, sampling rows one by one with their own generator.

    A row whose logits are not all finite, or whose sampling raises (probabilities that overflowed), gets the
    reason (a str) instead of a token: the scheduler fails that row alone, the others take their token."""
    tokens: list[int | str] = logits.argmax(-1).tolist()
    finite = torch.isfinite(logits).all(-1).tolist()
    for i, rule in enumerate(sampling):
        if not finite[i]:
            tokens[i] = "the model's scores for this request are not finite (NaN or inf)"
        elif not rule.greedy:
            try:
                row = next_tokens(logits[i : i + 1], rule, sampling_warpers(rule), generators[i])
            except Exception as e:  # e.g. multinomial on probabilities that overflowed: this row only
                tokens[i] = f"sampling failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                continue
            tokens[i] = int(row[0])
    return tokens
