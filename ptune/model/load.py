"""`load_model`: a frozen base model plus an optional float32 P-Tuning v2 prefix, behind one `forward`.

`PrefixTunedLM.forward(input_ids [B, S], attention_mask [B, S] | None, labels [B, S] | None)` returns
`.logits` [B, S, V] and `.loss`, applying the prefix exactly as the original ChatGLM code does: prefix
keys/values as a read-only cache, a mask P columns wider, query positions counted from the first real token:
from 0 (ChatGLM's convention) or from P (PEFT's, for native models), as the prefix records (`positions`).
The one rule for what trains and what is saved lives here too: `trainable_state_dict`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from ptune.data.labels import IGNORE_INDEX
from ptune.io.errors import UserError
from ptune.model.convert import PREFIX_KEY, load_glm, read_json
from ptune.model.devices import default_device, resolve_dtype
from ptune.model.fingerprint import base_fingerprint
from ptune.model.prefix import (
    PrefixEncoder,
    cache_argument,
    default_positions,
    load_prefix,
    prefix_cache,
    prefix_config_for,
    prefix_from_state,
)
from ptune.model.weight_files import check_native_weights


def positions_from_mask(attention_mask: torch.Tensor | None, seq_len: int, device) -> torch.Tensor:
    """Position ids [B, S] counting from 0 at the first real token, as the ChatGLM tokenizers return them
    for left padding (`[0]*pad + range(n)`); right padding keeps `arange(S)` over the real tokens."""
    if attention_mask is None:
        return torch.arange(seq_len, device=device).unsqueeze(0)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class BaseSource:
    """What `load_model` loaded, recorded in every checkpoint's prefix_config.json and checked when a prefix
    is loaded back: the base folder (absolute), its config.json model_type, the weight dtype ("bfloat16"),
    the chat family the tokenizer detected, and the quantization applied (None, 4 or 8)."""

    path: str
    model_type: str | None
    dtype: str
    family: str | None = None
    quantization_bit: int | None = None
    fingerprint: str | None = (
        None  # ptune.model.fingerprint.base_fingerprint: what the base is, whatever its path
    )


class PrefixTunedLM(nn.Module):
    """A frozen causal LM (`base`) with an optional trainable `prefix_encoder` (float32).

    `family` is "chatglm2" | "chatglm3" | "glm4" for original chatglm folders and "native" otherwise.
    """

    def __init__(self, base: PreTrainedModel, prefix_encoder: PrefixEncoder | None, source: BaseSource):
        super().__init__()
        self.base = base
        self.prefix_encoder = prefix_encoder
        self.source = source  # what was loaded (saved with checkpoints in prefix_config.json)
        base.requires_grad_(False)
        if prefix_encoder is not None:
            prefix_encoder.float().requires_grad_(True)

    @property
    def config(self):
        return self.base.config

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The base's decoder layer class: what FSDP's auto wrap shards one unit at a time."""
        return getattr(self.base, "_no_split_modules", None)

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def pre_seq_len(self) -> int:
        return 0 if self.prefix_encoder is None else self.prefix_encoder.config.pre_seq_len

    def floating_point_ops(self, inputs: dict) -> int:
        """Training FLOPs of one batch, for the Trainer's `total_flos`: 4·N per real token (forward 2·N,
        backward through the activations 2·N; the frozen base computes no weight gradients)."""
        mask = inputs.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        return 4 * matmul_params(self.base) * tokens

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What trains is what is saved: the prefix encoder's parameters, under THUDM's key names."""
        if self.prefix_encoder is None:
            return {}
        return {PREFIX_KEY + n: p for n, p in self.prefix_encoder.named_parameters()}

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs=None, every_n_layers=1, offload=False
    ):
        """Checkpoint each decoder layer while keeping the prefix cache (exact with the read-only cache).

        Non-reentrant checkpointing is required: the reentrant variant cannot backpropagate into the prefix
        cache ("backward through the graph a second time"). No input-embedding grad hook is needed either.
        """
        if offload:
            raise UserError("activation checkpointing with offload is not supported by ptune's prefix cache")
        kwargs = {**(activation_checkpointing_kwargs or {}), "use_reentrant": False}
        self.base._set_gradient_checkpointing(
            enable=True,
            gradient_checkpointing_func=functools.partial(checkpoint, **kwargs),
            every_n_layers=every_n_layers,
        )
        for module in self.base.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module._can_checkpoint_with_cache = True  # safe: the training cache never stores anything

    def activation_checkpointing_disable(self):
        self.base._set_gradient_checkpointing(enable=False)

    @contextlib.contextmanager
    def without_prefix(self) -> Iterator[PrefixTunedLM]:
        """This model with its prefix switched off for the duration (`--compare_base`): the encoder is set
        aside, not zeroed, so forward and generation run exactly as for the base loaded without a prefix."""
        encoder, self.prefix_encoder = self.prefix_encoder, None
        try:
            yield self
        finally:
            self.prefix_encoder = encoder

    def positions(self, attention_mask: torch.Tensor | None, seq_len: int, device) -> torch.Tensor:
        """Position ids [B, S] of the real tokens: `positions_from_mask`, shifted by P for a prefix recorded
        as "after_prefix" (where transformers, and so PEFT, put tokens after P cached slots)."""
        positions = positions_from_mask(attention_mask, seq_len, device)
        offset = 0 if self.prefix_encoder is None else self.prefix_encoder.config.position_offset
        return positions + offset if offset else positions

    def prefix_past(self, batch_size: int, read_only: bool):
        """The prefix as a cache ([B, G, P, hn] per layer), or None without a prefix."""
        if self.prefix_encoder is None:
            return None
        return prefix_cache(self.prefix_encoder(batch_size, self.dtype), read_only=read_only)

    def extend_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """[B, S] → [B, P + S]: every query sees all P prefix slots. A mask without those columns would be
        right-padded with zeros by transformers and silently hide the last P real tokens."""
        if attention_mask is None or self.prefix_encoder is None:
            return attention_mask
        ones = attention_mask.new_ones(attention_mask.shape[0], self.pre_seq_len)
        return torch.cat([ones, attention_mask], dim=-1)

    def original_padding_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Without a prefix, the original ChatGLM lets the query rows of pad tokens attend to every position
        (`get_masks`: `full -= padding_mask[..., None] - 1`), where transformers masks them. Real tokens are
        unaffected either way; building the original's 4D mask [B, 1, S, S] makes the pad rows' logits match
        too. Done for sdpa (bool, True = attend) and eager (additive float); with a prefix, or for other
        kernels, transformers' own mask already equals the original's on every row that matters."""
        if attention_mask is None or self.prefix_encoder is not None or bool(attention_mask.all()):
            return attention_mask
        kind = self.base.config._attn_implementation
        if kind not in ("sdpa", "eager"):
            return attention_mask
        real = attention_mask.bool()
        seq = real.shape[1]
        causal = torch.ones(seq, seq, dtype=torch.bool, device=real.device).tril()
        allowed = (causal[None] & real[:, None, :]) | ~real[:, :, None]  # [B, S, S]
        if kind == "sdpa":
            return allowed[:, None]
        blocked = torch.zeros(allowed.shape, dtype=self.dtype, device=real.device)
        return blocked.masked_fill_(~allowed, torch.finfo(self.dtype).min)[:, None]

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        return_logits: bool | None = None,
        **_,
    ) -> CausalLMOutputWithPast:
        """Logits [B, S, V] (by default only outside training) and the mean next-token loss over labels != IGNORE_INDEX.

        With `num_items_in_batch` (the Trainer passes it under gradient accumulation) the loss is the sum over
        this micro-batch divided by that count, so accumulated steps weigh every answer token equally.
        """
        batch, seq = input_ids.shape
        if position_ids is None:
            position_ids = self.positions(attention_mask, seq, input_ids.device)
        decoder = self.base.get_decoder()
        hidden = decoder(
            input_ids=input_ids,
            attention_mask=self.extend_mask(self.original_padding_mask(attention_mask)),
            position_ids=position_ids,
            **{cache_argument(type(decoder)): self.prefix_past(batch, read_only=True)},
            use_cache=False,
        ).last_hidden_state
        head = self.base.get_output_embeddings()
        loss = None
        if labels is not None:
            loss = answer_loss(head, hidden, labels, num_items_in_batch)
        want_logits = (not self.training) if return_logits is None else return_logits
        logits = head(hidden) if want_logits else None
        return CausalLMOutputWithPast(loss=loss, logits=logits)


def matmul_params(base: PreTrainedModel) -> int:
    """N: parameters that cost 2 FLOP per token in a forward pass (all but the input embedding, a lookup)."""
    embed = base.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in base.parameters()) - embed


def answer_loss(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, num_items=None) -> torch.Tensor:
    """Next-token cross entropy over supervised positions only.

    hidden [B, S, H], labels [B, S] (IGNORE_INDEX = ignored). Only the rows whose next label is supervised go through
    the output layer, so the full [B, S, V] float32 logits (V = 65,024 or 151,552) are never materialized.
    """
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep]).float()  # [N, V]
    total = F.cross_entropy(logits, target[keep], reduction="sum")
    count = keep.sum() if num_items is None else num_items
    if isinstance(count, torch.Tensor):
        return total / count.to(total.device).clamp(min=1)
    return total / max(int(count), 1)


def load_base(
    path: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, BaseSource, dict[str, torch.Tensor]]:
    """Load the frozen base: original chatglm folders through `convert.load_glm`, anything else through
    `AutoModelForCausalLM`. Returns (model, source description, prefix tensors found in the checkpoint)."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(
            f"{folder}: model folder not found (ptune never downloads weights; pass a local folder)"
        )
    cfg = read_json(folder / "config.json")
    device = torch.device(device) if device is not None else default_device()
    torch_dtype = resolve_dtype(dtype, device)
    source = BaseSource(
        path=str(folder.resolve()), model_type=cfg.get("model_type"), dtype=str(torch_dtype)[6:]
    )
    if cfg.get("model_type") == "chatglm":
        model, prefix = load_glm(folder, cfg, torch_dtype, device, attn_implementation)
        source.fingerprint = base_fingerprint(cfg, model.get_input_embeddings().weight)
        return model, source, prefix
    check_native_weights(folder, cfg)  # a truncated shard, a pickle, a shard outside: one line
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    except (ValueError, OSError, KeyError) as e:
        raise UserError(f"{folder}: cannot load with transformers ({str(e).splitlines()[0][:300]})") from None
    _check_loading_info(folder, cfg.get("model_type"), info)
    source.fingerprint = base_fingerprint(cfg, model.get_input_embeddings().weight)
    return model.to(device).eval(), source, {}


def _check_loading_info(folder: Path, model_type: str | None, info: dict) -> None:
    """Load native models strictly, as chatglm folders are: transformers fills a missing weight with random
    values and only logs it, so a damaged folder (or a config.json whose model_type was edited) would
    otherwise train and predict with a partly random model and exit 0."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(
        str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys") or ()
    )
    if missing or mismatched:
        what = f"lacks {len(missing)} weights, e.g. {missing[0]!r}" if missing else ""
        if mismatched:
            what += (
                "; " if what else ""
            ) + f"has {len(mismatched)} of the wrong shape, e.g. {mismatched[0]!r}"
        raise UserError(
            f"{folder}: the weights do not match config.json (model_type {model_type!r}): the checkpoint {what}"
        )


def load_model(
    model_name_or_path: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    pre_seq_len: int | None = None,
    prefix_projection: bool | None = None,
    ptuning_checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    prefix_dropout: float = 0.1,
    trust_remote_code: bool = False,
    quantization_bit: int | None = None,
    family: str | None = None,
) -> PrefixTunedLM:
    """Load a base model folder and, optionally, a P-Tuning v2 prefix.

    - `pre_seq_len` set, no checkpoint: a fresh prefix (normal init, like `nn.Embedding`) to train, with
      positions "from_zero" on a ChatGLM-format base, "after_prefix" on a native one (`default_positions`).
    - `ptuning_checkpoint`: a ptune, THUDM or PEFT prefix-tuning folder/file, with the position convention it
      records (`prefix.recorded_positions`); pre_seq_len and prefix_projection are read
      from its tensors (a conflicting `pre_seq_len`/`prefix_projection` is an error naming both values;
      `prefix_projection=None` means "whatever the checkpoint has"). A checkpoint whose prefix_config.json
      names another model family or model_type than this base is refused (same shapes, wrong model).
    - `family`: the chat family the tokenizer detected (chatglm2/chatglm3/glm4/native), recorded in
      `source` and saved with checkpoints.
    - `quantization_bit` 4 or 8: the decoder's linear layers become bitsandbytes NF4 / int8 layers.
    The base is frozen; the prefix is float32 whatever the base dtype.
    """
    target = torch.device(device) if device is not None else default_device()
    base, source, carried = load_base(
        model_name_or_path,
        # Quantized bases are built on the host and moved layer by layer, so the device never holds them whole.
        dtype=resolve_dtype(dtype, target) if quantization_bit else dtype,
        device="cpu" if quantization_bit else target,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    if quantization_bit:
        from ptune.model.quantize import quantize_decoder

        quantize_decoder(base, quantization_bit, target)
        base.to(target)
        source.quantization_bit = quantization_bit
    source.family = family
    encoder = None
    if ptuning_checkpoint is not None:
        encoder = load_prefix(
            ptuning_checkpoint, base, source, pre_seq_len, prefix_projection, prefix_dropout
        )
    elif carried:  # a THUDM P-tuned save of a whole ChatGLM model: ChatGLM's positions
        encoder = prefix_from_state(
            base, carried, str(model_name_or_path), pre_seq_len, prefix_projection, prefix_dropout
        )
    elif pre_seq_len:
        if pre_seq_len < 1:
            raise UserError(f"--pre_seq_len {pre_seq_len}: must be a positive number of prefix tokens")
        positions = getattr(base.config.get_text_config(), "max_position_embeddings", None)
        if isinstance(positions, int) and pre_seq_len > positions:  # refused before the prefix is allocated
            raise UserError(
                f"--pre_seq_len {pre_seq_len}: longer than the {positions} positions of {model_name_or_path} "
                "(max_position_embeddings)"
            )
        config = prefix_config_for(
            base, pre_seq_len, bool(prefix_projection), default_positions(source.model_type)
        )
        encoder = PrefixEncoder(config, prefix_dropout)
    if encoder is not None:
        encoder.to(base.device)
    return PrefixTunedLM(base, encoder, source).eval()
