"""Batched generation with the prefix: left-padded prompts, KV cache, every row stops at its own end id.

Written by hand rather than through `model.generate` because transformers' generation loop derives position
ids from the attention mask and cache positions from the cache length: with P prefix slots in the cache it
would offset every query position by P and slice P tokens off the prompt. Here the prefix is computed once
per batch, the prompt is prefilled with positions counted from each row's first real token (`[0]*pad +
range(n)`, as the ChatGLM tokenizers give them, plus P for a prefix recorded "after_prefix":
`PrefixTunedLM.positions`), and each new token takes the next position of its own row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper
from transformers.cache_utils import DynamicCache

from ptune.model.load import PrefixTunedLM
from ptune.model.prefix import cache_argument

# The lowest sampling temperature eval / predict / chat / serve take: below it the logits divided by it can
# overflow to inf (1e-300 does), and a distribution that sharp is greedy decoding anyway.
MIN_TEMPERATURE = 0.01


@dataclass(frozen=True)
class GenerationSettings:
    """How tokens are picked, for every verb that generates (eval, predict, chat, serve, bench, plan).

    Greedy by default (deterministic metrics); `do_sample` uses top-p/temperature as THUDM's evaluation did.
    `seed`: a served request's own seed (its draws then repeat whatever else is batched with it); None: the
    caller's generator.
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    do_sample: bool = False
    top_p: float = 0.7
    temperature: float = 0.95
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return not self.do_sample

    @classmethod
    def from_openai(cls, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None):
        """From an OpenAI request's fields (`ptune serve`): temperature 0 means greedy decoding."""
        if temperature == 0:
            return cls(top_p=top_p, seed=seed)
        return cls(do_sample=True, temperature=temperature, top_p=top_p, seed=seed)

    @classmethod
    def from_arguments(cls, gen_args) -> GenerationSettings:
        """From the (validated) `GenerationArguments` of eval / predict / chat: the one place they meet."""
        return cls(
            max_new_tokens=gen_args.max_new_tokens,
            do_sample=gen_args.do_sample,
            top_p=gen_args.top_p,
            temperature=gen_args.temperature,
        )


def sampling_warpers(settings: GenerationSettings) -> LogitsProcessorList:
    """Temperature then top-p, as THUDM's sampling (and `ptune serve`'s sampling rows) apply them."""
    return LogitsProcessorList(
        [TemperatureLogitsWarper(settings.temperature), TopPLogitsWarper(settings.top_p)]
    )


def next_tokens(logits: torch.Tensor, settings: GenerationSettings, warpers, generator) -> torch.Tensor:
    """logits [B, V] float32 → token ids [B]: argmax, or a draw from the warped distribution."""
    if not settings.do_sample:
        return logits.argmax(-1)
    logits = warpers(None, logits)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


def decoder_pass(decoder, cache_name: str, cache, input_ids, mask, positions) -> torch.Tensor:
    """One pass of the base's decoder over input_ids [B, S] after the T slots `cache` holds (mask [B, T + S],
    positions [B, S]); `cache` grows by S in place. The hidden state of each row's last position [B, H]:
    what generation (`iter_tokens`) and the server (`ptune.serve.engine`) turn into the next token's logits."""
    return decoder(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        **{cache_name: cache},
        use_cache=True,
    ).last_hidden_state[:, -1]


@torch.inference_mode()
def iter_tokens(
    model: PrefixTunedLM,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    stop_ids: list[int],
    settings: GenerationSettings = GenerationSettings(),
    generator: torch.Generator | None = None,
) -> Iterator[torch.LongTensor]:
    """Yield the next token of every row [B], step by step, at most `max_new_tokens` times.

    input_ids, attention_mask: [B, S] (pads on the left). The prefix is computed once, the prompt prefilled,
    then each step feeds the previous tokens back with the next position of each row. `stop_ids` only
    matter for `min_new_tokens`; when to stop is the caller's choice (batch: every row done; chat: one row).
    """
    batch = input_ids.shape[0]
    decoder, head = model.base.get_decoder(), model.base.get_output_embeddings()
    positions = model.positions(attention_mask, input_ids.shape[1], input_ids.device)
    cache = model.prefix_past(batch, read_only=False)
    if cache is None:
        cache = DynamicCache()
    mask = model.extend_mask(attention_mask)
    cache_name = cache_argument(type(decoder))  # the same cache object, grown by every call
    hidden = decoder_pass(decoder, cache_name, cache, input_ids, mask, positions)
    next_pos = positions[:, -1:] + 1
    stops = torch.tensor(stop_ids, dtype=torch.long, device=input_ids.device)
    warpers = sampling_warpers(settings)
    for step in range(settings.max_new_tokens):
        logits = head(hidden).float()
        if step < settings.min_new_tokens:
            logits[:, stops] = float("-inf")
        token = next_tokens(logits, settings, warpers, generator)
        yield token
        if step + 1 == settings.max_new_tokens:
            return
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=-1)
        hidden = decoder_pass(decoder, cache_name, cache, token[:, None], mask, next_pos)
        next_pos = next_pos + 1


def stream_generate(
    model: PrefixTunedLM,
    prompt: Sequence[int],
    stop_ids: Sequence[int],
    settings: GenerationSettings | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield the answer to one prompt token by token (`ptune chat`): `iter_tokens` for a batch of one, greedy
    unless `settings` say otherwise.

    Greedy decoding yields exactly the tokens of `generate(...)[0]`. Like `generate`, the stop id that ends
    the answer is yielded last; at most `settings.max_new_tokens` ids in all. Closing the iterator early
    (Ctrl-C) simply drops the cache.
    """
    settings = settings or GenerationSettings()
    input_ids = torch.tensor([list(prompt)], dtype=torch.long, device=model.device)  # [1, S]
    stops = set(stop_ids)
    for token in iter_tokens(
        model, input_ids, torch.ones_like(input_ids), list(stop_ids), settings, generator
    ):
        yield int(token)
        if int(token) in stops:
            return


def generate(
    model: PrefixTunedLM,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    stop_ids: list[int],
    pad_id: int,
    settings: GenerationSettings = GenerationSettings(),
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Generate after left-padded prompts.

    input_ids, attention_mask: [B, S] (pads on the left). Returns the new tokens [B, T], T <= max_new_tokens,
    each row cut after its first stop id and filled with `pad_id` from there on (the stop id itself is kept,
    so callers can tell a finished answer from one cut by the length limit).
    """
    batch = input_ids.shape[0]
    stops = torch.tensor(stop_ids, dtype=torch.long, device=input_ids.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    out = []
    for token in iter_tokens(model, input_ids, attention_mask, stop_ids, settings, generator):
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        out.append(token)
        finished |= torch.isin(token, stops)
        if bool(finished.all()):
            break
    return torch.stack(out, dim=1) if out else input_ids.new_zeros(batch, 0)
