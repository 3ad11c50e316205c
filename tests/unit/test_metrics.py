"""ptune.score.metrics against the golden values of THUDM's ChatGLM2 ptuning/main.py.

Goldens from docs/reference (jieba 0.42.1, nltk 3.10.4, rouge-chinese 1.0.3). BLEU-4 for the ADGEN pair is
24.319969..., i.e. exactly 24.32 once rounded to 4 decimals, so it is asserted with `==` like the others.
"""

import logging

import numpy as np
import pytest

from ptune.io.errors import UserError
from ptune.score.metrics import METRIC_KEYS, compute_metrics, score_pair

ADGEN_PRED = "这是一款简约的牛仔外套，破洞设计。"
ADGEN_LABEL = "简约而不简单的牛仔外套，白色的衣身十分百搭。"
ADGEN_SCORES = {"rouge-1": 52.1739, "rouge-2": 27.2727, "rouge-l": 50.0, "bleu-4": 24.32}
NIHAO_SCORES = {"rouge-1": 100.0, "rouge-2": 0.0, "rouge-l": 100.0, "bleu-4": 59.4604}
ZERO_SCORES = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}


def test_golden_adgen_pair():
    assert score_pair(ADGEN_PRED, ADGEN_LABEL) == ADGEN_SCORES


def test_golden_identical_two_characters():
    # One jieba word on each side: ROUGE-2 has no bigram; BLEU-4 comes from method3 smoothing.
    assert score_pair("你好", "你好") == NIHAO_SCORES


def test_golden_disjoint():
    assert score_pair("abc", "xyz") == ZERO_SCORES


def test_keys_and_float_values():
    scores = score_pair("abc", "xyz")
    assert tuple(scores) == METRIC_KEYS
    assert all(type(v) is float for v in scores.values())


def test_inputs_are_stripped():
    assert score_pair(" \n你好\t ", "\u3000你好\n") == NIHAO_SCORES


@pytest.mark.parametrize("prediction", ["", "   ", "\n\t", "\u3000"])
def test_empty_prediction_scores_zero(prediction):
    assert score_pair(prediction, ADGEN_LABEL) == ZERO_SCORES


def test_empty_reference_scores_zero():
    assert score_pair(ADGEN_PRED, "  ") == ZERO_SCORES


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "\u3000"])
def test_empty_means_what_rouge_chinese_rejects(text):
    # The pairs scored 0 without asking the libraries are exactly those THUDM crashes on.
    from rouge_chinese import Rouge

    with pytest.raises(ValueError, match="Hypothesis is empty"):
        Rouge().get_scores(text, "简约")
    with pytest.raises(ValueError, match="Reference is empty"):
        Rouge().get_scores("简约", text)


def test_punctuation_only_is_scored_by_the_libraries_not_special_cased():
    # Not "empty": rouge_chinese scores it, and identical punctuation is a match like any other word.
    assert score_pair("。。。", "简约") == ZERO_SCORES
    assert score_pair("，", "，") == {"rouge-1": 100.0, "rouge-2": 0.0, "rouge-l": 100.0, "bleu-4": 35.3553}
    assert compute_metrics(["。。。"], ["简约"])["empty_predictions"] == 0


def test_interior_whitespace_follows_thudm_joining():
    # jieba yields the whitespace as tokens, THUDM joins them with spaces, rouge_chinese cuts the newlines
    # into sentences: the blank middle line becomes an empty word, so ROUGE-1 is 2*(2/3*1)/(2/3+1) = 80.
    assert score_pair("a\n \nb", "a b") == {
        "rouge-1": 80.0,
        "rouge-2": 0.0,
        "rouge-l": 80.0,
        "bleu-4": 14.0585,
    }


def test_compute_metrics_means_and_counts():
    predictions = [ADGEN_PRED, "你好", "abc", "", "   "]
    labels = [ADGEN_LABEL, "你好", "xyz", "你好", ADGEN_LABEL]
    result = compute_metrics(predictions, labels)
    expected_means = {
        key: round(float(np.mean([ADGEN_SCORES[key], NIHAO_SCORES[key], 0.0, 0.0, 0.0])), 4)
        for key in METRIC_KEYS
    }
    assert result == {**expected_means, "empty_predictions": 2, "num_examples": 5}
    assert (result["rouge-1"], result["bleu-4"]) == (30.4348, 16.7561)


def test_means_are_rounded_like_the_scores():
    # ROUGE-1 per pair: 52.1739, 100.0, 0.0, whose np.mean is 50.72463333333334 (printed as such before).
    result = compute_metrics([ADGEN_PRED, "你好", "abc"], [ADGEN_LABEL, "你好", "xyz"])
    assert {key: result[key] for key in METRIC_KEYS} == {
        "rouge-1": 50.7246,
        "rouge-2": 9.0909,
        "rouge-l": 50.0,
        "bleu-4": 27.9268,
    }


def test_compute_metrics_single_pair_equals_score_pair():
    assert compute_metrics([ADGEN_PRED], [ADGEN_LABEL]) == {
        **ADGEN_SCORES,
        "empty_predictions": 0,
        "num_examples": 1,
    }


def test_compute_metrics_no_examples():
    assert compute_metrics([], []) == {**ZERO_SCORES, "empty_predictions": 0, "num_examples": 0}


def test_compute_metrics_length_mismatch():
    with pytest.raises(UserError, match=r"3 predictions but 2 labels"):
        compute_metrics(["a", "b", "c"], ["a", "b"])


def test_jieba_is_quiet():
    score_pair("你好", "你好")
    assert logging.getLogger("jieba").level == logging.WARNING
