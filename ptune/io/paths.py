"""The one path-safety policy: where `ptune train|eval|predict|data|export` may write, and what they refuse.

Every rule exists because the opposite destroyed work once; every refusal is one line, made before anything
is written (a refused command leaves every file as it was). Three kinds of output, one set of rules:

- a folder written into (`--output_dir` of train, eval, predict, data): `check_output_dir`;
- a folder replaced whole (`ptune export --out`): `check_replaced_folder`;
- a file (eval/predict's result files, `ptune data --write_encoded`): `refuse_existing`, `check_output_file`.

1. What a command reads is never what it writes. `output_dir` equal to the base model (or tokenizer) folder
   once had the final save write the prefix over the base's `model.safetensors`; an export replacing an
   ancestor of its checkpoint would delete the checkpoint; `--write_encoded` onto the train file replaced the
   data. The relation refused follows the kind of output (`relation`): a folder written into may not *be* an
   input folder, a folder replaced whole may not be or *hold* one, a file may not be an input file or lie
   *inside* an input folder.
2. A folder that holds model weights is never an output folder, and a run's or a prefix's files (weights,
   checkpoints, `prefix_config.json`, results, tokenizer files) are never replaced by a file of another kind
   (`holds_model_weights`, `protected_file`).
3. What exists is replaced only when asked (`--overwrite_output_dir`, `--overwrite`), and even then only by
   its own kind: train never deletes another run's checkpoints (rotation and `--resume_from_checkpoint true`
   would mix the two runs: `refuse_earlier_run`), export only replaces an earlier export.
4. A folder that is a file, read-only or full is found out up front, not after hours of training.

Nothing here imports the rest of ptune: the names of the files a verb owns come from its caller.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ptune.io.errors import UserError

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.safetensors.index.json", "*.gguf")
# Suffixes of weights and Trainer state files (a prefix, a model shard, optimizer.pt, rng_state.pth, ...).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")
MIN_FREE_BYTES = 64 * 2**20  # a prefix checkpoint of a 9B model with its Adam state is ~45 MB

Inputs = Mapping[str, "str | Path | None"]  # what a command reads, by the name its messages give it


def relation(path: str | Path, folder: str | Path) -> str | None:
    """How `path` stands to `folder` (both resolved): "is", "holds" (an ancestor of it), "inside", or None."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    if path == folder:
        return "is"
    if path in folder.parents:
        return "holds"
    if folder in path.parents:
        return "inside"
    return None


def holds_model_weights(folder: Path, prefix_marker: str) -> bool:
    """A base model folder: config.json beside weight files, and not a prefix folder (`prefix_marker`,
    prefix_config.json, is absent)."""
    if not (folder / "config.json").is_file() or (folder / prefix_marker).is_file():
        return False
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS)


# ------------------------------------------------------------------------------ a folder written into
def check_output_dir(out: str | Path, reads: Inputs, prefix_marker: str, flag: str = "--output_dir") -> None:
    """Refuse an output folder that would overwrite a model, is not a folder, is not writable, or is full.

    `reads` maps a flag name to a folder the command reads (model, tokenizer): output_dir may not be one of
    them (rule 1), nor hold another model's weights (rule 2). Nothing is created: writability is probed in
    the nearest existing ancestor.
    """
    out = Path(out)
    for name, folder in reads.items():
        if folder and out.exists() and Path(folder).exists() and relation(out, folder) == "is":
            raise UserError(
                f"{flag} {out} is the {name} folder: ptune would write its prefix files over the model's; "
                "choose another output folder"
            )
    refuse_non_folder(out, flag)
    if out.is_dir() and holds_model_weights(out, prefix_marker):
        raise UserError(
            f"{flag} {out}: holds a model's config.json and weights; ptune would write its prefix files over "
            "them: choose another output folder"
        )
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {out}: {existing} is a file, not a folder")
    probe_writable(existing, flag, out)
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise UserError(
            f"{flag} {out}: only {free / 2**20:.1f} MiB free on its file system; checkpoints need more "
            f"(at least {MIN_FREE_BYTES // 2**20} MiB)"
        )


def refuse_non_folder(out: Path, flag: str) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: exists and is not a folder")


def probe_writable(folder: Path, flag: str, out: Path) -> None:
    """Create and remove a temporary file in `folder` (os.access is wrong for root and read-only mounts)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".ptune-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise UserError(
            f"{flag} {out}: cannot write in {folder} ({os.strerror(e.errno or errno.EACCES)})"
        ) from None


def refuse_earlier_run(out: Path, checkpoints: list[str], holds_results: bool, overwrite: bool) -> None:
    """`ptune train` into a folder that holds an earlier run (its `checkpoints` names, oldest first, and
    whether its result files are there), not resuming it: replace its final files (--overwrite_output_dir,
    only when it has no checkpoints: they are never deleted), or refuse."""
    if checkpoints:
        names = ", ".join(checkpoints[:3]) + (", ..." if len(checkpoints) > 3 else "")
        if overwrite:
            raise UserError(
                f"{out}: holds checkpoints of an earlier run ({names}); --overwrite_output_dir never deletes "
                "checkpoints (rotation and --resume_from_checkpoint true would mix the two runs): delete them "
                "yourself, choose another --output_dir, or continue with --resume_from_checkpoint true"
            )
        raise UserError(
            f"{out}: already holds a run ({names}); choose another --output_dir, or continue it with "
            "--resume_from_checkpoint true"
        )
    if not overwrite and holds_results:
        raise UserError(
            f"{out}: already holds a run's results; pass --overwrite_output_dir to train over it (they are "
            "moved into a previous-run-* folder), or choose another --output_dir"
        )


# ------------------------------------------------------------------------------------------- a file
def refuse_existing(path: Path, overwrite: bool, overwrite_flag: str = "--overwrite_output_dir") -> None:
    """An existing `path` is replaced only with `overwrite_flag` (rule 3)."""
    if path.exists() and not overwrite:
        raise UserError(f"{path}: already exists; pass {overwrite_flag} to replace it")


def protected_file(
    target: Path, run_files: Iterable[str], checkpoint_folder: Callable[[str], bool]
) -> str | None:
    """What `target` (a resolved path) is if it belongs to a run or a prefix, None otherwise (rule 2): a file
    inside a checkpoint folder (`checkpoint_folder(name)`), weights or Trainer state by suffix, or one of the
    `run_files` a run or a prefix folder holds by name."""
    checkpoint = next((p for p in target.parents if checkpoint_folder(p.name)), None)
    if checkpoint is not None:
        return f"inside the checkpoint folder {checkpoint}"
    if target.suffix in WEIGHT_SUFFIXES:
        return f"a weights or checkpoint file ({target.suffix})"
    if target.name in run_files:
        return f"a file of a run or prefix folder ({target.name})"
    return None


def check_output_file(
    write_to: Path,
    flag: str,
    reads_files: Inputs,
    reads_folders: Inputs,
    protected: str | None,
    overwrite: bool,
) -> None:
    """`ptune data --write_encoded FILE`: never one of the files it reads (`reads_files`: what each is and
    why it is refused → the config, the data files), never inside a folder it reads (rule 1), never a run's or
    prefix's file (`protected`, from `protected_file`) whatever the flags (rule 2), nor (without
    --overwrite_output_dir) an existing file."""
    target = write_to.resolve()
    for what, path in reads_files.items():
        if path and relation(target, path) == "is":
            raise UserError(f"{flag} {write_to} is {what}")
    for name, folder in reads_folders.items():
        if folder and Path(folder).is_dir() and relation(target, folder) in ("is", "inside"):
            raise UserError(f"{flag} {write_to} is inside the {name} folder; write it elsewhere")
    if protected:
        raise UserError(
            f"{flag} {write_to} is {protected}: ptune data never writes over one; write elsewhere"
        )
    if write_to.is_dir():
        raise UserError(f"{flag} {write_to}: is a folder; give a file name (FILE.jsonl)")
    if write_to.exists() and not overwrite:
        raise UserError(
            f"{flag} {write_to}: exists; pass --overwrite_output_dir true to replace it, or another name"
        )
    if not write_to.parent.is_dir():
        raise UserError(f"{flag} {write_to}: folder {write_to.parent} does not exist")


# ------------------------------------------------------------------------------ a folder replaced whole
def check_replaced_folder(
    target: Path,
    reads: Inputs,
    overwrite: bool,
    own_file: Callable[[Path], bool],
    holds_model: Callable[[Path], bool],
    flag: str = "--out",
) -> None:
    """Refuse an output folder whose replacement would destroy something: what the command reads (`reads`:
    the checkpoint, the base model) or a folder holding it (rule 1); with --overwrite, anything but an
    earlier output of the same command: a file `own_file` does not claim, or a model (`holds_model`, rule 3)."""
    for what, folder in reads.items():
        if folder is not None and relation(target, folder) in ("is", "holds"):
            raise UserError(f"{flag} {target}: is or holds {what} ({folder}); choose another folder")
    refuse_non_folder(target, flag)
    if not target.exists():
        return
    refuse_existing(target, overwrite, "--overwrite")
    for entry in sorted(target.iterdir()):
        if not entry.is_file() or not own_file(entry):
            raise UserError(
                f"{flag} {target}: holds {entry.name}, which ptune export does not write; --overwrite only "
                "replaces an earlier export"
            )
    if holds_model(target):
        raise UserError(
            f"{flag} {target}: holds a model's config.json; --overwrite only replaces an earlier export"
        )
