"""`--compare_base`: where it is refused, how the prefix/base metrics pair up and print, and the predictions
file's base_predict field (tests/e2e/test_compare_base.py runs it end to end)."""

from __future__ import annotations

import json

import pytest

from ptune.config.parse import parse_args
from ptune.score.compare import comparison_rows, format_comparison
from ptune.score.predictions import read_predictions, write_predictions
from tests.parsing import error_of

BASE = ["--model_name_or_path", "m", "--output_dir", "out"]


def test_compare_base_is_refused_for_train_and_without_a_prefix(tmp_path):
    assert error_of(
        "train", [*BASE, "--train_file", "t.json", "--pre_seq_len", "4", "--compare_base", "true"]
    ) == (
        "--compare_base is for ptune eval and predict (it compares a trained prefix with the base model alone); "
        "remove it from the training run"
    )
    assert error_of("predict", [*BASE, "--test_file", "t.json", "--compare_base"]) == (
        "--compare_base compares a trained prefix with the base model alone: give the prefix as --ptuning_checkpoint"
    )
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"compare_base": True}), encoding="utf-8")
    assert error_of("eval", [str(config), *BASE, "--validation_file", "v.json"]) == (
        f"{config}: 'compare_base' compares a trained prefix with the base model alone: give the prefix as "
        "--ptuning_checkpoint"
    )
    model, *_ = parse_args(
        "eval", [*BASE, "--validation_file", "v.json", "--ptuning_checkpoint", "c", "--compare_base"]
    )
    assert model.compare_base is True


def test_comparison_rows_pair_each_metric_with_its_base_twin():
    metrics = {
        "predict_loss": 2.5,
        "predict_rouge-l": 30.0,
        "predict_runtime": 1.2,
        "predict_num_examples": 4,
        "predict_samples": 4,
        "base_predict_loss": 3.0,
        "base_predict_rouge-l": 35.5,
        "base_predict_runtime": 1.0,
        "base_predict_num_examples": 4,
        "predict_bleu-4": 9.0,
        "eval_loss": 1.0,
        "base_eval_loss": 2.0,
    }
    assert comparison_rows(metrics, "predict") == [("loss", 2.5, 3.0, -0.5), ("rouge-l", 30.0, 35.5, -5.5)]
    assert comparison_rows(metrics, "eval") == [("loss", 1.0, 2.0, -1.0)]
    assert format_comparison(comparison_rows(metrics, "predict"), "predict").splitlines() == [
        "***** predict: with the prefix vs the base model alone (--compare_base) *****",
        "metric       prefix        base       delta",
        "loss         2.5000      3.0000     -0.5000",
        "rouge-l     30.0000     35.5000     -5.5000",
    ]


def test_predictions_file_carries_the_base_answer_on_the_same_line(tmp_path):
    path = tmp_path / "generated_predictions.txt"
    write_predictions(path, [("红色", "蓝色"), ("b", "c")], ["绿色", ""])
    assert path.read_text(encoding="utf-8").splitlines() == [
        '{"labels": "蓝色", "predict": "红色", "base_predict": "绿色"}',
        '{"labels": "c", "predict": "b", "base_predict": ""}',
    ]
    assert read_predictions(path) == (["红色", "b"], ["蓝色", "c"])  # ptune score reads the prefix's answers
    with pytest.raises(ValueError):
        write_predictions(path, [("a", "b")], [])
