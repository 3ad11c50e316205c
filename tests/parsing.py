"""Test support for the argument parser: a minimal training command line, and the one-line error a command
line gets."""

from __future__ import annotations

import pytest

from ptune.config.parse import parse_args
from ptune.io.errors import UserError

BASE = ["--model_name_or_path", "m", "--output_dir", "out", "--train_file", "train.json"]


def error_of(verb: str, argv: list[str]) -> str:
    """The UserError `parse_args(verb, argv)` raises, checked to be one line."""
    with pytest.raises(UserError) as caught:
        parse_args(verb, argv)
    message = str(caught.value)
    assert "\n" not in message
    return message
