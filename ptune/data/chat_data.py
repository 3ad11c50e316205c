"""One data split, any format: rows read and checked, encoded for the model (cached by `datasets`), counted.

    encode_split(path, tok, data_args, split)   →  datasets.Dataset: input_ids, labels and per row
                                                    drop (why it is left out, "" when kept), lost_turns,
                                                    cut, source_len / target_len (before truncation)
    build_split(...)                            →  the kept rows' input_ids / labels; drops logged by reason

`split` is "train" (conversations: every assistant turn learned, `max_source_length + max_target_length + 1`
ids at most) or "eval" / "predict" (the last assistant turn is the answer; predict keeps rows without one).
prompt_response files go through ptune.data.rows as before; conversation formats (ptune.data.conversations) are read
here, each row kept as JSON text with its file line, so that `datasets` never unifies tool schemas (THUDM's
loader filled missing tool keys with null) and a family's refusal can still name the row's line.

Both the rows and their encoding are cached by `datasets` under --cache_dir (its own cache by default):
the cache key of the encoding is datasets' fingerprint of the rows (the file's SHA-256 and the reader) and
of the encoder (tokenizer files, lengths, format, split), so `ptune data` followed by `ptune train` with the
same config tokenizes once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

from ptune.data.chat_format import Encoded, encode_split_example, encode_thudm, last_span, prompt_ids
from ptune.data.conversations import (
    CONVERSATION_FORMATS,
    Conversation,
    check_same_format,
    empty_answer,
    is_tool_call,
    parse_data_columns,
    parse_row,
    row_format,
)
from ptune.data.rows import Columns, _progress_bars, load_rows, prompt_length, read_rows
from ptune.families.registry import family_of
from ptune.io.errors import UserError

logger = logging.getLogger("ptune")

_READER_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
# Part of the encoders' datasets fingerprint: a change to ptune's encoding code invalidates cached encodings
# (datasets hashes the encode function's own code, not the functions it calls): every module of ptune/data
# (formats, encoding, truncation) and of ptune/families (the prompt builders).
_PACKAGE = Path(__file__).parents[1]
_ENCODING_FILES = sorted(_PACKAGE.glob("data/**/*.py")) + sorted(_PACKAGE.glob("families/*.py"))
ENCODING_DIGEST = hashlib.sha256(b"".join(p.read_bytes() for p in _ENCODING_FILES)).hexdigest()
TRAILING_CALL = (
    "the last message is a tool call without its observation: training would learn to end a call with "
    "the end of the conversation"
)
STAT_COLUMNS = ("drop", "lost_turns", "cut", "source_len", "target_len")


def resolve_format(path: str | Path, data_args) -> str:
    """--data_format; else prompt_response when --prompt_column is set (THUDM configs); else the format the
    file's first row shows."""
    if getattr(data_args, "data_format", None):
        return data_args.data_format
    if data_args.prompt_column is not None:
        return "prompt_response"
    columns = parse_data_columns(getattr(data_args, "data_columns", None))
    line, row = next(iter(read_rows(path)))
    fmt = row_format(row, columns)
    if fmt is None or fmt == "prompt_response":
        raise UserError(
            f"{path}:{line}: cannot tell the data format from the keys {sorted(row)}: pass --data_format "
            f"({', '.join(CONVERSATION_FORMATS)}) or --prompt_column/--response_column"
        )
    return fmt


def _conversation_rows(path: str, digest: str, fmt: str, columns: str, require_answer: bool, reader: str):
    """`datasets` generator: each row checked and kept as {line, conversation JSON}. `digest` and `reader`
    only key the cache."""
    mapping = parse_data_columns(columns or None)
    for line, row in read_rows(path):
        where = f"{path}:{line}"
        check_same_format(fmt, row, where, mapping)
        conversation = parse_row(row, fmt, where, mapping, require_answer)
        yield {"line": line, "conversation": conversation.to_json()}


def load_conversations(path: str | Path, fmt: str, data_columns, require_answer: bool, cache_dir=None):
    """The checked rows of a conversation-format file as a `datasets.Dataset` (columns line, conversation)."""
    import datasets

    from ptune.data.rows import _kind, generated_dataset

    path = Path(path)
    _kind(path)
    features = datasets.Features({"line": datasets.Value("int64"), "conversation": datasets.Value("string")})
    columns = parse_data_columns(data_columns)
    kwargs = {
        "path": str(path),
        "digest": hashlib.sha256(path.read_bytes()).hexdigest(),
        "fmt": fmt,
        "columns": "" if columns is None else json.dumps(columns, sort_keys=True),
        "require_answer": require_answer,
        "reader": _READER_DIGEST,
    }
    return generated_dataset(path, _conversation_rows, features, kwargs, cache_dir)


def _row(encoded: Encoded, source_len: int, target_len: int) -> dict:
    return {
        "input_ids": encoded.input_ids,
        "labels": encoded.labels,
        "drop": encoded.dropped,
        "lost_turns": encoded.lost_turns,
        "cut": encoded.cut,
        "source_len": source_len,
        "target_len": target_len,
    }


def _lengths(tok, conversation: Conversation) -> tuple[int, int]:
    """Untruncated (prompt, answer) lengths of the last answer: ids before it, and its own ids."""
    if not conversation.ends_with_answer():
        return len(family_of(tok).conversation_prompt(tok, conversation)), 0
    ids, learned = family_of(tok).conversation_ids(tok, conversation)
    start, end = last_span(learned)
    return start, end - start - 1


def make_conversation_encoder(tok, path: str, max_source: int, max_target: int, split: str):
    """The batched `datasets.map` function for conversation rows (see the module docstring)."""

    def encode(batch, code=ENCODING_DIGEST):  # `code` keys the cache (see ENCODING_DIGEST)
        out = {name: [] for name in ("input_ids", "labels", *STAT_COLUMNS)}
        for line, text in zip(batch["line"], batch["conversation"], strict=True):
            conversation = Conversation.from_json(text)
            try:
                source_len, target_len = _lengths(tok, conversation)
                if split == "train" and is_tool_call(conversation.messages[-1]):
                    raise UserError(TRAILING_CALL)
                if split != "predict" and empty_answer(conversation):
                    encoded = Encoded(dropped="an empty assistant message")
                else:
                    encoded = encode_split_example(
                        tok, conversation, split, max_source, max_target, "conversation"
                    )
            except UserError as e:
                raise UserError(f"{path}:{line}: {e}") from None
            for name, value in _row(encoded, source_len, target_len).items():
                out[name].append(value)
        return out

    return encode


def make_prompt_response_encoder(tok, max_source: int, max_target: int, source_prefix: str, require_response):
    """ptune.data.rows's encoding of prompt / response / history rows, with the statistics columns."""
    family = family_of(tok)

    def encode(batch, code=ENCODING_DIGEST):  # `code` keys the cache (see ENCODING_DIGEST)
        out = {name: [] for name in ("input_ids", "labels", *STAT_COLUMNS)}
        for prompt, response, history in zip(
            batch["prompt"], batch["response"], batch["history"], strict=True
        ):
            prompt, response = prompt or "", response or ""
            if not prompt.strip() or (require_response and not response.strip()):
                encoded, source_len, target_len = Encoded(dropped="an empty prompt or response"), 0, 0
            else:
                encoded = encode_thudm(tok, prompt, response, history, max_source, max_target, source_prefix)
                source_len = prompt_length(encoded.labels)
                if encoded.lost_turns or source_len >= max_source:  # cut: the untruncated length
                    source_len = len(prompt_ids(tok, prompt, history, source_prefix))
                target_len = len(family.answer_ids(tok, response))
            for name, value in _row(encoded, source_len, target_len).items():
                out[name].append(value)
        return out

    return encode


def encode_split(path, tok, data_args, max_target: int, max_samples, split: str, cache_dir=None):
    """Rows of `path` read, checked and encoded with the statistics columns (nothing dropped yet)."""
    fmt = resolve_format(path, data_args)
    require = split != "predict"
    if fmt == "prompt_response":
        for flag, value in (
            ("--prompt_column", data_args.prompt_column),
            ("--response_column", data_args.response_column),
        ):
            if value is None:
                raise UserError(f"{flag} is required: the name of the column in {path} that holds it")
        columns = Columns(data_args.prompt_column, data_args.response_column, data_args.history_column)
        rows = load_rows(path, columns, require, cache_dir)
        encoder = make_prompt_response_encoder(
            tok, data_args.max_source_length, max_target, data_args.source_prefix or "", require
        )
    else:
        if data_args.source_prefix:  # never dropped silently: a conversation has its system message for it
            raise UserError(
                f"--source_prefix is for prompt_response data; {path} is {fmt}: put the text in a system "
                "message (or ptune chat --system) instead"
            )
        rows = load_conversations(path, fmt, getattr(data_args, "data_columns", None), require, cache_dir)
        encoder = make_conversation_encoder(tok, str(path), data_args.max_source_length, max_target, split)
    if max_samples is not None:
        rows = rows.select(range(min(max_samples, len(rows))))
    with _progress_bars(True):  # the one bar worth showing: tokenizing a large file takes a while
        return rows.map(
            encoder,
            batched=True,
            remove_columns=rows.column_names,
            num_proc=data_args.preprocessing_num_workers,
            load_from_cache_file=not data_args.overwrite_cache,
            desc=f"Tokenizing {Path(path).name}",
        )


def build_split(path, tok, data_args, max_target: int, max_samples, split: str, cache_dir=None):
    """The kept examples of one split (input_ids, labels); each reason for dropping rows logged with its count."""
    encoded = encode_split(path, tok, data_args, max_target, max_samples, split, cache_dir)
    reasons = Counter(r for r in encoded["drop"] if r)
    for reason, count in sorted(reasons.items()):
        logger.warning("%s: dropped %d of %d rows: %s", path, count, len(encoded), reason)
    lost = sum(1 for n, cut in zip(encoded["lost_turns"], encoded["cut"], strict=True) if n or cut)
    if lost:
        logger.info("%s: %d rows lost their oldest turns (or the end of their last) to fit", path, lost)
    with _progress_bars(False):
        kept = encoded.filter(lambda row: not row["drop"]).select_columns(["input_ids", "labels"])
    if len(kept) == 0:
        raise UserError(f"{path}: no usable rows ({', '.join(sorted(reasons)) or 'empty'})")
    return kept
