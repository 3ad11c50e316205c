"""`ptune export CHECKPOINT --format thudm|safetensors|peft`: a prefix checkpoint in the layout another loader reads.

- `thudm` (default): what THUDM's ChatGLM2/3 `ptuning/main.py` and web demos load — `pytorch_model.bin`, a
  `torch.save` dict holding only the `transformer.prefix_encoder.*` float32 tensors (they `torch.load` it and
  strip that prefix), and `config.json` = the base model's own config.json with `pre_seq_len` and
  `prefix_projection` set (what `AutoConfig.from_pretrained(base, pre_seq_len=...)` produces, and what
  their Trainer saved), plus the tokenizer files and the base's remote-code `.py` files where they exist —
  the same files a THUDM training checkpoint holds, without optimizer state.
- `safetensors`: the ptune layout (`model.safetensors` + `prefix_config.json` + tokenizer files), e.g. to
  turn a THUDM checkpoint into a ptune one, or to strip a `checkpoint-N` of its optimizer state.
- `peft`: PEFT's prefix-tuning adapter (`adapter_config.json` + `adapter_model.safetensors`, ptune/model/peft_adapter.py)
  for `PeftModel.from_pretrained(base, DIR)`; only a native base's prefix trained with positions "after_prefix"
  (what PEFT computes), anything else is refused with the reason.
The output folder is staged and renamed into place (`io.atomic_dir`); an existing one is replaced
only with `--overwrite`.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ptune.config.parser import Command, parse_command
from ptune.families.registry import checkpoint_family, tokenizer_files
from ptune.io.errors import UserError
from ptune.io.files import atomic_dir, read_json, write_json
from ptune.io.paths import check_replaced_folder
from ptune.model import peft_adapter
from ptune.model.convert import PREFIX_KEY
from ptune.train.checkpoint import (
    CHECKPOINT_RE,
    PREFIX_CONFIG_NAME,
    THUDM_WEIGHTS_NAME,
    WEIGHTS_NAME,
    read_prefix_config,
    read_prefix_state,
)

FORMATS = ("thudm", "safetensors", "peft")
# The tensors a PrefixEncoder holds (keys without `transformer.prefix_encoder.`), without / with projection.
PLAIN_KEYS = {"embedding.weight"}
PROJECTION_KEYS = PLAIN_KEYS | {"trans.0.weight", "trans.0.bias", "trans.2.weight", "trans.2.bias"}


def tokenizer_file_names() -> list[str]:
    """Every file name a tokenizer of any family may consist of."""
    return tokenizer_files()


def prefix_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The prefix of `checkpoint` (keys without `transformer.prefix_encoder.`), float32, compact, on the CPU.

    Refuses anything a PrefixEncoder could not load: no `embedding.weight` [P, width], or stray tensors.
    """
    state = read_prefix_state(checkpoint)
    allowed = PROJECTION_KEYS if "trans.0.weight" in state else PLAIN_KEYS
    if "embedding.weight" not in state or state["embedding.weight"].dim() != 2:
        raise UserError(f"{checkpoint}: no 2-D {PREFIX_KEY}embedding.weight (not a P-Tuning v2 prefix)")
    if set(state) != allowed:
        extra, missing = sorted(set(state) - allowed), sorted(allowed - set(state))
        raise UserError(f"{checkpoint}: unexpected prefix tensors {extra}, missing {missing}")
    # clone(): a compact copy, so torch.save never writes a larger storage that a tensor merely views.
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items()}


def _base_folder(prefix_config: dict) -> Path | None:
    base = prefix_config.get("base_model_name_or_path")
    if base and (Path(base) / "config.json").is_file():
        return Path(base)
    return None


def _tokenizer_config(*folders: Path | None) -> dict:
    """tokenizer_config.json of the first folder that has one ({} if none does)."""
    for folder in folders:
        if folder is not None and (folder / "tokenizer_config.json").is_file():
            return read_json(folder / "tokenizer_config.json")
    return {}


def thudm_prefix_problem(prefix_config: dict, base_config: dict | None, tokenizer_config: dict) -> str | None:
    """Why THUDM's own code cannot load this prefix, from the family its base shows (None: it can, or the
    family is unknown): `Family.thudm_prefix_problem` (GLM-4: no PrefixEncoder; native: not a ChatGLM2/3)."""
    family = checkpoint_family(base_config or {}, tokenizer_config, prefix_config.get("family"))
    return family.thudm_prefix_problem(base_config or {}) if family is not None else None


def thudm_config(base_config: dict | None, prefix_config: dict, pre_seq_len: int, projection: bool) -> dict:
    """config.json for the THUDM layout: the base's fields with pre_seq_len / prefix_projection set.

    Without the base config, the fields THUDM's PrefixEncoder reads (num_layers, kv_channels,
    multi_query_group_num, hidden_size), taken from prefix_config.json where it records them.
    """
    if base_config is not None:
        return {**base_config, "pre_seq_len": pre_seq_len, "prefix_projection": projection}
    config: dict = {"model_type": "chatglm"}
    names = {
        "num_layers": "num_layers",
        "kv_channels": "head_dim",
        "multi_query_group_num": "num_kv_heads",
        "hidden_size": "hidden_size",
    }
    for theirs, ours in names.items():
        if ours in prefix_config:
            config[theirs] = prefix_config[ours]
    if prefix_config.get("base_model_name_or_path"):
        config["_name_or_path"] = prefix_config["base_model_name_or_path"]
    return {**config, "pre_seq_len": pre_seq_len, "prefix_projection": projection}


def ptune_prefix_config(
    source_config: dict, chatglm_config: dict | None, pre_seq_len: int, projection: bool, width: int
) -> dict:
    """prefix_config.json for the ptune layout: the source's own when it has one (a ptune checkpoint),
    otherwise built from a THUDM checkpoint's ChatGLM config.json (dimensions checked against the tensors)."""
    if "num_layers" in source_config:  # a ptune checkpoint, or a PEFT adapter read in ptune's terms
        config = {k: v for k, v in source_config.items() if k != "format"}
        return {**config, "pre_seq_len": pre_seq_len, "prefix_projection": projection}
    from ptune import __version__

    # THUDM's code numbers the real tokens from 0 (what a record without "positions" means too).
    config: dict = {"pre_seq_len": pre_seq_len, "prefix_projection": projection, "positions": "from_zero"}
    if chatglm_config and chatglm_config.get("num_layers"):
        c = chatglm_config
        groups = c["multi_query_group_num"] if c.get("multi_query_attention") else c["num_attention_heads"]
        dims = {
            "num_layers": c["num_layers"],
            "num_kv_heads": groups,
            "head_dim": c.get("kv_channels") or c["hidden_size"] // c["num_attention_heads"],
            "hidden_size": c["hidden_size"],
        }
        if dims["num_layers"] * 2 * dims["num_kv_heads"] * dims["head_dim"] == width:
            config = {
                "pre_seq_len": pre_seq_len,
                **dims,
                "prefix_projection": projection,
                "positions": "from_zero",
            }
        name = c.get("_name_or_path")
        if name and Path(name).is_dir():
            config["base_model_name_or_path"] = str(Path(name).resolve())
    config["ptune_version"] = __version__
    return config


def _copy_files(names: list[str], *folders: Path | None, into: Path) -> list[str]:
    """Copy the named files from the first folder that holds any of them; return the names copied."""
    for folder in folders:
        if folder is None:
            continue
        present = [n for n in names if (folder / n).is_file()]
        if present:
            for n in present:
                shutil.copy2(folder / n, into / n)
            return present
    return []


def remote_code_files(config: dict, tokenizer_config: dict) -> list[str]:
    """`configuration_chatglm.py`, `modeling_chatglm.py`, ... named by the configs' `auto_map` entries
    (what transformers' save_pretrained copies beside a remote-code model)."""
    names: list[str] = []
    for auto_map in (config.get("auto_map"), tokenizer_config.get("auto_map")):
        if not isinstance(auto_map, dict):
            continue
        for value in auto_map.values():
            for ref in value if isinstance(value, list) else [value]:
                if isinstance(ref, str) and "." in ref:
                    module = ref.split("--")[-1].rsplit(".", 1)[0]
                    names.append(f"{module}.py")
    return list(dict.fromkeys(names))


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str = "thudm",
    out: str | Path | None = None,
    overwrite: bool = False,
    warn=None,
) -> Path:
    """Write the prefix of `checkpoint` in format `fmt` to `out` (default `CHECKPOINT-<fmt>`); return `out`.

    `warn(message)` receives one line per caveat (default: printed to stderr).
    """
    warn = warn or (lambda msg: print(f"ptune export: warning: {msg}", file=sys.stderr))
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    source = Path(checkpoint)
    folder = source.parent if source.is_file() else source
    target = Path(out) if out is not None else default_out(folder, fmt)
    state = prefix_tensors(source)  # refuses a missing folder or a non-prefix checkpoint first
    prefix_config = read_prefix_config(folder)
    check_target(target, folder, _base_folder(prefix_config), overwrite)

    pre_seq_len, width = state["embedding.weight"].shape
    projection = "trans.0.weight" in state
    if prefix_config.get("pre_seq_len") not in (None, pre_seq_len):
        raise UserError(
            f"{folder}: config says pre_seq_len {prefix_config['pre_seq_len']}, but the prefix tensor has "
            f"{pre_seq_len} rows"
        )
    base = _base_folder(prefix_config)
    own_config = read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    base_config = read_json(base / "config.json") if base is not None else own_config
    tok_names = tokenizer_file_names()
    if fmt == "peft" and (problem := peft_adapter.export_problem(prefix_config, base_config)):
        raise UserError(f"{folder}: cannot export for PEFT: {problem}")

    with atomic_dir(target) as tmp:
        if fmt == "thudm":
            torch.save({PREFIX_KEY + k: v for k, v in state.items()}, tmp / THUDM_WEIGHTS_NAME)
            config = thudm_config(base_config, prefix_config, pre_seq_len, projection)
            write_json(tmp / "config.json", config)
            copied = _copy_files(tok_names, folder, base, into=tmp)
            if base is not None:
                tokenizer_config = read_json(base / "tokenizer_config.json", missing_ok=True)
                extra = [n for n in remote_code_files(config, tokenizer_config) if n not in copied]
                _copy_files(extra, base, into=tmp)
        elif fmt == "peft":
            _write_peft(tmp, state, prefix_config, pre_seq_len)
            copied = _copy_files(tok_names, folder, base, into=tmp)
        else:
            from safetensors.torch import save_file

            save_file(
                {PREFIX_KEY + k: v for k, v in state.items()},
                str(tmp / WEIGHTS_NAME),
                metadata={"format": "pt", "producer": "ptune"},
            )
            config = ptune_prefix_config(prefix_config, own_config, pre_seq_len, projection, width)
            write_json(tmp / PREFIX_CONFIG_NAME, config)
            copied = _copy_files(tok_names, folder, base, into=tmp)

    if fmt == "thudm":
        if base_config is None:
            warn(
                f"base model config not found (prefix_config.json names {prefix_config.get('base_model_name_or_path')!r}); "
                "config.json holds only the prefix fields"
            )
        problem = thudm_prefix_problem(prefix_config, base_config, _tokenizer_config(folder, base))
        if problem:
            warn(problem)
    if not copied:
        warn(f"no tokenizer files found in {folder} or the base model folder; none exported")
    return target


def _write_peft(tmp: Path, state: dict[str, torch.Tensor], prefix_config: dict, pre_seq_len: int) -> None:
    """adapter_model.safetensors (`prompt_embeddings`, float32) and adapter_config.json, as PEFT saves them."""
    from safetensors.torch import save_file

    rows = peft_adapter.prompt_embeddings(state)
    hidden = state["trans.0.weight"].shape[0] if "trans.0.weight" in state else None
    if "num_layers" not in prefix_config:  # never for a prefix recorded after_prefix; checked all the same
        raise UserError("prefix_config.json records no dimensions (num_layers, num_kv_heads, head_dim)")
    save_file(
        {peft_adapter.PROMPT_KEY: rows}, str(tmp / peft_adapter.WEIGHTS_NAMES[0]), metadata={"format": "pt"}
    )
    write_json(
        tmp / peft_adapter.CONFIG_NAME, peft_adapter.adapter_config(prefix_config, pre_seq_len, hidden)
    )


def default_out(folder: Path, fmt: str) -> Path:
    """`OUT/exports/checkpoint-N-<fmt>` for a `checkpoint-N` of a run, else `<folder>-<fmt>` beside it.

    Never `OUT/checkpoint-N-<fmt>`: beside the checkpoints, a name starting with `checkpoint-` is counted as
    one by transformers' rotation and `sort_checkpoints`, which then deleted real checkpoints for it."""
    if CHECKPOINT_RE.match(folder.name):
        return folder.parent / "exports" / f"{folder.name}-{fmt}"
    return folder.with_name(f"{folder.name}-{fmt}")


def check_target(target: Path, checkpoint: Path, base: Path | None, overwrite: bool) -> None:
    """Refuse an output folder whose replacement would destroy something (`ptune.io.paths.check_replaced_folder`):
    the checkpoint, the base model or a folder holding either; with --overwrite, anything but an earlier
    export (a run, a model, other files)."""
    allowed = {THUDM_WEIGHTS_NAME, WEIGHTS_NAME, PREFIX_CONFIG_NAME, "config.json", *tokenizer_file_names()}
    allowed |= {peft_adapter.CONFIG_NAME, *peft_adapter.WEIGHTS_NAMES}

    def holds_model(folder: Path) -> bool:  # a config.json that no export wrote: no pre_seq_len, no prefix
        config = read_json(folder / "config.json", missing_ok=True)
        return bool(config) and "pre_seq_len" not in config and not (folder / PREFIX_CONFIG_NAME).is_file()

    check_replaced_folder(
        target,
        {"the checkpoint": checkpoint, "the base model": base},
        overwrite,
        own_file=lambda entry: entry.name in allowed or entry.suffix == ".py",
        holds_model=holds_model,
    )


@dataclass
class ExportArguments:
    """`ptune export`'s arguments."""

    checkpoint: str = field(
        metadata={
            "positional": True,
            "help": "a ptune, THUDM or PEFT prefix-tuning checkpoint folder, e.g. OUT/checkpoint-3000",
        }
    )
    format: Literal[FORMATS] = field(default="thudm", metadata={"help": "output layout"})  # type: ignore[valid-type]
    out: str | None = field(
        default=None,
        metadata={
            "help": "output folder (default: OUT/exports/checkpoint-N-<format> for a run's checkpoint-N, else "
            "CHECKPOINT-<format> beside the checkpoint)"
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "replace --out if it already exists"})


COMMAND = Command(
    "ptune export",
    (ExportArguments,),
    "Write a prefix checkpoint in THUDM's layout (pytorch_model.bin + config.json with pre_seq_len, for "
    "ChatGLM2/3's own ptuning code and demos), in ptune's (model.safetensors), or as a PEFT prefix-tuning "
    "adapter (adapter_config.json + adapter_model.safetensors, native bases).",
)


def main(argv: list[str]) -> int:
    """`ptune export CHECKPOINT [--format thudm|safetensors|peft] [--out DIR] [--overwrite]`; prints the folder."""
    (args,) = parse_command(COMMAND, argv)
    print(export_checkpoint(args.checkpoint, args.format, args.out, args.overwrite))
    return 0
