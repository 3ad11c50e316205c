"""What a user sees: one error line, no tracebacks, no progress-bar updates in a log file (a real
`python -m ptune` process whose stderr is a pipe, as when redirected into a log), rounded scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ptune.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"


def _ptune(tmp_path, *argv):
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    env.pop("HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    return subprocess.run(
        [sys.executable, "-m", "ptune", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def _train(tiny, tmp_path, train_file, *extra):
    return _ptune(
        tmp_path,
        "train",
        "--model_name_or_path",
        str(tiny),
        "--train_file",
        str(train_file),
        "--output_dir",
        str(tmp_path / "out"),
        "--prompt_column",
        "content",
        "--response_column",
        "summary",
        "--pre_seq_len",
        "4",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        *extra,
    )


def test_no_progress_bars_in_a_log_file(tiny, tmp_path):
    """The demo wrote 17.8 KB of bar updates into its log: Trainer's tqdm and three datasets bars per file."""
    run = _train(
        tiny,
        tmp_path,
        DEMO / "train.json",
        "--validation_file",
        str(DEMO / "dev.json"),
        "--max_steps",
        "2",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--max_source_length",
        "32",
        "--max_target_length",
        "16",
    )
    assert run.returncode == 0, run.stderr
    for noise in ("\r", "it/s]", "examples/s", "Generating train split", "Tokenizing"):
        assert noise not in run.stderr and noise not in run.stdout, noise
    assert "'loss': " in run.stdout and "'eval_loss': " in run.stdout  # the logs themselves are still printed
    # each with its step (issue 16: none had one), and a closing line saying where the results are
    assert "step 1/2 {'loss': " in run.stdout and "step 2/2 {'eval_loss': " in run.stdout
    out = tmp_path / "out"
    assert run.stdout.splitlines()[-1] == (
        f"ptune train: prefix: {out / 'model.safetensors'}  curves: {out / 'training_curves.png'}  "
        f"metrics: {out / 'train_results.json'}"
    )


def test_a_bad_data_file_is_one_line(tiny, tmp_path):
    """datasets printed its own ERROR line (about "row 5") and a progress bar above ptune's line."""
    bad = tmp_path / "train.json"
    bad.write_text(
        '{"content": "a", "summary": "b"}\n' * 5 + '{"content": "a", "summary": }\n', encoding="utf-8"
    )
    run = _train(tiny, tmp_path, bad, "--max_steps", "1")
    assert run.returncode == 2
    assert run.stderr == f"ptune train: error: {bad}:6:29: invalid JSON (Expecting value)\n"


def test_score_a_file_that_is_not_utf8(tmp_path, capsys):
    # A UnicodeDecodeError traceback before.
    preds = tmp_path / "preds.txt"
    preds.write_bytes(b'{"labels": "a", "predict": "a"}\n{"labels": "\xe4\xbd", "predict": "b"}\n')
    assert main(["score", str(preds)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"ptune score: error: {preds}:2:13: not UTF-8 (byte 0xe4); save the file as UTF-8\n"


def test_score_prints_rounded_means(tmp_path, capsys):
    # Per pair ROUGE-1 52.1739, 100 and 0: the mean printed as 50.72463333333334 before.
    rows = [
        {
            "labels": "简约而不简单的牛仔外套，白色的衣身十分百搭。",
            "predict": "这是一款简约的牛仔外套，破洞设计。",
        },
        {"labels": "你好", "predict": "你好"},
        {"labels": "xyz", "predict": "abc"},
    ]
    preds = tmp_path / "preds.txt"
    preds.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert main(["score", str(preds)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == {
        "rouge-1": 50.7246,
        "rouge-2": 9.0909,
        "rouge-l": 50.0,
        "bleu-4": 27.9268,
        "empty_predictions": 0,
        "num_examples": 3,
    }
    assert '"rouge-1": 50.7246,' in out
