"""P-Tuning v2: the prefix encoder and the read-only cache that injects its keys/values at every layer.

Shapes (P = pre_seq_len, L = layers, G = key/value heads, hn = head dim, B = batch):
- `PrefixEncoder.embedding.weight`: [P, L·2·G·hn] (THUDM's name and layout, so their checkpoints load as is);
  with `prefix_projection`: `trans.0` Linear(L·2·G·hn → hidden), Tanh, `trans.2` Linear(hidden → L·2·G·hn).
- `PrefixEncoder(B, dtype)` → L pairs (key, value), each [B, G, P, hn]; layer i takes slot 2i as key and slot
  2i+1 as value of the `L·2` axis, exactly as the original `get_prompt` orders them.

The prefix keys are raw cache entries (no RoPE); the model wrapper passes position ids and a mask P columns
wider. Where the real tokens' positions start is part of what a prefix learned, recorded as
`PrefixConfig.positions` (`prefix_config.json` "positions"):
- "from_zero": the first real token is at position 0, as THUDM's ChatGLM code numbers them (the ChatGLM
  families' convention, and that of every prefix saved before the field existed);
- "after_prefix": it is at position P, as transformers numbers tokens after P cached slots, and so PEFT's
  prefix tuning on a native model (the default for native families, so that their prefixes are PEFT's).
See docs/checkpoints.md §6.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from ptune.io.errors import UserError
from ptune.model.convert import PREFIX_KEY

POSITIONS = ("after_prefix", "from_zero")


def default_positions(model_type: str | None) -> str:
    """The convention a new prefix trains with: THUDM's for a ChatGLM-format base (model_type chatglm),
    PEFT's / transformers' for a native one."""
    return "from_zero" if model_type == "chatglm" else "after_prefix"


@dataclass(frozen=True)
class PrefixConfig:
    """Everything needed to rebuild a `PrefixEncoder`; saved beside every checkpoint (`prefix_config.json`)."""

    pre_seq_len: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    prefix_projection: bool = False
    positions: str = "from_zero"  # see the module docstring; a record without the field is from_zero

    @property
    def position_offset(self) -> int:
        """Where the real tokens' positions start: P ("after_prefix") or 0 ("from_zero")."""
        return self.pre_seq_len if self.positions == "after_prefix" else 0

    @property
    def kv_size(self) -> int:
        """Width of one prefix row: a key and a value for every layer and KV head."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)


class PrefixEncoder(nn.Module):
    """P learned prefix rows → per-layer key/value prefixes (float32 parameters, cast to the model's dtype)."""

    def __init__(self, config: PrefixConfig, dropout: float = 0.1):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.pre_seq_len, config.kv_size)
        if config.prefix_projection:
            self.trans = nn.Sequential(
                nn.Linear(config.kv_size, config.hidden_size),
                nn.Tanh(),
                nn.Linear(config.hidden_size, config.kv_size),
            )
        # The reference applies Dropout(0.1) to the prefix keys/values in training; keep that regime.
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch_size: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Return L pairs (key, value), each [B, G, P, hn] in `dtype`."""
        c = self.config
        rows = self.embedding.weight  # [P, kv]: the same values the reference looks up with arange(P)
        if c.prefix_projection:
            rows = self.trans(rows)
        # Expand before dropout so each sample gets its own dropout mask, as in the reference.
        kv = rows.to(dtype).unsqueeze(0).expand(batch_size, -1, -1)
        kv = self.dropout(kv.reshape(batch_size, c.pre_seq_len, c.num_layers * 2, c.num_kv_heads, c.head_dim))
        kv = kv.permute(2, 0, 3, 1, 4)  # [L·2, B, G, P, hn]
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(c.num_layers)]


class ReadOnlyPrefixLayer(DynamicLayer):
    """A cache layer holding the prefix that returns `cat(prefix, new)` without storing the new states.

    Training needs this: activation checkpointing replays each layer in the backward pass, and a cache
    that appended on every call would see the sequence twice (the stock `DynamicCache` fails this way).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def prefix_cache(prefix: list[tuple[torch.Tensor, torch.Tensor]], read_only: bool) -> Cache:
    """A cache pre-filled with the prefix: read-only for a training/scoring forward, growing for generation."""
    if read_only:
        return Cache(layers=[ReadOnlyPrefixLayer(k, v) for k, v in prefix])
    return DynamicCache(ddp_cache_data=[(k, v) for k, v in prefix])


@functools.cache
def cache_argument(decoder_class: type) -> str:
    """The keyword a decoder's `forward` takes its cache under: `cache` from transformers 5.24 on (where
    `past_key_values` still works but prints a FutureWarning), `past_key_values` before. Usage:
    `decoder(..., **{cache_argument(type(decoder)): cache})`."""
    names = inspect.signature(decoder_class.forward).parameters
    return "cache" if "cache" in names else "past_key_values"


# ------------------------------------------------------------------ a prefix for a base, checked
def prefix_config_for(
    base: PreTrainedModel, pre_seq_len: int, prefix_projection: bool, positions: str = "from_zero"
) -> PrefixConfig:
    """Prefix dimensions read off any decoder config (Glm, Llama, Qwen2, ...)."""
    cfg = base.config.get_text_config()
    heads = cfg.num_attention_heads
    return PrefixConfig(
        pre_seq_len=pre_seq_len,
        num_layers=cfg.num_hidden_layers,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        hidden_size=cfg.hidden_size,
        prefix_projection=prefix_projection,
        positions=positions,
    )


def prefix_from_state(
    base: PreTrainedModel,
    state: dict[str, torch.Tensor],
    where: str,
    pre_seq_len: int | None,
    prefix_projection: bool | None,
    dropout: float,
    positions: str = "from_zero",
) -> PrefixEncoder:
    """Rebuild a PrefixEncoder from saved tensors (keys without `transformer.prefix_encoder.`), checking that
    their shapes fit this base model and the user's flags; `positions` is the convention it was trained with."""
    rows, width, has_projection = _check_prefix_flags(where, state, pre_seq_len, prefix_projection)
    for name, tensor in state.items():  # a diverged run's prefix would answer NaN: refuse it at load
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(
                f"{where}: the prefix tensor {name} holds {bad} non-finite values (NaN or inf); the run that "
                "wrote it diverged, so it cannot be used (an earlier checkpoint may be sound)"
            )
    config = prefix_config_for(base, rows, has_projection, positions)
    if width != config.kv_size:
        raise UserError(
            f"{where}: prefix width {width} does not fit this model (needs {config.kv_size} = "
            f"{config.num_layers} layers x 2 x {config.num_kv_heads} kv heads x {config.head_dim}); "
            "was it trained on another model family?"
        )
    if has_projection:
        config = PrefixConfig(**{**config.to_dict(), "hidden_size": state["trans.0.weight"].shape[0]})
    encoder = PrefixEncoder(config, dropout)
    expected = set(encoder.state_dict())
    if set(state) != expected:
        extra, missing = sorted(set(state) - expected), sorted(expected - set(state))
        raise UserError(f"{where}: prefix tensors do not match (unexpected {extra}, missing {missing})")
    try:
        encoder.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise UserError(f"{where}: {str(e).splitlines()[-1].strip()}") from None
    return encoder


def check_prefix_base(checkpoint: str | Path, source) -> None:
    """Refuse a prefix trained on another base: prefix_config.json records the family and model_type it was
    trained with. ChatGLM2 and ChatGLM3 prefixes have the same shape, so only this record tells them apart.
    A base of the right family whose fingerprint (`ptune.model.fingerprint`) differs from the recorded one is
    warned about, naming both folders. THUDM checkpoints (no prefix_config.json) and records without these
    fields (prefixes written before ptune recorded them) are not checked."""
    from ptune.train.checkpoint import PREFIX_CONFIG_NAME, read_prefix_config

    recorded = read_prefix_config(checkpoint)
    folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    for key, have, name in (
        ("family", source.family, "family"),
        ("base_model_type", source.model_type, "model_type"),
    ):
        want = recorded.get(key)
        if want and have and want != have:
            raise UserError(
                f"{folder / PREFIX_CONFIG_NAME}: this prefix was trained on a {want} base "
                f"({recorded.get('base_model_name_or_path')}), but {source.path} is {name} {have}; "
                "a prefix only works with the base it was trained on"
            )
    want, have = recorded.get("base_fingerprint"), getattr(source, "fingerprint", None)
    if want and have and want != have:  # same family and shape, another model: it runs, answering badly
        logging.getLogger("ptune").warning(
            "%s: this prefix was trained on the base %s, but %s is a different model (its config.json or "
            "weights differ); a prefix only works with the base it was trained on",
            folder / PREFIX_CONFIG_NAME,
            recorded.get("base_model_name_or_path"),
            source.path,
        )


def recorded_positions(checkpoint: str | Path) -> str:
    """The position convention a saved prefix was trained with: its prefix_config.json "positions" (PEFT
    adapters: after_prefix); a record without the field, or a THUDM checkpoint, is from_zero (what ptune and
    THUDM's code computed before the field existed), never guessed from the family."""
    from ptune.train.checkpoint import PREFIX_CONFIG_NAME, read_prefix_config

    value = read_prefix_config(checkpoint).get("positions", "from_zero")
    if value not in POSITIONS:
        folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
        raise UserError(
            f'{folder / PREFIX_CONFIG_NAME}: "positions" must be "after_prefix" or "from_zero", got {value!r}'
        )
    return value


def load_prefix(
    checkpoint: str | Path,
    base: PreTrainedModel,
    source,
    pre_seq_len: int | None = None,
    prefix_projection: bool | None = None,
    dropout: float = 0.0,
) -> PrefixEncoder:
    """A saved prefix (ptune, THUDM or PEFT prefix-tuning folder) for `base`, checked against it (family,
    model_type, shapes, the recorded layer count) and with the position convention it was trained with."""
    from ptune.model.peft_adapter import adapter_folder
    from ptune.train.checkpoint import read_prefix_config, read_prefix_state

    if adapter_folder(checkpoint) is not None and source.model_type == "chatglm":
        raise UserError(
            f"{checkpoint}: a PEFT adapter; ptune reads PEFT adapters for native transformers bases only, and "
            f"{source.path} is a ChatGLM-format (model_type chatglm) folder"
        )
    check_prefix_base(checkpoint, source)
    state = read_prefix_state(checkpoint)
    positions = recorded_positions(checkpoint)
    encoder = prefix_from_state(
        base, state, str(checkpoint), pre_seq_len, prefix_projection, dropout, positions
    )
    layers = read_prefix_config(checkpoint).get("num_layers")
    if isinstance(layers, int) and layers != encoder.config.num_layers:
        raise UserError(
            f"{checkpoint}: a prefix for {layers} layers, but {source.path} has {encoder.config.num_layers}; "
            "a prefix only works with the base it was trained on"
        )
    return encoder


def check_resumable_prefix(checkpoint: str | Path, model) -> None:
    """A checkpoint to resume `model`'s training from holds a prefix of this base and of this run's prefix
    encoder: the family / model_type it records (as predict checks them), then every tensor's name and shape
    (the Trainer would otherwise load it with a traceback, or train a ChatGLM2 prefix on as a ChatGLM3 one)."""
    from ptune.train.checkpoint import read_prefix_state

    check_prefix_base(checkpoint, model.source)
    state = read_prefix_state(checkpoint)
    _check_prefix_flags(str(checkpoint), state, None, None)
    config = model.prefix_encoder.config
    width = state["embedding.weight"].shape[1]
    if width != config.kv_size:
        raise UserError(
            f"{checkpoint}: prefix width {width} does not fit this model (needs {config.kv_size} = "
            f"{config.num_layers} layers x 2 x {config.num_kv_heads} kv heads x {config.head_dim}); "
            "was it trained on another model family?"
        )
    ours = {k: tuple(v.shape) for k, v in model.prefix_encoder.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    if ours != theirs:
        raise UserError(f"{checkpoint}: prefix tensors {theirs} do not match this run's prefix {ours}")


def check_prefix_flags(
    checkpoint: str | Path, pre_seq_len: int | None, prefix_projection: bool | None
) -> None:
    """--pre_seq_len / --prefix_projection against a checkpoint's tensors, before any model is loaded."""
    from ptune.train.checkpoint import read_prefix_state

    _check_prefix_flags(str(checkpoint), read_prefix_state(checkpoint), pre_seq_len, prefix_projection)


def _check_prefix_flags(
    where: str, state: dict[str, torch.Tensor], pre_seq_len: int | None, prefix_projection: bool | None
) -> tuple[int, int, bool]:
    """(pre_seq_len, width, has_projection) of saved prefix tensors; an error if the flags say otherwise."""
    if "embedding.weight" not in state:
        raise UserError(f"{where}: no prefix encoder weights (expected {PREFIX_KEY}embedding.weight)")
    rows, width = state["embedding.weight"].shape
    has_projection = "trans.0.weight" in state
    if pre_seq_len is not None and pre_seq_len != rows:
        raise UserError(
            f"{where}: the checkpoint has pre_seq_len {rows}, but --pre_seq_len {pre_seq_len} was given"
        )
    if prefix_projection is not None and bool(prefix_projection) != has_projection:
        raise UserError(
            f"{where}: the checkpoint has {'a' if has_projection else 'no'} prefix projection, but "
            f"--prefix_projection {str(bool(prefix_projection)).lower()} was given"
        )
    return rows, width, has_projection
