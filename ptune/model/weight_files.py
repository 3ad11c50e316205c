"""Reading a model folder's weight files safely: which files (an index's shards, each inside the folder),
each one whole (safetensors) or weights-only (`.bin`, never unpickled otherwise), and floating point.

`weight_files(folder)` lists the shards, `iter_tensors(path)` streams one file's tensors, and
`check_native_weights(folder, cfg)` checks a folder transformers is about to read (ptune.model.load.load_base) so
that every problem is one line naming the file, never a traceback or torch's advice to load a pickle with
`weights_only=False`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from ptune.io.errors import UserError
from ptune.io.files import read_json


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files in index order: sharded (with an index) or single, safetensors or .bin."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise UserError(f"{index}: no 'weight_map' in the index")
            shards = sorted(set(weight_map.values()))
            for shard in shards:
                _check_inside(index, shard)
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise UserError(f"{folder / missing[0]}: shard listed in {index_name} is missing")
            return [folder / s for s in shards]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    raise UserError(f"{folder}: no weights (model*.safetensors or pytorch_model*.bin with an index)")


def _check_inside(index: Path, shard: object) -> None:
    """A shard an index names must be a file name inside the model folder: never an absolute path, nor one
    that climbs out with "..". Checked on the name (a Hugging Face cache folder's files are links out of it)."""
    parts = Path(shard).parts if isinstance(shard, str) else ()
    if not parts or Path(shard).is_absolute() or ".." in parts:
        raise UserError(
            f"{index}: weight_map names {shard!r}, which is not a file inside the model folder; ptune reads "
            "only the folder's own shards"
        )


INTEGER_DTYPES = ("BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64")  # safetensors' names


def integer_weights(path: Path, name: str, dtype: object) -> UserError:
    return UserError(
        f"{path}: {name!r} holds integers ({dtype}), not floating-point weights; ptune never casts them "
        "(a quantized checkpoint? load the original weights, with --quantization_bit 4 or 8 to save memory)"
    )


def check_native_weights(folder: Path, cfg: dict) -> None:
    """Before transformers reads a native folder: every shard inside the folder, each safetensors file whole,
    each .bin a weights-only file (never unpickled otherwise; one line, never torch's advice to load it with
    weights_only=False), and no integer `.weight` / `.bias` tensor unless config.json says the checkpoint
    is quantized (transformers would cast or assign it)."""
    quantized = "quantization_config" in cfg
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            header = check_safetensors(path)
            dtypes = ((name, t.get("dtype")) for name, t in header.items() if name != "__metadata__")
        else:
            dtypes = ((name, t.dtype) for name, t in iter_tensors(path))
        for name, dtype in dtypes:
            integer = dtype in INTEGER_DTYPES or (
                isinstance(dtype, torch.dtype) and not dtype.is_floating_point
            )
            if integer and not quantized and name.endswith((".weight", ".bias")):
                raise integer_weights(path, name, dtype)


def check_safetensors(path: Path) -> dict:
    """A UserError naming `path` unless it looks like a whole safetensors file: an 8-byte header length, a
    JSON header, and every tensor's bytes present (safetensors itself says "incomplete metadata").
    Returns the header (tensor name -> dtype, shape, data_offsets)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else 0
        header = f.read(min(length, 100_000_000))
    if not header.startswith(b"{"):
        raise UserError(f"{path}: not a safetensors file (no JSON header; {size} bytes)")
    if 8 + length > size:
        raise UserError(f"{path}: truncated: {size} bytes, its header alone needs {8 + length}")
    try:
        tensors = json.loads(header)
        end = max((t["data_offsets"][1] for k, t in tensors.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise UserError(f"{path}: not a safetensors file (unreadable header)") from None
    if 8 + length + end > size:
        raise UserError(f"{path}: truncated: {size} bytes, its tensors need {8 + length + end}")
    return tensors


def iter_tensors(path: Path, device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from one weight file without loading the whole file first where the format allows.

    `.bin` files are read with `torch.load(weights_only=True, mmap=True)`: never unpickle arbitrary objects.
    """
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        check_safetensors(path)
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    yield name, f.get_tensor(name)
        except (OSError, RuntimeError, ValueError, SafetensorError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(f"{path}: cannot read safetensors file ({str(e).splitlines()[0]})") from None
        return
    try:
        state = _load_bin(path)
    except Exception as e:  # pickle errors come in many types; all mean the same to the user
        raise UserError(f"{path}: not a weights-only PyTorch file ({unpickling_reason(e)})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"{path}: entry {name!r} is not a tensor")
        yield name, tensor


def unpickling_reason(error: Exception) -> str:
    """What torch.load(weights_only=True) found wrong, without its advice to load with weights_only=False
    (which would run whatever the file holds): the WeightsUnpickler's finding, else the message's first line."""
    text = " ".join(str(error).split())
    found = re.search(
        r"WeightsUnpickler error: (.*?)(?: was not an allowed global| Check the documentation|$)", text
    )
    if found and found.group(1).strip():
        return found.group(1).strip()[:200]
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return "unreadable" if "weights_only" in first or "can still be loaded" in first else first[:200]


def _load_bin(path: Path):
    """Weights-only load; memory-mapped when the file is in the zip format (saves a full copy in RAM)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)
