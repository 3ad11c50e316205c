"""Test support for the argument parser: a minimal training command line (to parse, and to run on the demo
data), and the one-line error a command line gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptune.config.parse import parse_args
from ptune.io.errors import UserError

BASE = ["--model_name_or_path", "m", "--output_dir", "out", "--train_file", "train.json"]
DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


# The demo data's columns (data/demo/*.json rows are {"content": ..., "summary": ...}, THUDM's ADGEN names).
DEMO_COLUMNS = ("--prompt_column", "content", "--response_column", "summary")


def demo_train_argv(model: Path, out: Path, *flags: str) -> list[str]:
    """`ptune train` argv of `model` on the demo data (data/demo/train.json, its columns) into `out`, then
    `flags` (a flag given again wins): the minimal training command line, runnable."""
    return [
        "train",
        "--model_name_or_path",
        str(model),
        "--train_file",
        str(DEMO / "train.json"),
        "--output_dir",
        str(out),
        *DEMO_COLUMNS,
        *flags,
    ]


def error_of(verb: str, argv: list[str]) -> str:
    """The UserError `parse_args(verb, argv)` raises, checked to be one line."""
    with pytest.raises(UserError) as caught:
        parse_args(verb, argv)
    message = str(caught.value)
    assert "\n" not in message
    return message
