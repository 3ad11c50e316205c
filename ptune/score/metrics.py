"""ROUGE-1/2/L and BLEU-4 exactly as THUDM's ChatGLM2-6B `ptuning/main.py` computes them.

Per example (prediction and label already decoded, special tokens skipped):

- ROUGE-1/2/L: `rouge_chinese.Rouge().get_scores(hyp, ref)` F-scores, where `hyp`/`ref` are the jieba words
  of the text joined by single spaces (`" ".join(list(jieba.cut(text)))`);
- BLEU-4: nltk `sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)` on
  characters;
- each score ×100 and `round(score, 4)`; the reported figure is the `np.mean` of the rounded values, itself
  rounded to 4 decimals (THUDM printed the mean unrounded: at most 5e-5 apart).

Where ptune differs from THUDM: both texts are stripped first, and a pair that THUDM crashes on
(`ValueError: Hypothesis is empty.` / `Reference is empty.` from rouge_chinese) scores 0.0 on every metric
instead; empty predictions are counted. ChatGLM3/GLM-4 demos compute BLEU on jieba words without the ×100;
ptune keeps the ChatGLM2 convention above.

Cost: jieba loads its dictionary on first use (~1.5 s, then a cache file in the temp dir). rouge_chinese's
ROUGE-L fills a Python dict with one entry per (hyp word, ref word) pair, so it is quadratic in length
(about 4 s for a 2,000-character pair, 30 s at 5,000); keep generation lengths bounded. We call each
library exactly once per pair and add no extra passes over the text.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from ptune.io.errors import UserError

METRIC_KEYS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")


@functools.cache
def _backends() -> tuple[Any, Any, Any, Any]:
    """Import jieba, rouge_chinese and nltk on first use: `(jieba, Rouge(), sentence_bleu, smoothing)`.

    Lazy because nltk alone takes ~0.5 s to import, which every CLI start would otherwise pay.
    jieba announces its dictionary load on stderr at DEBUG/INFO level; WARNING keeps real problems (a cache
    file it cannot write is logged as an error and is harmless) and silences the chatter.
    """
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)
    # One Rouge and one smoothing object serve every pair: both are stateless after construction, so this
    # matches THUDM's fresh `Rouge()` / `SmoothingFunction()` per example without the construction cost.
    return jieba, Rouge(), sentence_bleu, SmoothingFunction().method3


def _zero_scores() -> dict[str, float]:
    return dict.fromkeys(METRIC_KEYS, 0.0)


def _rouge_text(jieba: Any, text: str) -> str:
    """The string THUDM hands to rouge_chinese: jieba's words joined by single spaces.

    jieba keeps every character, whitespace included, as tokens (`"a b"` -> `["a", " ", "b"]`), so the join
    can hold runs of spaces and newlines. That is intended: rouge_chinese cuts sentences at newlines and
    `。！？?`, then re-splits each sentence with `str.split()`, so runs of spaces collapse exactly as in THUDM.
    """
    return " ".join(jieba.cut(text))


def score_pair(prediction: str, label: str) -> dict[str, float]:
    """Scores of one prediction against its reference, keys `rouge-1`, `rouge-2`, `rouge-l`, `bleu-4`.

    Values are ×100 and rounded to 4 decimals, as THUDM reports them. Both texts are stripped first.
    If either is then empty, every score is 0.0: that is exactly the set of pairs on which rouge_chinese
    raises "Hypothesis is empty" / "Reference is empty" (it drops a text only when nothing but whitespace
    is left, using the same whitespace as `str.strip`). Anything else, punctuation-only text included,
    goes to the libraries unchanged and gets whatever they score (punctuation vs words: 0).
    """
    prediction = prediction.strip()
    label = label.strip()
    if not prediction or not label:
        return _zero_scores()

    jieba, rouge, sentence_bleu, smoothing = _backends()
    rouge_scores = rouge.get_scores(_rouge_text(jieba, prediction), _rouge_text(jieba, label))[0]
    scores = {key: round(rouge_scores[key]["f"] * 100, 4) for key in ("rouge-1", "rouge-2", "rouge-l")}
    # nltk returns the int 0 when no unigram matches; float() keeps the value type uniform.
    bleu = sentence_bleu([list(label)], list(prediction), smoothing_function=smoothing)
    scores["bleu-4"] = float(round(bleu * 100, 4))
    return scores


def compute_metrics(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """Mean of each per-example score over all pairs, plus `empty_predictions` and `num_examples`.

    The mean is `np.mean` of the rounded per-example values (THUDM's arithmetic) rounded to 4 decimals, with
    empty pairs counted as 0.0 rather than crashing. `empty_predictions` counts predictions that are empty after
    stripping. No examples gives 0.0 means and counts 0.

    Raises `UserError` when the two lists differ in length (the pairing would be meaningless).
    """
    if len(predictions) != len(labels):
        raise UserError(
            f"metrics: got {len(predictions)} predictions but {len(labels)} labels; "
            "each prediction needs exactly one reference"
        )
    per_key: dict[str, list[float]] = {key: [] for key in METRIC_KEYS}
    empty_predictions = 0
    for prediction, label in zip(predictions, labels, strict=True):
        if not prediction.strip():
            empty_predictions += 1
        for key, value in score_pair(prediction, label).items():
            per_key[key].append(value)

    # Rounded again: the mean of 4-decimal values prints with float noise (37.100229999999996).
    result: dict[str, float] = {
        key: round(float(np.mean(np.asarray(values, dtype=np.float64))), 4) if values else 0.0
        for key, values in per_key.items()
    }
    result["empty_predictions"] = empty_predictions
    result["num_examples"] = len(predictions)
    return result
