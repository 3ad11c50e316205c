"""The output folder of a run: what may be written there, by whom, and when ptune refuses.

Every rule here exists because the opposite destroyed work once:
- `output_dir` equal to the base model (or tokenizer) folder: the final save wrote the prefix over the base's
  `model.safetensors`. A folder that holds model weights is never an output folder.
- `--overwrite_output_dir` over a run with checkpoints: the older run's higher-numbered checkpoints survived,
  rotation then deleted the new run's, and `--resume_from_checkpoint true` continued the old run. ptune never
  deletes another run's checkpoints; it refuses and says what to remove.
- two processes training into one folder: they overwrote each other's checkpoints. A run holds an exclusive
  `flock` on the folder itself (no lock file to leave behind; the kernel drops it when the process dies, even
  on SIGKILL).
- a folder that is a file, read-only or full: found out after hours of training. Checked up front.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ptune.io.errors import UserError
from ptune.train.checkpoint import PREFIX_CONFIG_NAME, WEIGHTS_NAME, step_checkpoints

logger = logging.getLogger("ptune")

# Files a finished ptune run leaves in output_dir besides its checkpoints.
RUN_FILES = ("trainer_state.json", "train_results.json", "all_results.json")
# Everything train, eval and predict leave there: the results of one prefix (plus its tokenizer files).
RESULT_FILES = (
    *RUN_FILES,
    "eval_results.json",
    "predict_results.json",
    "generated_predictions.txt",
    "training_curves.png",
    WEIGHTS_NAME,
    PREFIX_CONFIG_NAME,
)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.safetensors.index.json", "*.gguf")
MIN_FREE_BYTES = 64 * 2**20  # a prefix checkpoint of a 9B model with its Adam state is ~45 MB


def model_folders(model_args) -> dict[str, str | None]:
    """The folders a run reads its model from, by flag: nothing ptune writes may land in them."""
    return {
        "--model_name_or_path": model_args.model_name_or_path,
        "--tokenizer_name": model_args.tokenizer_name,
    }


def holds_model_weights(folder: Path) -> bool:
    """A base model folder: config.json beside weight files, and not a ptune checkpoint (prefix_config.json)."""
    if not (folder / "config.json").is_file() or (folder / PREFIX_CONFIG_NAME).is_file():
        return False
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS)


def check_output_dir(
    output_dir: str | Path, protected: dict[str, str | None], flag: str = "--output_dir"
) -> None:
    """Refuse an output folder that would overwrite a model, is not a folder, is not writable, or is full.

    `protected` maps a flag name to a folder the run reads (model, tokenizer): output_dir may not be one of them.
    Nothing is created: writability is probed in the nearest existing ancestor.
    """
    out = Path(output_dir)
    for name, folder in protected.items():
        if folder and out.exists() and Path(folder).exists() and out.resolve() == Path(folder).resolve():
            raise UserError(
                f"{flag} {out} is the {name} folder: ptune would write its prefix files over the model's; "
                "choose another output folder"
            )
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: exists and is not a folder")
    if out.is_dir() and holds_model_weights(out):
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


def check_overwrite(output_dir: str | Path, overwrite: bool, resuming: bool) -> None:
    """`ptune train` into a folder that already holds a run: continue it (resume), replace its final files
    (--overwrite_output_dir, only when it has no checkpoints), or refuse."""
    out = Path(output_dir)
    checkpoints = step_checkpoints(out)
    if resuming:
        return
    if checkpoints:
        names = ", ".join(folder.name for _, folder in checkpoints[:3]) + (
            ", ..." if len(checkpoints) > 3 else ""
        )
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
    if not overwrite and out.is_dir() and any((out / name).exists() for name in RESULT_FILES):
        raise UserError(
            f"{out}: already holds a run's results; pass --overwrite_output_dir to train over it (they are "
            "moved into a previous-run-* folder), or choose another --output_dir"
        )


def set_aside_results(output_dir: str | Path) -> Path | None:
    """`--overwrite_output_dir`: move an earlier run's results (RESULT_FILES and its tokenizer files) into
    `output_dir/previous-run-<UTC time>/`, so that none survives beside the new run's (its all_results.json
    would otherwise merge the new training figures with the old prefix's ROUGE) and none is lost: the folder
    is the old prefix's, usable as `--ptuning_checkpoint`. Returns it, or None when there was nothing."""
    import time

    from ptune.families.registry import tokenizer_files

    out = Path(output_dir)
    old = [out / n for n in dict.fromkeys([*RESULT_FILES, *tokenizer_files()]) if (out / n).is_file()]
    if not any(f.name in RESULT_FILES for f in old):
        return None
    aside = out / time.strftime("previous-run-%Y%m%d-%H%M%S", time.gmtime())
    while aside.exists():
        aside = aside.with_name(aside.name + "-1")
    aside.mkdir()
    for f in old:
        os.replace(f, aside / f.name)
    logger.warning(
        "--overwrite_output_dir: moved the earlier run's %s into %s", ", ".join(f.name for f in old), aside
    )
    return aside


class RunLock:
    """`with RunLock(output_dir, verb):` an exclusive lock on the output folder for the run's lifetime.

    The folder is created if needed, and removed again on the way out if this run created it and left it
    empty (a refused or failed run leaves no trace). Only the writer process (rank 0) locks.
    """

    def __init__(self, output_dir: str | Path, verb: str, enabled: bool = True):
        self.folder, self.verb, self.enabled = Path(output_dir), verb, enabled
        self.fd: int | None = None
        self.created = False

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise UserError(
                f"{self.folder}: another ptune process is writing into this folder; wait for it to finish "
                "or choose another --output_dir"
            ) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        if self.created and exc_type is not None:
            try:
                self.folder.rmdir()  # only if still empty
            except OSError:
                pass
        return False
