"""PEFT's prefix-tuning adapter folders: read as a ptune prefix (`--ptuning_checkpoint`), written by `ptune export
--format peft`. Hand-written rather than through `peft` itself, which stays a test dependency only: the format is
two small files, and reading it must not import (or require) the library that defines it.

What PEFT (checked against peft 0.21.2's `save_pretrained` / `PeftModel.from_pretrained`) keeps for
`PeftType.PREFIX_TUNING` with `task_type CAUSAL_LM`:
- `adapter_config.json`: `num_virtual_tokens` P, `num_layers` L, `num_attention_heads` and `token_dim` =
  (G, G·hn) — for a model whose config has `num_key_value_heads`, PEFT provisions the key/value heads G, not the
  query heads (peft/utils/other.py `_prepare_prompt_learning_config`) — `prefix_projection`,
  `encoder_hidden_size`, `base_model_name_or_path`, `num_transformer_submodules` 1 (2 is an encoder-decoder).
- `adapter_model.safetensors` (or `adapter_model.bin`): one tensor `prompt_embeddings` [P, L·2·G·hn], the
  prefix keys/values themselves: with a projection PEFT saves the projection's output, not its weights.
- `get_prompt` views a row as [L·2, G, hn] and gives layer i slot 2i as keys, 2i+1 as values: ptune's layout
  (ptune/model/prefix.py), so the rows are ptune's `embedding.weight` unchanged.
- Query positions: transformers counts the P cached slots, so the first real token is at position P
  (`positions: "after_prefix"` in ptune's prefix_config.json).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ptune.io.errors import UserError
from ptune.io.files import read_json

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
PROMPT_KEY = "prompt_embeddings"


def adapter_folder(path: str | Path) -> Path | None:
    """The PEFT adapter folder `path` is (or whose weights file it is), None when it is not one."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    return folder if (folder / CONFIG_NAME).is_file() else None


def read_adapter_config(folder: Path) -> dict:
    """adapter_config.json, refused unless it is a prefix-tuning adapter of a decoder-only model."""
    file = folder / CONFIG_NAME
    config = read_json(file)
    kind = config.get("peft_type")
    if kind != "PREFIX_TUNING":
        raise UserError(
            f"{file}: a PEFT {kind or 'adapter without peft_type'} adapter; ptune loads prefix-tuning adapters "
            "only (peft_type PREFIX_TUNING)"
        )
    if config.get("num_transformer_submodules") not in (None, 1):
        raise UserError(
            f"{file}: an encoder-decoder prefix (num_transformer_submodules 2); ptune runs decoders"
        )
    for key in ("num_virtual_tokens", "num_layers", "token_dim", "num_attention_heads"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{file}: {key} must be a positive integer, got {value!r}")
    if config["token_dim"] % config["num_attention_heads"]:
        raise UserError(
            f"{file}: token_dim {config['token_dim']} is not a multiple of num_attention_heads "
            f"{config['num_attention_heads']}"
        )
    return config


def read_adapter_state(folder: Path) -> dict[str, torch.Tensor]:
    """The prefix rows as ptune's `{"embedding.weight": [P, L·2·G·hn]}`, read safely (safetensors, or a
    weights-only `torch.load`) and checked against adapter_config.json."""
    from ptune.model.convert import iter_tensors

    config = read_adapter_config(folder)
    files = [folder / name for name in WEIGHTS_NAMES if (folder / name).is_file()]
    if not files:
        raise UserError(f"{folder}: a PEFT adapter folder without {' or '.join(WEIGHTS_NAMES)}")
    state = dict(iter_tensors(files[0]))
    if set(state) != {PROMPT_KEY}:
        raise UserError(
            f"{files[0]}: expected one tensor {PROMPT_KEY!r} (a prefix-tuning adapter), found {sorted(state)}"
        )
    rows = state[PROMPT_KEY]
    shape = (config["num_virtual_tokens"], config["num_layers"] * 2 * config["token_dim"])
    if tuple(rows.shape) != shape:
        raise UserError(
            f"{files[0]}: {PROMPT_KEY} has shape {list(rows.shape)}, but adapter_config.json implies {list(shape)} "
            "(num_virtual_tokens x num_layers*2*token_dim)"
        )
    return {"embedding.weight": rows}


def adapter_prefix_config(folder: Path) -> dict:
    """adapter_config.json in the terms of ptune's prefix_config.json: dimensions, PEFT's position convention,
    and the base it names (with that base's model_type when it is a folder here, so the base check applies)."""
    config = read_adapter_config(folder)
    heads = config["num_attention_heads"]
    record = {
        "pre_seq_len": config["num_virtual_tokens"],
        "num_layers": config["num_layers"],
        "num_kv_heads": heads,
        "head_dim": config["token_dim"] // heads,
        "prefix_projection": False,  # the saved rows are the projection's output: a plain prefix to ptune
        "positions": "after_prefix",
        "format": "peft",
    }
    base = config.get("base_model_name_or_path")
    if isinstance(base, str) and base:
        record["base_model_name_or_path"] = base
        base_config = Path(base) / "config.json"
        if base_config.is_file():
            record["base_model_type"] = read_json(base_config).get("model_type")
    return record


def adapter_config(prefix_config: dict, pre_seq_len: int, hidden_size: int | None) -> dict:
    """adapter_config.json for a ptune prefix: the fields PEFT's own save writes for a prefix-tuning adapter
    (peft_version is left for PEFT to fill in). `hidden_size`: the projection's width, None without one."""
    heads, head_dim = prefix_config["num_kv_heads"], prefix_config["head_dim"]
    token_dim = heads * head_dim
    return {
        "auto_mapping": None,
        "base_model_name_or_path": prefix_config.get("base_model_name_or_path"),
        "encoder_hidden_size": hidden_size or token_dim,
        "inference_mode": True,
        "init_weights": None,
        "modules_to_save": None,
        "num_attention_heads": heads,
        "num_layers": prefix_config["num_layers"],
        "num_transformer_submodules": 1,
        "num_virtual_tokens": pre_seq_len,
        "peft_type": "PREFIX_TUNING",
        "prefix_projection": hidden_size is not None,
        "revision": None,
        "task_type": "CAUSAL_LM",
        "token_dim": token_dim,
    }


def prompt_embeddings(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """A ptune prefix's tensors → the rows PEFT saves [P, L·2·G·hn] (float32): `embedding.weight`, or with a
    projection its output `trans.2(tanh(trans.0(embedding)))`, as PEFT saves a projected prefix."""
    rows = state["embedding.weight"].float()
    if "trans.0.weight" not in state:
        return rows.contiguous().clone()
    with torch.no_grad():
        hidden = torch.tanh(rows @ state["trans.0.weight"].float().T + state["trans.0.bias"].float())
        return (hidden @ state["trans.2.weight"].float().T + state["trans.2.bias"].float()).contiguous()


def export_problem(prefix_config: dict, base_config: dict | None) -> str | None:
    """Why PEFT cannot reproduce this prefix (None: it can). PEFT loads a base with transformers and numbers
    the real tokens after the prefix slots; ChatGLM's original checkpoints load only with THUDM's remote code,
    and a prefix trained with positions from 0 computes other logits under PEFT."""
    model_type = prefix_config.get("base_model_type") or (base_config or {}).get("model_type")
    if model_type == "chatglm" or prefix_config.get("family") in ("chatglm2", "chatglm3", "glm4"):
        return (
            "a prefix for a ChatGLM-format base (model_type chatglm), which PEFT cannot load without THUDM's "
            "remote code; export it with --format thudm"
        )
    positions = prefix_config.get("positions")
    if positions != "after_prefix":
        said = (
            f'"positions": "{positions}"'
            if positions
            else 'no "positions" (a prefix from before it was recorded: from_zero)'
        )
        return (
            f"prefix_config.json has {said}: the prefix was trained with the real tokens numbered from 0, PEFT "
            "numbers them after the prefix slots and would compute other logits; export it with --format thudm"
        )
    return None
