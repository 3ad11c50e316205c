"""The one JSON reader and the atomic writers every module uses (no torch import: `ptune plot` stays fast).

- `read_text`: a UTF-8 text file (a BOM dropped) → str; a byte that is not UTF-8 is one `UserError` naming
  `file:line:column` (what data files, config files and JSON files all say).
- `read_json`: a JSON object file → dict, every failure one `UserError` naming `file:line:column` (a trailing
  comma is named at the comma, where json itself points at the next line).
- `replacing` (one file) and `atomic_dir` (a folder): write under a temporary name, rename into place on
  success; a crash or kill -9 never leaves a half-written file or folder where a complete one was.
  `publish_dir` is that rename for a folder staged elsewhere (the Trainer's checkpoints).
- `write_json`: a JSON file written through `replacing`; `dumps_json`: the text. Both write a non-finite float
  (a NaN loss, an infinite perplexity) as `null`: a bare `NaN` / `Infinity` is not JSON, and strict readers
  (JavaScript's JSON.parse, jq, Go) refuse the whole file over it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ptune.io.errors import UserError


def json_error(path, text: str, error: json.JSONDecodeError, what="invalid JSON", first_line=1) -> UserError:
    """`path:LINE:COL: {what} (reason)` for a JSON syntax error in `text` (whose first line is `first_line`
    of the file). A trailing comma is named as such at the comma: json itself complains about the `}` or `]`
    after it, possibly lines later."""
    pos = error.pos
    comma = len(text[:pos].rstrip()) - 1
    if text[pos : pos + 1] in ("}", "]") and comma >= 0 and text[comma] == ",":
        line = first_line + text.count("\n", 0, comma)
        column = comma - text.rfind("\n", 0, comma)
        return UserError(f"{path}:{line}:{column}: trailing comma before '{text[pos]}' (JSON allows none)")
    return UserError(f"{path}:{first_line + error.lineno - 1}:{error.colno}: {what} ({error.msg})")


def read_text(path: str | Path, missing: str = "file not found", hint: str = "") -> str:
    """The text of `path`, decoded as UTF-8 (-sig: editors on Windows may write a BOM).

    A one-line UserError otherwise: `path: {missing}`, `path: cannot read (reason)`, or
    `path:LINE:COLUMN: not UTF-8 (byte 0xNN){hint}` at the first byte that is not UTF-8 (the column counts
    bytes from 1, as an editor's byte offset does).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise UserError(f"{path}:{line}:{column}: not UTF-8 (byte 0x{data[e.start]:02x}){hint}") from None


def read_json(path: str | Path, missing_ok: bool = False, object_pairs_hook=None) -> dict[str, Any]:
    """The JSON object in `path` ({} if it is absent and `missing_ok`); a one-line UserError otherwise."""
    path = Path(path)
    if missing_ok and not path.is_file():
        return {}
    text = read_text(path)
    try:
        value = json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as e:
        raise json_error(path, text, e, "not valid JSON") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def finite(value: Any) -> Any:
    """`value` with every NaN / infinite float, at any depth of dicts, lists and tuples, replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps_json(data: Any, indent: int | None = 2, sort_keys: bool = False) -> str:
    """`data` as JSON text (not ASCII-escaped), non-finite floats written as null (`finite`)."""
    return json.dumps(finite(data), indent=indent, ensure_ascii=False, sort_keys=sort_keys, allow_nan=False)


def write_json(path: str | Path, data: dict, indent: int = 2, sort_keys: bool = False) -> None:
    """`data` as UTF-8 JSON (not ASCII-escaped, non-finite floats as null) into `path`, atomically."""
    with replacing(Path(path)) as tmp:
        tmp.write_text(dumps_json(data, indent, sort_keys) + "\n", encoding="utf-8")


class replacing:
    """`with replacing(path) as tmp:` write `tmp`; on success it replaces `path` (mode 0666 & ~umask)."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return False
        os.chmod(self.tmp, 0o666 & ~_umask())  # safetensors writes owner-only files
        with open(self.tmp, "rb") as fh:  # the bytes reach the disk before the name does
            os.fsync(fh.fileno())
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
        publish_dir(self.tmp, self.target, self.target.with_name(f".old-{self.target.name}"))
        return False


def publish_dir(staged: Path, target: Path, aside: Path) -> None:
    """Rename the complete folder `staged` to `target` (same file system), its files flushed first.

    An existing `target` (an export replaced, a step re-saved) is first moved to `aside` and deleted only once
    the new folder is in place, so a crash at any point keeps one complete copy under one of the names.
    """
    fsync_dir(staged)
    if target.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
        os.replace(staged, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staged, target)
    fsync_dir(target.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
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
