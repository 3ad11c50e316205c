"""Prefix-only checkpoints: what a ptune checkpoint folder holds, how it is written and read back.

A ptune checkpoint folder holds no base weights, only:
- `model.safetensors`: the prefix encoder under THUDM's names (`transformer.prefix_encoder.embedding.weight`
  [P, L·2·G·hn], plus `trans.0/2.{weight,bias}` with a projection) — the file THUDM's own loader reads;
- `prefix_config.json`: pre_seq_len, projection, dimensions, base model path/family/dtype, ptune version —
  so the folder is usable alone (`ptune predict --ptuning_checkpoint DIR` needs nothing repeated);
- the base model's tokenizer files, and the Trainer's own state files when written during training.
THUDM-format folders (`pytorch_model.bin` + `config.json` with pre_seq_len) are read as well, and PEFT
prefix-tuning adapter folders (`adapter_config.json` + `adapter_model.safetensors`; ptune/model/peft_adapter.py).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ptune.io.errors import UserError, torch_load_reason
from ptune.io.files import read_json, replacing, write_json
from ptune.model.convert import PREFIX_KEY
from ptune.model.weight_files import iter_tensors

WEIGHTS_NAME = "model.safetensors"
THUDM_WEIGHTS_NAME = "pytorch_model.bin"
PREFIX_CONFIG_NAME = "prefix_config.json"
# Only folders named exactly `checkpoint-<step>` are checkpoints: an export (`checkpoint-40-thudm`) or a user's
# `checkpoint-best` beside them is never rotated away nor resumed from.
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# What `--resume_from_checkpoint` needs; `rng_state*.pth` is checked separately (one per rank).
RESUME_FILES = (WEIGHTS_NAME, "trainer_state.json", "optimizer.pt", "scheduler.pt")

logger = logging.getLogger("ptune")


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"{path}: prefix checkpoint not found")
    for name in (WEIGHTS_NAME, THUDM_WEIGHTS_NAME):
        if (path / name).is_file():
            return path / name
    raise UserError(f"{path}: no {WEIGHTS_NAME} or {THUDM_WEIGHTS_NAME} in the prefix checkpoint folder")


def read_prefix_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Prefix tensors from a ptune or THUDM checkpoint (folder or file), keyed without `transformer.prefix_encoder.`.

    `.bin` files are read weights-only: a pickle holding anything but tensors is refused, never executed.
    A PEFT prefix-tuning adapter gives its `prompt_embeddings` as `embedding.weight`.
    """
    from ptune.model.peft_adapter import adapter_folder, read_adapter_state

    if (adapter := adapter_folder(path)) is not None:
        return read_adapter_state(adapter)
    file = _weights_file(Path(path))
    state = {}
    for name, tensor in iter_tensors(file):
        if name.startswith(PREFIX_KEY):
            state[name[len(PREFIX_KEY) :]] = tensor
    if not state:
        raise UserError(f"{file}: holds no {PREFIX_KEY}* tensors (not a P-Tuning v2 checkpoint)")
    return state


def read_prefix_config(folder: str | Path) -> dict:
    """The checkpoint's `prefix_config.json`, what a PEFT `adapter_config.json` says in its terms, or what a
    THUDM `config.json` says ({} when none exists)."""
    from ptune.model.peft_adapter import adapter_folder, adapter_prefix_config

    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    if (adapter := adapter_folder(folder)) is not None:
        return adapter_prefix_config(adapter)
    if (folder / PREFIX_CONFIG_NAME).is_file():
        return read_json(folder / PREFIX_CONFIG_NAME)
    if (folder / "config.json").is_file():
        cfg = read_json(folder / "config.json")
        if cfg.get("pre_seq_len"):
            return {
                "pre_seq_len": cfg["pre_seq_len"],
                "prefix_projection": bool(cfg.get("prefix_projection")),
            }
    return {}


def write_prefix_files(
    model, folder: Path, tokenizer_files: list[Path], state: dict[str, torch.Tensor] | None = None
) -> None:
    """Write the prefix weights, its config and the tokenizer files into an existing `folder`.

    `state`: the prefix tensors when the model's own are sharded (FSDP gathers them first, ptune.train.sharding).
    Each file is written under a temporary name and renamed, so a crash never leaves a truncated
    `model.safetensors` where a complete one was (the final save goes straight into output_dir).
    """
    from ptune import __version__

    state = {
        k: v.detach().to("cpu", torch.float32).contiguous()
        for k, v in (state if state is not None else model.trainable_state_dict()).items()
    }
    config = {
        **model.prefix_encoder.config.to_dict(),
        "base_model_name_or_path": model.source.path,
        "base_model_type": model.source.model_type,
        "base_fingerprint": model.source.fingerprint,  # ptune.model.fingerprint: which base, by content
        "family": model.source.family,
        "dtype": model.source.dtype,
        "ptune_version": __version__,
    }
    with replacing(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "producer": "ptune"})
    write_json(folder / PREFIX_CONFIG_NAME, config)
    for f in tokenizer_files:
        if f.is_file():
            with replacing(folder / f.name) as tmp:
                shutil.copyfile(f, tmp)


# ------------------------------------------------------------------------------ checkpoints of a run folder
def step_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The `checkpoint-<step>` folders of `run_dir`, oldest step first ([] when the folder does not exist)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def missing_resume_files(folder: str | Path) -> list[str]:
    """Names of the files a resume needs that `folder` lacks ([] for a complete checkpoint)."""
    folder = Path(folder)
    missing = [name for name in RESUME_FILES if not (folder / name).is_file()]
    if not any(folder.glob("rng_state*.pth")):
        missing.append("rng_state.pth")
    return missing


def newest_complete_checkpoint(run_dir: str | Path) -> Path | None:
    """The highest-step checkpoint that holds every file a resume needs; incomplete newer ones are named in
    the log (a resume must never silently start a fresh optimizer or fail on a half-copied folder)."""
    for _, folder in reversed(step_checkpoints(run_dir)):
        missing = missing_resume_files(folder)
        if not missing:
            return folder
        logger.warning("skipping %s for the resume: it lacks %s", folder, ", ".join(missing))
    return None


def verify_resumable(folder: str | Path) -> None:
    """Raise a one-line UserError if `folder` cannot be resumed from: a missing file, or one that does not
    load (truncated, garbage). Every file is read here, weights-only, the way the Trainer will read it, so the
    error comes before the model is loaded rather than as a traceback mid-setup."""
    from transformers.trainer_pt_utils import safe_globals

    folder = Path(folder)
    missing = missing_resume_files(folder)
    if missing:
        raise UserError(
            f"{folder}: not a complete checkpoint (lacks {', '.join(missing)}); cannot resume from it"
        )
    read_prefix_state(folder)
    check_trainer_state(folder / "trainer_state.json")
    for file in [folder / "optimizer.pt", folder / "scheduler.pt", *sorted(folder.glob("rng_state*.pth"))]:
        try:
            with safe_globals():
                torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
            raise UserError(
                f"{file}: not a valid checkpoint file ({torch_load_reason(e)}); resume from an earlier checkpoint"
            ) from None


def check_trainer_state(path: Path) -> dict:
    """A Trainer state file as the Trainer will use it on resume: an integer global_step and a log_history
    list of entries (the Trainer appends to it and plots read it); a one-line error naming the file if not."""
    state = read_json(path)
    if not isinstance(state.get("global_step"), int) or isinstance(state.get("global_step"), bool):
        raise UserError(f"{path}: not a Trainer state file (no integer global_step)")
    history = state.get("log_history")
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        got = type(history).__name__
        if isinstance(history, list):
            got = f"a list holding {next(type(e).__name__ for e in history if not isinstance(e, dict))}"
        raise UserError(
            f"{path}: 'log_history' must be a list of logged entries, got {got} (a damaged Trainer state file)"
        )
    return state


def checkpoint_global_step(folder: str | Path) -> int:
    return int(read_json(Path(folder) / "trainer_state.json")["global_step"])


def rotate_checkpoints(
    run_dir: str | Path, limit: int | None, keep: tuple[str | None, ...] = ()
) -> list[Path]:
    """Delete the oldest `checkpoint-<step>` folders beyond `limit`; never the newest one nor those in `keep`
    (the best checkpoint). Only exact `checkpoint-<step>` names count (unlike transformers' glob, which would
    count an export named `checkpoint-40-thudm` and delete real checkpoints for it). Returns what was deleted."""
    if not limit or limit <= 0:
        return []
    checkpoints = [folder for _, folder in step_checkpoints(run_dir)]
    protected = {Path(p).resolve() for p in keep if p} | (
        {checkpoints[-1].resolve()} if checkpoints else set()
    )
    deleted = []
    excess = len(checkpoints) - limit
    for folder in checkpoints:
        if excess <= 0:
            break
        if folder.resolve() in protected:
            continue
        logger.info("deleting %s (save_total_limit %d)", folder, limit)
        shutil.rmtree(folder)
        deleted.append(folder)
        excess -= 1
    return deleted
