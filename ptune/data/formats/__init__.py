"""The data formats ptune reads (``--data_format``), one module each, and what is done with all of them: detecting
a row's format, reading a file's rows into `Conversation`s, checking --data_columns.

Formats, in the flag's order (README "Chat data formats"): prompt_response (THUDM's columns), conversations
(ChatGLM3's finetune_demo), messages (GLM-4's), alpaca, sharegpt.  When --data_format is not given a format's
flags may choose it (--prompt_column: prompt_response), else the first row's keys (`detect`).

Key and role names can be renamed with ``--data_columns`` (LLaMA-Factory's dataset_info names: every key of a
format's ``defaults``).  Every error names ``file:line`` and the field, e.g.
``data.json:3: conversations[2].role: unknown role 'bot'``.

To add a format: one module here with a `Format` subclass (ptune.data.formats.base) and its line below.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ptune.data.conversation import Conversation
from ptune.data.formats import alpaca, conversations, messages, prompt_response, sharegpt
from ptune.data.formats.base import Format
from ptune.data.rows import read_rows
from ptune.io.errors import UserError

REGISTRY: dict[str, Format] = {
    f.name: f
    for f in (
        prompt_response.FORMAT,
        conversations.FORMAT,
        messages.FORMAT,
        alpaca.FORMAT,
        sharegpt.FORMAT,
    )
}
FORMATS = tuple(REGISTRY)  # the --data_format choices
DETECTION_ORDER = sorted(REGISTRY.values(), key=lambda f: f.detect_rank)
MAPPING_KEYS = tuple(sorted({k for f in REGISTRY.values() for k in f.defaults}))


def get(name: str) -> Format:
    return REGISTRY[name]


def parse_data_columns(value: dict | str | None) -> dict | None:
    """--data_columns as given: a JSON object (from a config) or its text (from a flag), every key one of
    MAPPING_KEYS and every value a string."""
    if value is not None and not isinstance(value, dict):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise UserError(f"--data_columns: not a JSON object ({e.msg})") from None
        if not isinstance(value, dict):
            raise UserError('--data_columns: must be a JSON object, e.g. \'{"messages": "dialog"}\'')
    for key, name in (value or {}).items():
        if key not in MAPPING_KEYS:
            raise UserError(f"--data_columns: unknown key {key!r} (one of {', '.join(MAPPING_KEYS)})")
        if not isinstance(name, str):
            raise UserError(f"--data_columns: {key} must be a string, got {json.dumps(name)}")
    return value


def row_format(row: dict, data_columns: dict | None = None) -> str | None:
    """The format a row's keys show (None: none of them)."""
    return next((f.name for f in DETECTION_ORDER if f.detect(row, f.names(data_columns))), None)


def check_same_format(
    fmt: str, row: dict, where: str, data_columns: dict | None, names: dict | None = None
) -> None:
    """A row of another format than the file's is an error naming both. A row that can be read as `fmt`
    (with `names`, by default its --data_columns names) is fine even when detection would say otherwise
    (--data_columns can give messages and conversations the same key; a message may carry both role tags)."""
    data_format = get(fmt)
    if data_format.fits(row, data_format.names(data_columns) if names is None else names):
        return
    found = row_format(row, data_columns)
    if found is not None and found != fmt:
        raise UserError(f"{where}: a {found} row in a {fmt} file (mixed formats; keys {sorted(row)})")


def parse_row(
    row: dict, fmt: str, where: str, data_columns: dict | None, require_answer: bool
) -> Conversation:
    """One row of format `fmt` as a Conversation; UserError naming `where` (file:line) and the field."""
    data_format = get(fmt)
    return data_format.parse(row, data_format.names(data_columns), where, require_answer)


def resolve_format(path, data_args: Any) -> Format:
    """--data_format; else the format its flags choose (--prompt_column: prompt_response, as THUDM's configs);
    else the one the file's first row shows."""
    if getattr(data_args, "data_format", None):
        return get(data_args.data_format)
    chosen = next((f for f in REGISTRY.values() if f.chosen_by(data_args)), None)
    if chosen is not None:
        return chosen
    columns = parse_data_columns(getattr(data_args, "data_columns", None))
    line, row = next(iter(read_rows(path)))
    found = row_format(row, columns)
    if found is None or not get(found).detectable:
        names = ", ".join(f.name for f in REGISTRY.values() if f.detectable)
        flags = "".join(f" or {f.select_hint}" for f in REGISTRY.values() if f.select_hint)
        raise UserError(
            f"{path}:{line}: cannot tell the data format from the keys {sorted(row)}: pass --data_format "
            f"({names}){flags}"
        )
    return get(found)


def read_conversations(
    path, fmt: str, names: dict, data_columns: dict | None, require_answer: bool
) -> Iterator[tuple[int, Conversation]]:
    """(file line, Conversation) of each row of `path` (ptune.data.rows.read_rows), every row checked to be of
    format `fmt` (read with `names`, `Format.reading_names`), then the file's columns (`Format.check_columns`)."""
    data_format = get(fmt)
    seen: dict[str, None] = {}  # every key, in order of appearance
    for line, row in read_rows(path):
        where = f"{path}:{line}"
        seen.update(dict.fromkeys(row))
        check_same_format(fmt, row, where, data_columns, names)
        yield line, data_format.parse(row, names, where, require_answer)
    data_format.check_columns(path, seen, names, require_answer)
