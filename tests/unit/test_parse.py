"""One bad-input path for every verb: a mistaken command line is one line `ptune VERB: error: ...`, exit 2.

Every verb reads its command line through ptune.config.parser: train/eval/predict (and data, plan) with a config
and errors worded by name (ptune.config.parse.parse_args; tests/unit/test_config.py covers its rules), chat,
export, plot, score, bench and serve with argparse's wording. None of them prints argparse's usage dump.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ptune.cli import main
from ptune.config.parser import Parser
from ptune.io.errors import UserError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "ckpt", "--format", "bogus"], "argument --format: invalid choice: 'bogus'"),
        (["export"], "the following arguments are required: checkpoint"),
        (["plot"], "the following arguments are required: output_dir"),
        (["plot", "run", "--bogus"], "unrecognized arguments: --bogus"),
        (["score", "a.txt", "b.txt"], "unrecognized arguments: b.txt"),
        (["score"], "the following arguments are required: file"),
        (
            ["bench", "--micro_batch", "x"],
            "argument --micro_batch: expected comma-separated integers, got 'x'",
        ),
        (["bench", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
        (["bench", "--shape", "huge"], "argument --shape: invalid choice: 'huge'"),
        (["chat", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_2(capsys, argv, message):
    verb = argv[0]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"ptune {verb}: error: {message}"), captured.err
    assert captured.err.endswith(f" (see ptune {verb} --help)\n") and captured.err.count("\n") == 1
    assert "usage:" not in captured.err


def test_train_eval_predict_errors_have_the_same_form(capsys):
    for verb in ("train", "eval", "predict"):
        assert main([verb, "--bogus_flag", "1"]) == 2
        assert capsys.readouterr().err == f"ptune {verb}: error: unknown flag '--bogus_flag'\n"


def test_bench_run_errors_have_the_same_form(capsys):
    # cuda:1 is refused either way: without CUDA (not available) or with it (the Trainer uses cuda:0 only).
    assert main(["bench", "--device", "cuda:1", "--no_train", "--no_predict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ptune bench: error: --device cuda:1: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("verb", ["chat", "export", "plot", "score", "bench"])
def test_help_is_still_help(capsys, verb):
    with pytest.raises(SystemExit) as caught:
        main([verb, "--help"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: ptune {verb} ")


def test_parser_error_is_one_user_error_line():
    parser = Parser(prog="ptune demo")
    parser.add_argument("--n", type=int)
    with pytest.raises(UserError) as caught:
        parser.parse_args(["--n", "x"])
    assert str(caught.value) == "argument --n: invalid int value: 'x' (see ptune demo --help)"
    with pytest.raises(UserError) as caught:
        parser.error("two\n  lines")
    assert str(caught.value) == "two lines (see ptune demo --help)"


@pytest.mark.slow  # a Python process of its own (imports torch and transformers)
def test_bench_script_errors_like_the_verb():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--micro_batch", "x"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "ptune bench: error: argument --micro_batch: expected comma-separated integers, got 'x' "
        "(see ptune bench --help)\n"
    )
