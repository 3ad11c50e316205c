"""`ptune data CONFIG [--flag ...] [--write_encoded FILE.jsonl]`: look at the data before training.

Reads the tokenizer and the config only (never the weights), then for each split the config names (train_file,
validation_file, test_file) encodes it exactly as `ptune train|eval|predict` would (ptune.data.chat_data; the same
`datasets` cache, so a later run re-uses the tokenization) and prints:

- rows read, kept, and dropped with why;
- prompt and answer lengths (before truncation) against max_source_length / max_target_length: how many
  prompts lose history (turns dropped, or a conversation's last turn cut), how many answers are longer than
  max_target_length (cut in eval/predict; THUDM-style prompt_response training cuts them too);
- the first two examples decoded, learned spans between ⟦ and ⟧.

and writes `OUTPUT_DIR/data_lengths.png` (the histograms).  `--write_encoded FILE.jsonl` writes every kept
example: split, row (0-based row of its file), input_ids, labels and, for eval/predict splits, prompt_ids and
answer_ids (the reference without its end marker), so the encoding can be diffed against another tool's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ptune.config.args import ARGUMENT_CLASSES
from ptune.config.parse import parse_args
from ptune.config.parser import Command, print_help
from ptune.data.labels import IGNORE_INDEX

logger = logging.getLogger("ptune")

PNG_NAME = "data_lengths.png"
OPEN, CLOSE = "⟦", "⟧"


def marked(tok, ids: list[int], labels: list[int]) -> str:
    """The example as text, special tokens written out and each learned span between ⟦ and ⟧."""
    parts: list[str] = []
    start = 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or (labels[k] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            text = tok.decode(ids[start:k], skip_special_tokens=False)
            parts.append(f"{OPEN}{text}{CLOSE}" if labels[start] != IGNORE_INDEX else text)
            start = k
    return "".join(parts)


def split_stats(encoded, max_source: int, max_target: int) -> dict:
    """Counts of one encoded split (ptune.data.chat_data.encode_split's columns)."""
    drops: dict[str, int] = {}
    for reason in encoded["drop"]:
        if reason:
            drops[reason] = drops.get(reason, 0) + 1
    sources, targets = encoded["source_len"], encoded["target_len"]
    return {
        "rows": len(encoded),
        "kept": len(encoded) - sum(drops.values()),
        "dropped": drops,
        "lost_history": sum(1 for n, c in zip(encoded["lost_turns"], encoded["cut"], strict=True) if n or c),
        "prompts_over_max_source_length": sum(1 for n in sources if n > max_source),
        "answers_over_max_target_length": sum(1 for n in targets if n > max_target),
        "prompt_tokens_max": max(sources, default=0),
        "answer_tokens_max": max(targets, default=0),
    }


def draw(splits: list[tuple[str, list[int], list[int], int, int]]):
    """A Figure with one row per split: prompt-length and answer-length histograms, limits as lines."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3 * len(splits)), layout="constrained")
    axes = fig.subplots(len(splits), 2, squeeze=False)
    for row, (name, sources, targets, max_source, max_target) in enumerate(splits):
        for ax, values, limit, what in (
            (axes[row][0], sources, max_source, "prompt"),
            (axes[row][1], targets, max_target, "answer"),
        ):
            ax.hist(values, bins=min(40, max(1, len(set(values)))), color="tab:blue")
            ax.axvline(
                limit,
                color="tab:red",
                linestyle="--",
                label=f"max_{'source' if what == 'prompt' else 'target'}_length {limit}",
            )
            ax.set_title(f"{name}: {what} tokens")
            ax.set_xlabel("tokens")
            ax.set_ylabel("rows")
            ax.legend()
    return fig


def _splits(data_args):
    """(split, file, max_target_length, max_samples) of every file the config names, inside --data_dir as
    train / eval / predict read it."""
    d = data_args
    candidates = (
        ("train", d.data_file(d.train_file), d.max_target_length, d.max_train_samples),
        ("eval", d.data_file(d.validation_file), d.val_max_target_length, d.max_eval_samples),
        ("predict", d.data_file(d.test_file), d.val_max_target_length, d.max_predict_samples),
    )
    return [c for c in candidates if c[1] is not None]


def check_outputs(
    model_args, data_args, training_args, write_to: Path | None, config: str | None = None
) -> None:
    """Before anything is encoded: output_dir (for the PNG) passes train's checks (no model or tokenizer folder,
    writable, space), and --write_encoded never replaces, whatever the flags: the config file or a data file
    it reads, a file of the model folders, a checkpoint or prefix file; nor (without --overwrite_output_dir)
    any existing file (`ptune.io.paths.check_output_file`)."""
    from ptune.families.registry import tokenizer_files
    from ptune.io.paths import check_output_file, protected_file
    from ptune.train.checkpoint import CHECKPOINT_RE
    from ptune.train.rundir import RESULT_FILES, check_output_dir, model_folders

    folders = model_folders(model_args)
    check_output_dir(training_args.output_dir, folders)
    if write_to is None:
        return
    reads = {"the config file ptune data reads; write it elsewhere": config}
    for flag in ("train_file", "validation_file", "test_file"):
        path = getattr(data_args, flag)
        reads[f"the --{flag}: it would replace your data"] = data_args.data_file(path) if path else None
    run_files = (*RESULT_FILES, *tokenizer_files(), "config.json")
    protected = protected_file(write_to.resolve(), run_files, CHECKPOINT_RE.match)
    check_output_file(
        write_to, "--write_encoded", reads, folders, protected, training_args.overwrite_output_dir
    )


def _write_encoded(path: Path, rows: list[dict]) -> None:
    from ptune.io.files import replacing

    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _encoded_rows(split: str, encoded) -> list[dict]:
    from ptune.data.rows import prompt_length

    rows = []
    for index, (ids, labels, drop) in enumerate(
        zip(encoded["input_ids"], encoded["labels"], encoded["drop"], strict=True)
    ):
        if drop:
            continue
        row = {"split": split, "row": index, "input_ids": ids, "labels": labels}
        if split != "train":
            n = prompt_length(labels)
            row.update(prompt_ids=ids[:n], answer_ids=labels[n:-1])
        rows.append(row)
    return rows


@dataclass
class DataReportArguments:
    """`ptune data`'s own flag; the rest are ptune train's (ptune.config.args)."""

    write_encoded: str | None = field(
        default=None,
        metadata={
            "metavar": "FILE.jsonl",
            "help": "Also write every kept example (split, row, input_ids, labels; prompt_ids and answer_ids for "
            "eval/predict splits), one JSON object per line, to diff against another tool. Never replaces a data "
            "file or a model folder's file, nor (without --overwrite_output_dir true) an existing file.",
        },
    )


COMMAND = Command(
    "ptune data",
    (*ARGUMENT_CLASSES, DataReportArguments),
    "Look at the data before training: reads the tokenizer and the config (never the weights), encodes each of "
    "train_file / validation_file / test_file as ptune train / eval / predict would, prints rows kept and "
    "dropped (and why), lengths and the first examples decoded, and draws OUTPUT_DIR/data_lengths.png. It reads "
    "the same arguments as ptune train; a CONFIG (.json or .yaml), if given first, supplies values by name and "
    "flags after it override them.",
    "ptune data [CONFIG.json|CONFIG.yaml] [--name value ...] [--write_encoded FILE.jsonl]",
    config=True,
)


def main(argv: list[str]) -> int:
    """`ptune data`: report on every split of a config, draw the histograms, optionally write the ids."""
    from ptune.data.chat_data import encode_split
    from ptune.families.registry import load_tokenizer
    from ptune.io.logs import setup_logging
    from ptune.train.plot import save_png

    if "-h" in argv or "--help" in argv:
        print_help(COMMAND)
        return 0
    model_args, data_args, training_args, _, own = parse_args("data", argv, COMMAND)
    write_to = None if own.write_encoded is None else Path(own.write_encoded)
    config = argv[0] if argv and not argv[0].startswith("-") else None
    check_outputs(model_args, data_args, training_args, write_to, config)
    setup_logging(training_args)
    tok = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path, model_args.chat_format)
    report, drawn, encoded_rows = {}, [], []
    for split, path, max_target, max_samples in _splits(data_args):
        encoded = encode_split(path, tok, data_args, max_target, max_samples, split, model_args.cache_dir)
        stats = split_stats(encoded, data_args.max_source_length, max_target)
        report[split] = {"file": path, **stats}
        drawn.append(
            (split, encoded["source_len"], encoded["target_len"], data_args.max_source_length, max_target)
        )
        _print_split(tok, split, path, stats, encoded)
        encoded_rows += _encoded_rows(split, encoded)
    png = Path(training_args.output_dir) / PNG_NAME
    save_png(draw(drawn), png)
    print(f"histograms: {png}")
    if write_to is not None:
        _write_encoded(write_to, encoded_rows)
        print(f"encoded examples: {write_to} ({len(encoded_rows)} rows)")
    return 0


def _print_split(tok, split: str, path: str, stats: dict, encoded) -> None:
    print(f"== {split}: {path}")
    print(f"rows {stats['rows']}, kept {stats['kept']}")
    for reason, count in sorted(stats["dropped"].items()):
        print(f"dropped {count}: {reason}")
    print(
        f"prompts: longest {stats['prompt_tokens_max']} tokens, {stats['prompts_over_max_source_length']} over "
        f"max_source_length, {stats['lost_history']} lose history; answers: longest "
        f"{stats['answer_tokens_max']} tokens, {stats['answers_over_max_target_length']} over max_target_length"
    )
    shown = 0
    for ids, labels, drop in zip(encoded["input_ids"], encoded["labels"], encoded["drop"], strict=True):
        if drop or shown == 2:
            continue
        shown += 1
        print(f"-- example {shown} ({len(ids)} tokens, learned spans in {OPEN} {CLOSE}):")
        print(marked(tok, ids, labels))
