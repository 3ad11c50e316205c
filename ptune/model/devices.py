"""Which device and dtype a model runs in: `--device` names and `--dtype auto` decided once, for every verb
that loads a model (train / eval / predict through load_model, chat, serve, bench, plan's gate)."""

from __future__ import annotations

import torch

from ptune.io.errors import UserError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`auto`: on a GPU, bf16 where supported (fp16 overflows more easily), else fp16; on the CPU float32,
    since half-precision CPU kernels are slow or missing. ChatGLM2/3 (fp16) and GLM-4 (bf16) load in either."""
    if isinstance(name, torch.dtype):
        return name
    if name != "auto":
        if name not in DTYPES:
            raise UserError(f"--dtype {name}: expected one of auto, {', '.join(DTYPES)}")
        return DTYPES[name]
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return (
            torch.float16
        )  # no bf16 on this GPU (e.g. V100): half precision it has, whatever the checkpoint says
    return torch.float32


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_named(name: str | None) -> torch.device | None:
    """`--device NAME` (chat, serve) as a torch.device, one line for a name torch does not know; None: the
    default device (`default_device`)."""
    if name is None:
        return None
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device name (cpu, cuda, cuda:1, ...)") from None
