"""Data files → rows: the one reader of data rows (`read_rows`: UTF-8 checked, JSON lines, a JSON array or CSV),
and `datasets`' caching of rows generated from a file (`generated_dataset`).

ptune reads the files itself so that every bad row is reported as `file:LINE` before `datasets` sees it;
`datasets` only caches the checked rows.  Each row becomes a Conversation in its format's module
(ptune.data.formats); ptune.data.splits encodes them, ptune.data.collate pads them into batches.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from ptune.io import files
from ptune.io.errors import UserError
from ptune.io.files import json_error

EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv"}


def read_text(path: Path) -> str:
    """The file as text: UTF-8 (a BOM is dropped) and not empty, or a UserError at the first bad byte."""
    text = files.read_text(path, missing="data file not found", hint="; save the file as UTF-8")
    if not text.strip():
        raise UserError(f"{path}: empty data file")
    return text


def iter_json_lines(path: Path, text: str | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line of a JSON-lines file; a line that is not a JSON
    object raises a UserError naming `path:line:column`."""
    text = read_text(path) if text is None else text
    # Split on newlines only: str.splitlines would also cut at U+2028 etc., which JSON strings may hold raw.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise json_error(path, line, e, first_line=lineno) from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
        yield lineno, row


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each element of a file holding one JSON array of objects."""
    decoder = json.JSONDecoder()

    def fail(error: json.JSONDecodeError):
        raise json_error(path, text, error) from None

    def skip(i: int) -> int:  # past whitespace
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip(text.index("[") + 1)
    line, counted = 1, 0  # the line of position `counted`, advanced element by element (not recounted)
    while text[i : i + 1] != "]":
        try:
            row, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            fail(e)
        line, counted = line + text.count("\n", counted, i), i
        if not isinstance(row, dict):
            raise UserError(f"{path}:{line}: expected an object in the array, got {type(row).__name__}")
        yield line, row
        i = skip(end)
        if text[i : i + 1] == ",":
            i = skip(i + 1)
            if text[i : i + 1] == "]":  # json.loads rejects it too
                fail(json.JSONDecodeError("Expecting value", text, i))
        elif text[i : i + 1] != "]":
            fail(json.JSONDecodeError("Expecting ',' delimiter", text, i))
    if text[skip(i + 1) :]:
        fail(json.JSONDecodeError("Extra data", text, skip(i + 1)))


def _iter_csv(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, row) for each record after the header; every record must have the header's width."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = None
    start = 1  # the file line where the next record begins (a quoted field may span lines)
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not fields:  # a blank line
                continue
            if header is None:
                header = fields
                if len(set(header)) < len(header):
                    twice = next(name for name in header if header.count(name) > 1)
                    raise UserError(f"{path}:{line}: column {twice!r} appears twice in the header")
                continue
            if len(fields) != len(header):
                raise UserError(f"{path}:{line}: expected {len(header)} fields, got {len(fields)}")
            yield line, dict(zip(header, fields, strict=True))
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: invalid CSV ({e})") from None


def file_kind(path: Path) -> str:
    """The kind of an existing data file, "json" or "csv", or a UserError."""
    if not path.is_file():
        raise UserError(f"{path}: data file not found")
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unsupported extension {path.suffix!r} (use .json, .jsonl or .csv)")
    return kind


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """The one reader of data rows: yield (file line number, row dict) from JSON lines, a JSON array or CSV.

    Raises UserError naming `path:LINE[:COL]` for a byte that is not UTF-8, bad JSON, a non-object row or a
    CSV record of the wrong width, and `path: empty data file` when there is no row at all.
    """
    path = Path(path)
    kind = file_kind(path)
    text = read_text(path)
    if kind == "csv":
        rows = _iter_csv(path, text)
    elif text.lstrip().startswith("["):
        rows = _iter_json_array(path, text)
    else:
        rows = iter_json_lines(path, text)
    count = 0
    for count, item in enumerate(rows, start=1):  # noqa: B007 - count is read after the loop
        yield item
    if count == 0:
        raise UserError(f"{path}: empty data file (no rows)")


@contextlib.contextmanager
def progress_bars(show: bool):
    """datasets' progress bars inside the block: kept only when `show` and stderr is a terminal (bar updates
    written into a log file are noise); bars the user turned off stay off."""
    import datasets

    turn_off = not datasets.are_progress_bars_disabled() and not (show and sys.stderr.isatty())
    if turn_off:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if turn_off:
            datasets.enable_progress_bars()


def generated_dataset(path: Path, generator, features, gen_kwargs: dict, cache_dir: str | None):
    """`datasets.Dataset.from_generator(generator, **gen_kwargs)`, cached by datasets under `cache_dir` (keyed by
    `gen_kwargs`: put the file's digest there), with the generator's UserError surfaced as it was raised
    (datasets wraps it) and any other failure as one line naming `path`."""
    import datasets

    try:
        with progress_bars(False):
            return datasets.Dataset.from_generator(
                generator, features=features, gen_kwargs=gen_kwargs, cache_dir=cache_dir
            )
    except Exception as e:  # datasets wraps the generator's errors: surface ours
        cause = e
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise UserError(f"{path}: cannot read it ({first})") from None
