"""One data split, any format: rows read into Conversations (cached by `datasets`), encoded under the split's
truncation policy (cached too), counted.

    encode_split(path, tok, data_args, max_target, max_samples, split)
        →  datasets.Dataset: input_ids, labels and per row drop (why it is left out, "" when kept),
           lost_turns, cut, source_len / target_len (of the last answer, before truncation)
    build_split(...)  →  the kept rows' input_ids / labels; drops logged by reason

The route of a row: ptune.data.rows.read_rows (file → (line, row)) → its format's module (ptune.data.formats:
row → `Conversation`, checked, errors naming file:line) → kept as {line, conversation JSON}, so that `datasets`
never unifies tool schemas (THUDM's loader filled missing tool keys with null) and a family's refusal can still
name the row's line → `encode(tok, conversation, policy)` (ids through ptune.data.chat_format and the family).

`split` is "train", "eval" or "predict"; the format's truncation policy (`Format.truncation`, one of
chat_format.TRUNCATION_POLICIES; `truncation` below) decides the example, through
chat_format.encode_split_example, and what is dropped and counted:
- `ConversationTurns` ("conversation": every format but prompt_response): training learns every assistant turn,
  at most `max_source_length + max_target_length + 1` ids, oldest turns dropped; eval / predict, the last
  assistant turn is the answer (predict keeps rows without one);
- `SourceTarget` ("prompt_response", every split): THUDM's lengths, the prompt cut to `max_source_length` and
  the answer to `max_target_length` separately, `--source_prefix` put where THUDM put it, so its ids are
  THUDM's ptuning's.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ptune.data import formats
from ptune.data.chat_format import encode_split_example, with_source_prefix
from ptune.data.collate import prompt_length
from ptune.data.conversation import Conversation, empty_answer, is_tool_call
from ptune.data.formats.base import Format
from ptune.data.rows import file_kind, generated_dataset, progress_bars
from ptune.data.truncation import Encoded, last_span
from ptune.families.registry import family_of
from ptune.io.errors import UserError

logger = logging.getLogger("ptune")

_PACKAGE = Path(__file__).resolve().parents[1]


def _code_digest(*patterns: str) -> str:
    """SHA-256 of ptune's own files matching `patterns` (globs under ptune/): part of a datasets cache key, so
    that a change to that code invalidates what older code cached (datasets hashes a generator's or an
    encoder's own code, not the functions it calls).  A pattern matching nothing is an error: a moved module
    must not silently leave the key (after the folder move ptune/families was once hashed as nothing)."""
    digest = hashlib.sha256()
    for pattern in patterns:
        files = sorted(_PACKAGE.glob(pattern))
        if not files:
            raise FileNotFoundError(f"{_PACKAGE / pattern}: no file to key the datasets cache with")
        for file in files:
            digest.update(file.read_bytes())
    return digest.hexdigest()


# The rows: reading and the formats. The encoding: every module of ptune/data and the family prompt builders.
READER_DIGEST = _code_digest("data/rows.py", "data/conversation.py", "data/formats/*.py")
ENCODING_DIGEST = _code_digest("data/**/*.py", "families/*.py")
TRAILING_CALL = (
    "the last message is a tool call without its observation: training would learn to end a call with "
    "the end of the conversation"
)
STAT_COLUMNS = ("drop", "lost_turns", "cut", "source_len", "target_len")


# -- truncation policies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConversationTurns:
    """The "conversation" policy: `encode_split_example`'s turns dropped from the oldest; a row with an empty
    assistant message is dropped (but in predict), a training row ending with a tool call refused."""

    split: str
    max_source: int
    max_target: int
    source_prefix: str = ""  # never set: `truncation` refuses it
    takes_source_prefix: ClassVar[bool] = False
    names_the_row: ClassVar[bool] = True  # its errors (a family's refusal, a trailing call) are the row's

    def encode(self, tok: Any, conversation: Conversation) -> tuple[Encoded, int, int]:
        source_len, target_len = _lengths(tok, conversation)
        if self.split == "train" and is_tool_call(conversation.messages[-1]):
            raise UserError(TRAILING_CALL)
        if self.split != "predict" and empty_answer(conversation):
            return Encoded(dropped="an empty assistant message"), source_len, target_len
        encoded = encode_split_example(
            tok, conversation, self.split, self.max_source, self.max_target, "conversation"
        )
        return encoded, source_len, target_len


@dataclass(frozen=True)
class SourceTarget:
    """The "prompt_response" policy, for THUDM's rows (history pairs, a question, its answer): `source_prefix`
    put in (`with_source_prefix`), the prompt fitted to `max_source` ids (oldest history, then the question
    cut), the answer to `max_target` ids, separately.  A row with an empty question (or, but in predict, an
    empty answer) is dropped."""

    split: str
    max_source: int
    max_target: int
    source_prefix: str = ""
    takes_source_prefix: ClassVar[bool] = True
    # Its one error (--max_source_length too small for the template) is about the flags, not a row.
    names_the_row: ClassVar[bool] = False

    def encode(self, tok: Any, conversation: Conversation) -> tuple[Encoded, int, int]:
        messages = conversation.messages
        answered = conversation.ends_with_answer()
        question = messages[-2 if answered else -1]["content"]
        response = messages[-1]["content"] if answered else ""
        if not question.strip() or (self.split != "predict" and not response.strip()):
            return Encoded(dropped="an empty prompt or response"), 0, 0
        encoded = encode_split_example(
            tok,
            with_source_prefix(tok, conversation, self.source_prefix),
            self.split,
            self.max_source,
            self.max_target,
            "prompt_response",
        )
        source_len = prompt_length(encoded.labels)
        if encoded.lost_turns or source_len >= self.max_source:  # cut: the untruncated length
            context = Conversation(messages[:-1] if answered else messages, conversation.tools)
            source_len = len(
                family_of(tok).history_prompt(tok, with_source_prefix(tok, context, self.source_prefix))
            )
        return encoded, source_len, len(family_of(tok).answer_ids(tok, response))


Truncation = ConversationTurns | SourceTarget
POLICIES: dict[str, type[Truncation]] = {"conversation": ConversationTurns, "prompt_response": SourceTarget}


def truncation(
    fmt: Format, split: str, max_source: int, max_target: int, source_prefix: str = "", path: Any = None
) -> Truncation:
    """The policy a `split` of a `fmt` file is encoded with (module docstring)."""
    policy = POLICIES[fmt.truncation]
    if source_prefix and not policy.takes_source_prefix:  # never dropped silently
        raise UserError(
            f"--source_prefix is for prompt_response data; {path} is {fmt.name}: put the text in a system "
            "message (or ptune chat --system) instead"
        )
    return policy(split, max_source, max_target, source_prefix)


def encode(tok: Any, conversation: Conversation, policy: Truncation) -> tuple[Encoded, int, int]:
    """One Conversation as an example under `policy`: the `Encoded` (ids, labels, what truncation did, or why
    it is dropped) and the untruncated (prompt, answer) lengths of its last answer."""
    return policy.encode(tok, conversation)


def _lengths(tok: Any, conversation: Conversation) -> tuple[int, int]:
    """Untruncated (prompt, answer) lengths of the last answer: ids before it, and its own ids."""
    if not conversation.ends_with_answer():
        return len(family_of(tok).conversation_prompt(tok, conversation)), 0
    ids, learned = family_of(tok).conversation_ids(tok, conversation)
    start, end = last_span(learned)
    return start, end - start - 1


# -- the split ----------------------------------------------------------------------------------------------


def _conversation_rows(
    path: str, digest: str, fmt: str, names: str, columns: str, require_answer: bool, reader: str
):
    """`datasets` generator: each row checked and kept as {line, conversation JSON}. `digest` and `reader`
    only key the cache."""
    read = formats.read_conversations(
        path, fmt, json.loads(names), json.loads(columns or "null"), require_answer
    )
    for line, conversation in read:
        yield {"line": line, "conversation": conversation.to_json()}


def load_conversations(
    path: str | Path, fmt: str, names: dict, data_columns: dict | None, require_answer: bool, cache_dir=None
):
    """The checked rows of a `fmt` file (read with `names`) as a `datasets.Dataset` (columns line, conversation),
    cached under `cache_dir` keyed by the file's content, so a second run neither reads nor parses it again."""
    import datasets

    path = Path(path)
    file_kind(path)  # a missing file or a wrong extension fails here, before datasets
    features = datasets.Features({"line": datasets.Value("int64"), "conversation": datasets.Value("string")})
    kwargs = {
        "path": str(path),
        "digest": hashlib.sha256(path.read_bytes()).hexdigest(),
        "fmt": fmt,
        "names": json.dumps(names, sort_keys=True),
        "columns": "" if data_columns is None else json.dumps(data_columns, sort_keys=True),
        "require_answer": require_answer,
        "reader": READER_DIGEST,
    }
    return generated_dataset(path, _conversation_rows, features, kwargs, cache_dir)


def make_encoder(tok: Any, path: str, policy: Truncation):
    """The batched `datasets.map` function: each {line, conversation} row encoded with `policy`, with the
    statistics columns; a row's UserError names its file:line (when it is about the row)."""

    def encode_batch(batch, code=ENCODING_DIGEST):  # `code` keys the cache (see ENCODING_DIGEST)
        out = {name: [] for name in ("input_ids", "labels", *STAT_COLUMNS)}
        for line, text in zip(batch["line"], batch["conversation"], strict=True):
            try:
                encoded, source_len, target_len = encode(tok, Conversation.from_json(text), policy)
            except UserError as e:
                if not policy.names_the_row:
                    raise
                raise UserError(f"{path}:{line}: {e}") from None
            row = {"input_ids": encoded.input_ids, "labels": encoded.labels, "drop": encoded.dropped}
            row |= {"lost_turns": encoded.lost_turns, "cut": encoded.cut}
            row |= {"source_len": source_len, "target_len": target_len}
            for name, value in row.items():
                out[name].append(value)
        return out

    return encode_batch


def encode_split(path, tok, data_args, max_target: int, max_samples, split: str, cache_dir=None):
    """Rows of `path` read, checked and encoded with the statistics columns (nothing dropped yet)."""
    fmt = formats.resolve_format(path, data_args)
    data_columns = formats.parse_data_columns(getattr(data_args, "data_columns", None))
    names = fmt.reading_names(path, data_args, data_columns)
    policy = truncation(
        fmt, split, data_args.max_source_length, max_target, data_args.source_prefix or "", path
    )
    rows = load_conversations(path, fmt.name, names, data_columns, split != "predict", cache_dir)
    if max_samples is not None:
        rows = rows.select(range(min(max_samples, len(rows))))
    with progress_bars(True):  # the one bar worth showing: tokenizing a large file takes a while
        return rows.map(
            make_encoder(tok, str(path), policy),
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
    with progress_bars(False):
        kept = encoded.filter(lambda row: not row["drop"]).select_columns(["input_ids", "labels"])
    if len(kept) == 0:
        raise UserError(f"{path}: no usable rows ({', '.join(sorted(reasons)) or 'empty'})")
    return kept
