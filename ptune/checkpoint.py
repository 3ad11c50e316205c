"""Prefix-only checkpoints: what a ptune checkpoint folder holds, how it is written and read back.

A ptune checkpoint folder holds no base weights, only:
- `model.safetensors`: the prefix encoder under THUDM's names (`transformer.prefix_encoder.embedding.weight`
  [P, L·2·G·hn], plus `trans.0/2.{weight,bias}` with a projection) — the file THUDM's own loader reads;
- `prefix_config.json`: pre_seq_len, projection, dimensions, base model path/family/dtype, ptune version —
  so the folder is usable alone (`ptune predict --ptuning_checkpoint DIR` needs nothing repeated);
- the base model's tokenizer files, and the Trainer's own state files when written during training.
THUDM-format folders (`pytorch_model.bin` + `config.json` with pre_seq_len) are read as well.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from ptune.convert import PREFIX_KEY, iter_tensors, read_json
from ptune.errors import UserError

WEIGHTS_NAME = "model.safetensors"
THUDM_WEIGHTS_NAME = "pytorch_model.bin"
PREFIX_CONFIG_NAME = "prefix_config.json"


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
    """
    file = _weights_file(Path(path))
    state = {}
    for name, tensor in iter_tensors(file):
        if name.startswith(PREFIX_KEY):
            state[name[len(PREFIX_KEY) :]] = tensor
    if not state:
        raise UserError(f"{file}: holds no {PREFIX_KEY}* tensors (not a P-Tuning v2 checkpoint)")
    return state


def read_prefix_config(folder: str | Path) -> dict:
    """The checkpoint's `prefix_config.json`, or what a THUDM `config.json` says ({} when neither exists)."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
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


def write_prefix_files(model, folder: Path, tokenizer_files: list[Path]) -> None:
    """Write the prefix weights, its config and the tokenizer files into an existing `folder`.

    Each file is written under a temporary name and renamed, so a crash never leaves a truncated
    `model.safetensors` where a complete one was (the final save goes straight into output_dir).
    """
    from ptune import __version__

    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.trainable_state_dict().items()
    }
    config = {
        **model.prefix_encoder.config.to_dict(),
        "base_model_name_or_path": model.source["path"],
        "base_model_type": model.source["model_type"],
        "family": model.source.get("family"),
        "dtype": model.source["dtype"],
        "ptune_version": __version__,
    }
    with _replacing(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "producer": "ptune"})
    with _replacing(folder / PREFIX_CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for f in tokenizer_files:
        if f.is_file():
            with _replacing(folder / f.name) as tmp:
                shutil.copyfile(f, tmp)


class _replacing:
    """`with _replacing(path) as tmp:` write `tmp`; on success it replaces `path` (mode 0666 & ~umask)."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return False
        os.chmod(self.tmp, 0o666 & ~_umask())  # safetensors writes owner-only files
        os.replace(self.tmp, self.path)
        return False


def atomic_dir(target: Path):
    """Context manager: yield a temporary sibling folder, rename it to `target` only if the body succeeds.

    A crash (or kill -9) mid-write leaves a `.tmp-*` folder behind, never a half-written `target`.
    """
    return _AtomicDir(Path(target))


class _AtomicDir:
    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{self.target.name}-", dir=self.target.parent))
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only; publish with normal permissions
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        _fsync_dir(self.tmp)
        if self.target.exists():
            # Replace an older copy (same step re-saved): move it aside first so a crash keeps one of them.
            old = self.target.with_name(f".old-{self.target.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)
        _fsync_dir(self.target.parent)
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Flush the files of `folder` and the folder entry itself, so a rename after it publishes complete data."""
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
