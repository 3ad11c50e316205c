"""`--compare_base` end to end on the tiny ChatGLM3 checkpoint: the base column is what the base model alone
answers and scores (a separate run without any prefix, row for row), the prefix column is what a run without
--compare_base gives, and the results files hold exactly the expected keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ptune.cli import main

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
COMMON = [
    "--prompt_column",
    "content",
    "--response_column",
    "summary",
    "--max_source_length",
    "48",
    "--max_target_length",
    "12",
    "--per_device_eval_batch_size",
    "4",
    "--disable_tqdm",
    "true",
    "--report_to",
    "none",
]
# What one generating pass reports (Trainer timing + ptune's scores); counted in the key sets below.
PASS_KEYS = {
    "loss",
    "model_preparation_time",
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "rouge-1",
    "rouge-2",
    "rouge-l",
    "bleu-4",
    "empty_predictions",
    "num_examples",
}
TIMING = {"model_preparation_time", "runtime", "samples_per_second", "steps_per_second"}
QUALITY = sorted(PASS_KEYS - TIMING)


@pytest.fixture(scope="module")
def prefix(tiny, tmp_path_factory):
    """A prefix checkpoint of random values (std 1, as a fresh prefix): it changes the tiny model's answers."""
    from ptune.families.registry import load_tokenizer
    from ptune.model.load import load_model
    from ptune.train.checkpoint import write_prefix_files

    folder = tmp_path_factory.mktemp("prefix")
    tok = load_tokenizer(tiny)
    torch.manual_seed(0)
    model = load_model(tiny, pre_seq_len=4, device="cpu", family=tok.family)
    write_prefix_files(model, folder, [Path(tiny) / f for f in tok.files])
    return folder


def run(verb: str, out: Path, *flags: str) -> tuple[dict, list[dict]]:
    """Run a verb into `out`; its results file and (predict) the rows of generated_predictions.txt."""
    data = ["--data_dir", str(DEMO), "--test_file" if verb == "predict" else "--validation_file", "dev.json"]
    assert main([verb, *data, "--output_dir", str(out), *COMMON, *flags]) == 0
    results = json.loads((out / f"{verb}_results.json").read_text(encoding="utf-8"))
    predictions = out / "generated_predictions.txt"
    rows = (
        [json.loads(x) for x in predictions.read_text(encoding="utf-8").splitlines()]
        if verb == "predict"
        else []
    )
    return results, rows


def test_predict_compare_base(tiny, prefix, tmp_path, capsys):
    n = ["--max_predict_samples", "6"]
    both, rows = run(
        "predict", tmp_path / "both", "--ptuning_checkpoint", str(prefix), "--compare_base", "true", *n
    )
    table = capsys.readouterr().out
    alone, prefix_rows = run("predict", tmp_path / "prefix", "--ptuning_checkpoint", str(prefix), *n)
    base, base_rows = run("predict", tmp_path / "base", "--model_name_or_path", str(tiny), *n)

    assert set(both) == {f"predict_{k}" for k in PASS_KEYS} | {f"base_predict_{k}" for k in PASS_KEYS} | {
        "predict_samples"
    }
    assert set(alone) == set(base) == {f"predict_{k}" for k in PASS_KEYS} | {"predict_samples"}
    assert [set(r) for r in rows] == [{"labels", "predict", "base_predict"}] * 6
    assert [set(r) for r in prefix_rows] == [{"labels", "predict"}] * 6
    dev = [json.loads(x)["summary"] for x in (DEMO / "dev.json").read_text(encoding="utf-8").splitlines()[:6]]
    assert [r["labels"] for r in rows] == dev  # read from --data_dir
    # Row for row: the prefix column is the prefix run's, the base column the base run's.
    assert [(r["labels"], r["predict"]) for r in rows] == [(r["labels"], r["predict"]) for r in prefix_rows]
    assert [r["base_predict"] for r in rows] == [r["predict"] for r in base_rows]
    assert any(r["predict"] != r["base_predict"] for r in rows)  # the two passes did differ
    assert {k: both[f"predict_{k}"] for k in QUALITY} == {k: alone[f"predict_{k}"] for k in QUALITY}
    assert {k: both[f"base_predict_{k}"] for k in QUALITY} == {k: base[f"predict_{k}"] for k in QUALITY}

    lines = table.splitlines()
    start = lines.index("***** predict: with the prefix vs the base model alone (--compare_base) *****")
    assert lines[start + 1].split() == ["metric", "prefix", "base", "delta"]
    shown = [line.split() for line in lines[start + 2 : start + 8]]
    order = ["loss", "rouge-1", "rouge-2", "rouge-l", "bleu-4", "empty_predictions"]
    assert [row[0] for row in shown] == order
    for name, p, b, delta in shown:
        ours, theirs = both[f"predict_{name}"], both[f"base_predict_{name}"]
        assert (p, b, delta) == (f"{ours:.4f}", f"{theirs:.4f}", f"{ours - theirs:+.4f}")


def test_eval_compare_base(tiny, prefix, tmp_path):
    flags = ["--max_eval_samples", "6", "--predict_with_generate", "true"]
    both, _ = run(
        "eval", tmp_path / "both", "--ptuning_checkpoint", str(prefix), "--compare_base", "true", *flags
    )
    alone, _ = run("eval", tmp_path / "prefix", "--ptuning_checkpoint", str(prefix), *flags)
    base, _ = run("eval", tmp_path / "base", "--model_name_or_path", str(tiny), *flags)
    # The Trainer's evaluate() also reports the (training) epoch, 0 here, under its own name.
    assert set(alone) == set(base) == {f"eval_{k}" for k in PASS_KEYS} | {"eval_samples", "epoch"}
    assert set(both) == set(alone) | {f"base_eval_{k}" for k in PASS_KEYS}
    assert {k: both[f"eval_{k}"] for k in QUALITY} == {k: alone[f"eval_{k}"] for k in QUALITY}
    assert {k: both[f"base_eval_{k}"] for k in QUALITY} == {k: base[f"eval_{k}"] for k in QUALITY}
    assert both["eval_loss"] != both["base_eval_loss"]
