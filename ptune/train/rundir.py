"""The output folder of a run: the files a run leaves there, setting an earlier run's aside, and the lock that
makes it one run's.

What may be written where is `ptune.io.paths` (the one path-safety policy of every verb); this module gives
it a run's names (checkpoints, RESULT_FILES) and adds what only a run needs:
- `--overwrite_output_dir` over a run with checkpoints: the older run's higher-numbered checkpoints survived,
  rotation then deleted the new run's, and `--resume_from_checkpoint true` continued the old run. ptune never
  deletes another run's checkpoints; it refuses and says what to remove (`check_overwrite`).
- two processes training into one folder: they overwrote each other's checkpoints. A run holds an exclusive
  `flock` on the folder itself (no lock file to leave behind; the kernel drops it when the process dies, even
  on SIGKILL).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from ptune.io import paths
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


def model_folders(model_args) -> dict[str, str | None]:
    """The folders a run reads its model from, by flag: nothing ptune writes may land in them."""
    return {
        "--model_name_or_path": model_args.model_name_or_path,
        "--tokenizer_name": model_args.tokenizer_name,
    }


def check_output_dir(
    output_dir: str | Path, reads: dict[str, str | None], flag: str = "--output_dir"
) -> None:
    """output_dir of train, eval, predict and data (`ptune.io.paths.check_output_dir`): not a folder `reads`
    names (model, tokenizer), nor another model's, a file, read-only or full."""
    paths.check_output_dir(output_dir, reads, PREFIX_CONFIG_NAME, flag)


def check_overwrite(output_dir: str | Path, overwrite: bool, resuming: bool) -> None:
    """`ptune train` into a folder that already holds a run: continue it (resume), replace its final files
    (--overwrite_output_dir, only when it has no checkpoints), or refuse (`ptune.io.paths.refuse_earlier_run`)."""
    if resuming:
        return
    out = Path(output_dir)
    checkpoints = [folder.name for _, folder in step_checkpoints(out)]
    holds_results = out.is_dir() and any((out / name).exists() for name in RESULT_FILES)
    paths.refuse_earlier_run(out, checkpoints, holds_results, overwrite)


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
