"""PrefixTrainer details that the end-to-end runs cannot pin down reliably."""

from __future__ import annotations

from transformers import Seq2SeqTrainingArguments

from ptune.model import load_model
from ptune.trainer import PrefixTrainer


def test_only_the_writer_rank_saves(tiny, tmp_path, monkeypatch):
    """The Trainer calls `_save` on every rank; a non-writer rank must write nothing (two ranks writing the
    same files into the staging folder race each other)."""
    model = load_model(tiny, dtype="float32", device="cpu", pre_seq_len=2)
    model.source.family = "chatglm3"
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    trainer = PrefixTrainer(model=model, args=args, tokenizer_files=[tiny / "tokenizer.model"])
    monkeypatch.setattr(type(args), "should_save", property(lambda self: False))
    trainer._save(str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(type(args), "should_save", property(lambda self: True))
    trainer._save(str(tmp_path / "b"))
    assert {p.name for p in (tmp_path / "b").iterdir()} == {
        "model.safetensors",
        "prefix_config.json",
        "tokenizer.model",
    }
