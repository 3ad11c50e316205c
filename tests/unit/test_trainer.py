"""PrefixTrainer details that the end-to-end runs cannot pin down reliably."""

from __future__ import annotations

import json
import math

from transformers import Seq2SeqTrainingArguments, TrainerState

from ptune.model.load import load_model
from ptune.train.finish import run_loss
from ptune.train.trainer import PrefixTrainer


def test_only_the_writer_rank_saves(tiny, tmp_path, monkeypatch):
    """The Trainer calls `save_model` on every rank; a non-writer rank must write nothing (two ranks writing
    the same files into the staging folder race each other)."""
    model = load_model(tiny, dtype="float32", device="cpu", pre_seq_len=2)
    model.source.family = "chatglm3"
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    trainer = PrefixTrainer(model=model, args=args, tokenizer_files=[tiny / "tokenizer.model"])
    monkeypatch.setattr(type(args), "should_save", property(lambda self: False))
    trainer.save_model(str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(type(args), "should_save", property(lambda self: True))
    trainer.save_model(str(tmp_path / "b"))
    assert {p.name for p in (tmp_path / "b").iterdir()} == {
        "model.safetensors",
        "prefix_config.json",
        "tokenizer.model",
    }


def strict_json(path):
    """The JSON in `path`, refusing NaN / Infinity as every strict reader (JSON.parse, jq, Go) does."""

    def refuse(constant):
        raise AssertionError(f"{path}: bare {constant} is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_results_and_state_with_non_finite_values_are_strict_json(tiny, tmp_path):
    """A NaN predict_loss or an infinite value in log_history is written as null (the stock Trainer writes a
    bare NaN, which no strict JSON reader accepts); the Trainer reads the state back."""
    model = load_model(tiny, dtype="float32", device="cpu", pre_seq_len=2)
    out = tmp_path / "run"
    out.mkdir()
    args = Seq2SeqTrainingArguments(output_dir=str(out), report_to=[], use_cpu=True)
    trainer = PrefixTrainer(model=model, args=args, tokenizer_files=[])
    trainer.save_metrics("train", {"train_loss": 1.5})
    trainer.save_metrics(
        "predict", {"predict_loss": math.nan, "predict_bleu-4": -math.inf, "predict_samples": 2}
    )
    assert strict_json(out / "predict_results.json") == {
        "predict_loss": None,
        "predict_bleu-4": None,
        "predict_samples": 2,
    }
    assert strict_json(out / "all_results.json") == {
        "train_loss": 1.5,
        "predict_loss": None,
        "predict_bleu-4": None,
        "predict_samples": 2,
    }
    trainer.state.log_history = [{"loss": math.nan, "grad_norm": math.inf, "step": 1}]
    trainer.save_state()
    assert strict_json(out / "trainer_state.json")["log_history"] == [
        {"loss": None, "grad_norm": None, "step": 1}
    ]
    assert TrainerState.load_from_json(str(out / "trainer_state.json")).log_history[0]["loss"] is None


def test_run_loss_weighs_each_logged_mean_by_its_steps():
    history = [{"loss": 2.0, "step": 4}, {"eval_loss": 9.0, "step": 4}, {"loss": 1.0, "step": 6}]
    assert run_loss(history, 6) == (2.0 * 4 + 1.0 * 2) / 6
    assert run_loss(history, 8) is None  # steps 7 and 8 were never logged
    assert run_loss([{"eval_loss": 1.0, "step": 2}], 2) is None
