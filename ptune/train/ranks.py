"""What the processes of one run must agree on before they train: the checkpoint a resume continues from.

With a shared output folder every process sees the same checkpoints. With one folder per machine
(`--save_on_each_node`) they may not: a machine killed while the others renamed `checkpoint-N` into place
still has only `checkpoint-(N-k)`, and resuming each machine from its own newest checkpoint would give the
ranks different prefixes (DDP never compares them). All ranks therefore continue from the newest step that
every one of them holds complete.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ptune.io.errors import UserError
from ptune.train.checkpoint import CHECKPOINT_RE, missing_resume_files

logger = logging.getLogger("ptune")


def collective_device() -> torch.device:
    """Where a collective's tensor must live: the current GPU under NCCL, the CPU under Gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _min_over_ranks(value: int) -> int:
    tensor = torch.tensor([value], device=collective_device())
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
    return int(tensor.item())


def common_checkpoint(run_dir: str | Path, newest: Path | None) -> Path | None:
    """`newest` (this rank's newest complete checkpoint, or None), or the older step some other rank stopped
    at when they differ; None when any rank has none. Every rank calls it (one all-reduce of one integer)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return newest
    step = int(CHECKPOINT_RE.match(newest.name).group(1)) if newest is not None else -1
    common = _min_over_ranks(step)
    if common < 0 or common == step:
        return newest if common >= 0 else None
    folder = Path(run_dir) / f"checkpoint-{common}"
    missing = missing_resume_files(folder) if folder.is_dir() else ["the folder"]
    if missing:
        raise UserError(
            f"{folder}: another process can only resume from step {common}, but this folder lacks "
            f"{', '.join(missing)}; copy checkpoint-{common} here from that machine's output folder"
        )
    logger.warning("resuming from %s: the newest step every process holds complete", folder)
    return folder
