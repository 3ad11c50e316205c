"""Datasets: JSON lines / CSV files → tokenized examples (through `datasets`, cached) → padded batches.

Each row gives a prompt, a response and optionally a history of [question, answer] pairs (column names from
the config). ptune reads the files itself (`read_rows`, the one reader of rows: UTF-8 checked, JSON lines, a
JSON array or CSV), so that every bad row is reported as `file:LINE` before `datasets` sees it; `datasets` only
caches the validated rows. Encoding, dropping and counting (every format) is ptune.data.chat_data; batching here
pads each batch to its longest sample, never to a fixed length.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ptune.data.labels import IGNORE_INDEX
from ptune.families.base import BadHistory, normalize_history
from ptune.io import files
from ptune.io.errors import UserError
from ptune.io.files import json_error

logger = logging.getLogger("ptune")

EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv"}
# Part of the datasets cache key of the rows: a change to this reader invalidates rows cached by an older one.
_READER_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Columns:
    prompt: str
    response: str
    history: str | None = None


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


def _kind(path: Path) -> str:
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
    kind = _kind(path)
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


def _history(value, where: str) -> list[list[str]]:
    try:
        return [list(t) for t in normalize_history(value)]
    except BadHistory:
        raise UserError(f"{where}: history must be a list of [question, answer] string pairs") from None


def _text(value, where: str, column: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: column {column!r} must be a string, got {type(value).__name__}")
    return value


def _examples(
    path: str, digest: str, prompt: str, response: str, history: str, require_response: bool, reader: str
):
    """`datasets` generator: the validated rows of `path` as {prompt, response, history}.

    `digest` (the file's SHA-256) and `reader` only key the datasets cache. Every row is checked here, with
    its file line; a configured column that no row has is an error after the last row.
    """
    seen: dict[str, None] = {}  # column names in order of appearance
    for line, row in read_rows(path):
        where = f"{path}:{line}"
        seen.update(dict.fromkeys(row))
        yield {
            "prompt": _text(row.get(prompt), where, prompt),
            "response": _text(row.get(response), where, response),
            "history": _history(row.get(history), where) if history else [],
        }
    wanted = {"--prompt_column": prompt}
    if require_response:
        wanted["--response_column"] = response
    if history:
        wanted["--history_column"] = history
    for flag, name in wanted.items():
        if name not in seen:
            raise UserError(f"{path}: no column {name!r} ({flag}); the file has {list(seen)}")


@contextlib.contextmanager
def _progress_bars(show: bool):
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


def load_rows(
    path: str | Path, columns: Columns, require_response: bool = True, cache_dir: str | None = None
):
    """The validated rows of one data file as a `datasets.Dataset` with columns prompt, response, history.

    Cached by datasets under `cache_dir`, keyed by the file's content and the columns, so that a second run
    over the same file neither reads nor tokenizes it again.
    """
    import datasets

    path = Path(path)
    _kind(path)  # a missing file or a wrong extension fails here, before datasets
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "response": datasets.Value("string"),
            "history": datasets.List(datasets.List(datasets.Value("string"))),
        }
    )
    kwargs = {
        "path": str(path),
        "digest": hashlib.sha256(path.read_bytes()).hexdigest(),
        "prompt": columns.prompt,
        "response": columns.response,
        "history": columns.history or "",
        "require_response": require_response,
        "reader": _READER_DIGEST,
    }
    return generated_dataset(path, _examples, features, kwargs, cache_dir)


def generated_dataset(path: Path, generator, features, gen_kwargs: dict, cache_dir: str | None):
    """`datasets.Dataset.from_generator(generator, **gen_kwargs)`, cached by datasets under `cache_dir` (keyed by
    `gen_kwargs`: put the file's digest there), with the generator's UserError surfaced as it was raised
    (datasets wraps it) and any other failure as one line naming `path`."""
    import datasets

    try:
        with _progress_bars(False):
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


def pad_right(seqs: list[list[int]], value: int) -> list[list[int]]:
    """Pad every sequence on the right to the longest one."""
    width = max(len(s) for s in seqs)
    return [s + [value] * (width - len(s)) for s in seqs]


def pad_left(seqs: list[list[int]], value: int) -> list[list[int]]:
    """Pad every sequence on the left to the longest one (generation prompts)."""
    width = max(len(s) for s in seqs)
    return [[value] * (width - len(s)) + s for s in seqs]


def prompt_length(labels: list[int]) -> int:
    """Number of leading IGNORE_INDEX labels: the prompt part of an encoded example."""
    n = 0
    while n < len(labels) and labels[n] == IGNORE_INDEX:
        n += 1
    return n


def longest_prompt_first(labels: list[list[int]]) -> list[int]:
    """Row order for generation: longest prompt first, so each batch pads little and a batch too large for
    memory fails at the start rather than at the end. Stable, so equal lengths keep the file's order."""
    return sorted(range(len(labels)), key=lambda i: -prompt_length(labels[i]))


def restore_order(items: list, order: list[int]) -> list:
    """Undo `dataset.select(order)`: items[k] belongs to row order[k]."""
    out = [None] * len(order)
    for k, row in enumerate(order):
        out[row] = items[k]
    return out


@dataclass
class Collator:
    """Pads a batch to its longest sample.

    Always: `input_ids` (pad id), `labels` (IGNORE_INDEX), `attention_mask` [B, S], right-padded (teacher-forced loss).
    With `with_prompts`: also `prompt_ids` / `prompt_mask` [B, S'] left-padded for generation, and
    `answer_ids` [B, T] (the supervised answer without its end id, IGNORE_INDEX-padded) as the metrics' references.
    """

    pad_id: int
    with_prompts: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [list(r["input_ids"]) for r in rows]
        labels = [list(r["labels"]) for r in rows]
        batch = {
            "input_ids": torch.tensor(pad_right(ids, self.pad_id)),
            "labels": torch.tensor(pad_right(labels, IGNORE_INDEX)),
            "attention_mask": torch.tensor(pad_right([[1] * len(s) for s in ids], 0)),
        }
        if self.with_prompts:
            cut = [prompt_length(lab) for lab in labels]
            prompts = [s[:n] for s, n in zip(ids, cut, strict=True)]
            answers = [lab[n:-1] for lab, n in zip(labels, cut, strict=True)]
            batch["prompt_ids"] = torch.tensor(pad_left(prompts, self.pad_id))
            batch["prompt_mask"] = torch.tensor(pad_left([[1] * len(p) for p in prompts], 0))
            batch["answer_ids"] = torch.tensor(pad_right(answers, IGNORE_INDEX), dtype=torch.long)
        return batch
