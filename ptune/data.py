"""Datasets: JSON lines / CSV files → tokenized examples (through `datasets`, cached) → padded batches.

Each row gives a prompt, a response and optionally a history of [question, answer] pairs (column names from
the config). Rows with an empty prompt or response are dropped and counted (THUDM dropped them silently);
malformed rows stop the run with the file and row named. Encoding itself (chat format, truncation) is
`chat_format.encode_example`; batching pads each batch to its longest sample, never to a fixed length.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ptune.chat_format import encode_example
from ptune.errors import UserError

logger = logging.getLogger("ptune")

EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv"}


@dataclass(frozen=True)
class Columns:
    prompt: str
    response: str
    history: str | None = None


def iter_json_lines(path: Path, text: str | None = None):
    """Yield (line number, object) for each non-blank line of a JSON-lines file; a line that is not a JSON
    object raises a UserError naming `path:line:column`."""
    text = path.read_text(encoding="utf-8") if text is None else text
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}:{e.colno}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
        yield lineno, row


def _check_json_lines(path: Path) -> None:
    """Find the first malformed line of a JSON-lines file and raise naming it (only run after a load failed)."""
    text = path.read_text(encoding="utf-8", errors="strict")
    if text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None
        return
    for _ in iter_json_lines(path, text):
        pass


def load_rows(path: str | Path, cache_dir: str | None = None):
    """Load one data file as a `datasets.Dataset` (JSON lines, a JSON array, or CSV)."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found")
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unsupported extension {path.suffix!r} (use .json, .jsonl or .csv)")
    try:
        return datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=cache_dir)
    except Exception as e:  # datasets wraps parser errors in several types; find the line ourselves
        if kind == "json":
            try:
                _check_json_lines(path)
            except UnicodeDecodeError as ue:
                raise UserError(f"{path}: not UTF-8 text (byte {ue.start})") from None
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: cannot read as {kind} ({cause[:300]})") from None


def check_columns(dataset, path: Path | str, columns: Columns, require_response: bool = True) -> None:
    """Every configured column must exist in the file; name the missing one and what exists."""
    wanted = {"--prompt_column": columns.prompt}
    if require_response or columns.response in dataset.column_names:
        wanted["--response_column"] = columns.response
    if columns.history:
        wanted["--history_column"] = columns.history
    for flag, name in wanted.items():
        if name not in dataset.column_names:
            raise UserError(f"{path}: no column {name!r} ({flag}); the file has {dataset.column_names}")


def _history(value, path, row: int) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(s, str) for s in t) for t in value
    ):
        raise UserError(f"{path}: row {row + 1}: history must be a list of [question, answer] string pairs")
    return [(q, a) for q, a in value]


def _text(value, path, row: int, column: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(
            f"{path}: row {row + 1}: column {column!r} must be a string, got {type(value).__name__}"
        )
    return value


def make_encoder(
    tokenizer,
    columns: Columns,
    max_source: int,
    max_target: int,
    source_prefix: str,
    path,
    require_response=True,
):
    """The batched `datasets.map` function: rows → input_ids / labels (empty lists for rows to drop).

    Without `require_response` (predict), a row without a response is kept: its answer is just the end id,
    so it gets a prediction but no reference.
    """

    def encode(batch, indices):
        out = {"input_ids": [], "labels": []}
        for i, row in enumerate(indices):
            prompt = _text(batch[columns.prompt][i], path, row, columns.prompt)
            response = ""
            if columns.response in batch:
                response = _text(batch[columns.response][i], path, row, columns.response)
            history = _history(batch[columns.history][i], path, row) if columns.history else []
            if not prompt.strip() or (require_response and not response.strip()):
                out["input_ids"].append([])
                out["labels"].append([])
                continue
            ids, labels = encode_example(
                tokenizer, prompt, response, history, max_source, max_target, source_prefix=source_prefix
            )
            out["input_ids"].append(ids)
            out["labels"].append(labels)
        return out

    return encode


def build_dataset(
    path,
    tokenizer,
    columns: Columns,
    data_args,
    max_target: int,
    max_samples: int | None,
    require_response=True,
    cache_dir: str | None = None,
):
    """Load, validate, encode and filter one split; logs how many rows were dropped as empty."""
    dataset = load_rows(path, cache_dir)
    check_columns(dataset, path, columns, require_response)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    encoder = make_encoder(
        tokenizer, columns, data_args.max_source_length, max_target, data_args.source_prefix or "", str(path),
        require_response,
    )  # fmt: skip
    encoded = dataset.map(
        encoder,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        num_proc=data_args.preprocessing_num_workers,
        load_from_cache_file=not data_args.overwrite_cache,
        desc=f"Tokenizing {Path(path).name}",
    )
    kept = encoded.filter(lambda row: len(row["input_ids"]) > 0, desc="Dropping empty rows")
    dropped = len(encoded) - len(kept)
    if dropped:
        logger.warning(
            "%s: dropped %d of %d rows with an empty prompt or response", path, dropped, len(encoded)
        )
    if len(kept) == 0:
        raise UserError(f"{path}: no usable rows (every row has an empty prompt or response)")
    return kept


def pad_right(seqs: list[list[int]], value: int) -> list[list[int]]:
    """Pad every sequence on the right to the longest one."""
    width = max(len(s) for s in seqs)
    return [s + [value] * (width - len(s)) for s in seqs]


def pad_left(seqs: list[list[int]], value: int) -> list[list[int]]:
    """Pad every sequence on the left to the longest one (generation prompts)."""
    width = max(len(s) for s in seqs)
    return [[value] * (width - len(s)) + s for s in seqs]


def prompt_length(labels: list[int]) -> int:
    """Number of leading -100 labels: the prompt part of an encoded example."""
    n = 0
    while n < len(labels) and labels[n] == -100:
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

    Always: `input_ids` (pad id), `labels` (-100), `attention_mask` [B, S], right-padded (teacher-forced loss).
    With `with_prompts`: also `prompt_ids` / `prompt_mask` [B, S'] left-padded for generation, and
    `answer_ids` [B, T] (the supervised answer without its end id, -100-padded) as the metrics' references.
    """

    pad_id: int
    with_prompts: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [list(r["input_ids"]) for r in rows]
        labels = [list(r["labels"]) for r in rows]
        batch = {
            "input_ids": torch.tensor(pad_right(ids, self.pad_id)),
            "labels": torch.tensor(pad_right(labels, -100)),
            "attention_mask": torch.tensor(pad_right([[1] * len(s) for s in ids], 0)),
        }
        if self.with_prompts:
            cut = [prompt_length(lab) for lab in labels]
            prompts = [s[:n] for s, n in zip(ids, cut, strict=True)]
            answers = [lab[n:-1] for lab, n in zip(labels, cut, strict=True)]
            batch["prompt_ids"] = torch.tensor(pad_left(prompts, self.pad_id))
            batch["prompt_mask"] = torch.tensor(pad_left([[1] * len(p) for p in prompts], 0))
            batch["answer_ids"] = torch.tensor(pad_right(answers, -100), dtype=torch.long)
        return batch
