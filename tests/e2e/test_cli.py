"""`ptune train / eval / predict / score` end to end on a tiny checkpoint, through `ptune.cli.main`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from ptune.cli import main
from ptune.score.metrics import compute_metrics
from tests.parsing import DEMO_COLUMNS, demo_train_argv

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
COMMON = [  # every verb here reads the demo data
    *DEMO_COLUMNS,
    "--max_source_length",
    "48",
    "--disable_tqdm",
    "true",
    "--report_to",
    "none",
]


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = demo_train_argv(
        tiny,
        out,
        "--overwrite_output_dir",
        "--max_target_length",
        "32",
        "--per_device_train_batch_size",
        "8",
        "--max_steps",
        "6",
        "--save_steps",
        "4",
        "--learning_rate",
        "2e-2",
        "--pre_seq_len",
        "4",
        "--logging_steps",
        "2",
        *COMMON,
    )
    assert main(argv) == 0
    return out


def test_train_writes_prefix_only_checkpoints(trained, tiny):
    top = {p.name for p in trained.iterdir()}
    assert {
        "checkpoint-4",
        "checkpoint-6",
        "model.safetensors",
        "prefix_config.json",
        "trainer_state.json",
        "train_results.json",
        "all_results.json",
        "tokenizer.model",
        "tokenizer_config.json",
    } <= top
    for ckpt in ("checkpoint-4", "checkpoint-6"):  # a final checkpoint even though 6 is not a save step
        files = {p.name for p in (trained / ckpt).iterdir()}
        assert files == {
            "model.safetensors",
            "prefix_config.json",
            "optimizer.pt",
            "scheduler.pt",
            "rng_state.pth",
            "trainer_state.json",
            "tokenizer.model",
            "tokenizer_config.json",
        }
        weights = load_file(str(trained / ckpt / "model.safetensors"))
        assert set(weights) == {"transformer.prefix_encoder.embedding.weight"}
        assert weights["transformer.prefix_encoder.embedding.weight"].shape == (4, 2 * 2 * 2 * 16)
    config = json.loads((trained / "prefix_config.json").read_text())
    assert config["pre_seq_len"] == 4 and config["prefix_projection"] is False
    assert config["family"] == "chatglm3" and config["base_model_name_or_path"] == str(tiny.resolve())
    biggest = max(p.stat().st_size for p in trained.rglob("*") if p.is_file())
    assert biggest < min(p.stat().st_size for p in tiny.glob("pytorch_model-*.bin"))  # no base weights copied


def test_predict_writes_predictions_and_score_reproduces_metrics(trained, tiny, capsys):
    argv = [
        "predict",
        "--model_name_or_path",
        str(tiny),
        "--ptuning_checkpoint",
        str(trained),
        "--test_file",
        str(DEMO / "dev.json"),
        "--output_dir",
        str(trained),
        "--max_target_length",
        "16",
        "--per_device_eval_batch_size",
        "16",
        "--max_predict_samples",
        "20",
        *COMMON,
    ]
    assert main(argv) == 0
    lines = (trained / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20
    rows = [json.loads(line) for line in lines]
    assert all(set(r) == {"labels", "predict"} for r in rows)
    dev = [
        json.loads(x)["summary"] for x in (DEMO / "dev.json").read_text(encoding="utf-8").splitlines()[:20]
    ]
    assert lines[0].startswith('{"labels": "' + dev[0] + '", "predict": "')  # UTF-8, not escaped
    assert [r["labels"] for r in rows] == dev
    results = json.loads((trained / "predict_results.json").read_text())
    expected = compute_metrics([r["predict"] for r in rows], dev)
    for key in ("rouge-1", "rouge-2", "rouge-l", "bleu-4"):
        assert results[f"predict_{key}"] == expected[key]
    assert capsys.readouterr().out.splitlines()[-1] == (  # issue 16: where the results are, in one line
        f"ptune predict: predictions: {trained / 'generated_predictions.txt'}  "
        f"metrics: {trained / 'predict_results.json'}"
    )
    assert main(["score", str(trained / "generated_predictions.txt")]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    # A second predict refuses to overwrite the predictions file.
    assert main(argv) == 2


def test_eval_reports_loss_and_generation_metrics(trained, tiny, tmp_path):
    """The values, not just the keys: eval_loss equals a plain cross entropy over the answer tokens of the
    whole split (one batch of 40), and the ROUGE/BLEU equal those of `ptune predict`'s predictions file for
    the same checkpoint and settings, scored by `compute_metrics`."""
    import torch
    import torch.nn.functional as F

    from ptune.data.collate import Collator
    from ptune.data.splits import build_split
    from ptune.families.registry import load_tokenizer
    from ptune.model.load import load_model

    ckpt, out = trained / "checkpoint-6", tmp_path / "eval"
    same = [
        "--model_name_or_path",
        str(tiny),
        "--ptuning_checkpoint",
        str(ckpt),
        "--max_target_length",
        "16",
        "--per_device_eval_batch_size",
        "40",
        *COMMON,
    ]
    argv = [
        "eval",
        "--validation_file",
        str(DEMO / "dev.json"),
        "--output_dir",
        str(out),
        "--predict_with_generate",
        "true",
        *same,
    ]
    assert main(argv) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results) >= {"eval_loss", "eval_rouge-1", "eval_rouge-2", "eval_rouge-l", "eval_bleu-4"}
    assert results["eval_samples"] == 40

    tok = load_tokenizer(tiny)
    model = load_model(tiny, ptuning_checkpoint=ckpt, device="cpu", family=tok.family)
    data_args = SimpleNamespace(
        max_source_length=48,
        source_prefix="",
        preprocessing_num_workers=None,
        overwrite_cache=False,
        prompt_column="content",
        response_column="summary",
        history_column=None,
        data_format=None,
    )
    rows = build_split(DEMO / "dev.json", tok, data_args, 16, None, "eval")
    batch = Collator(tok.pad_token_id)(list(rows))
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"]).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten())
    assert results["eval_loss"] == pytest.approx(loss.item(), rel=1e-5)

    predicted = tmp_path / "predict"
    argv = ["predict", "--test_file", str(DEMO / "dev.json"), "--output_dir", str(predicted), *same]
    assert main(argv) == 0
    from ptune.score.predictions import read_predictions

    scores = compute_metrics(*read_predictions(predicted / "generated_predictions.txt"))
    assert {k: results[f"eval_{k}"] for k in scores} == scores


def test_refuses_output_dir_holding_a_run(trained, tiny, capsys):
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    argv = demo_train_argv(
        tiny,
        trained,
        "--pre_seq_len",
        "4",
        "--max_steps",
        "1",
        *COMMON,
    )
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a run" in err and "\n" not in err
    assert {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()} == before


def test_bad_model_folder_and_unknown_verb(tmp_path, capsys):
    assert main(["frobnicate"]) == 2
    argv = demo_train_argv(
        tmp_path / "missing",
        tmp_path / "o",
        "--pre_seq_len",
        "4",
        *COMMON,
    )
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err


def test_thudm_train_and_evaluate_scripts_run_unchanged(tiny, tmp_path):
    """THUDM's train.sh / evaluate.sh arguments with only the model and data paths swapped (and the step
    counts cut at the end, so CI stays fast), including --quantization_bit 4 (bitsandbytes NF4 on the CPU)."""
    data = tmp_path / "AdvertiseGen"
    data.mkdir()
    shutil.copy(DEMO / "train.json", data / "train.json")
    shutil.copy(DEMO / "dev.json", data / "dev.json")
    out = tmp_path / "output" / "adgen-chatglm2-6b-pt-128-2e-2"
    train_sh = (
        f"--do_train --train_file {data}/train.json --validation_file {data}/dev.json "
        "--preprocessing_num_workers 10 --prompt_column content --response_column summary --overwrite_cache "
        f"--model_name_or_path {tiny} --output_dir {out} --overwrite_output_dir --max_source_length 64 "
        "--max_target_length 128 --per_device_train_batch_size 1 --per_device_eval_batch_size 1 "
        "--gradient_accumulation_steps 16 --predict_with_generate --max_steps 3000 --logging_steps 10 "
        "--save_steps 1000 --learning_rate 2e-2 --pre_seq_len 128 --quantization_bit 4"
    ).split()
    assert (
        main(["train", *train_sh, "--max_steps", "2", "--save_steps", "1000", "--disable_tqdm", "true"]) == 0
    )
    assert (out / "checkpoint-2" / "model.safetensors").is_file()
    evaluate_sh = (
        f"--do_predict --validation_file {data}/dev.json --test_file {data}/dev.json --overwrite_cache "
        f"--prompt_column content --response_column summary --model_name_or_path {tiny} "
        f"--ptuning_checkpoint {out}/checkpoint-2 --output_dir {out} --overwrite_output_dir "
        "--max_source_length 64 --max_target_length 64 --per_device_eval_batch_size 1 --predict_with_generate "
        "--pre_seq_len 128 --quantization_bit 4"
    ).split()
    assert (
        main(
            [
                "predict",
                *evaluate_sh,
                "--max_predict_samples",
                "3",
                "--max_new_tokens",
                "8",
                "--disable_tqdm",
                "true",
            ]
        )
        == 0
    )
    assert len((out / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()) == 3


def test_nan_loss_stops_with_one_line(tiny, tmp_path, capsys):
    argv = demo_train_argv(
        tiny,
        tmp_path / "o",
        "--pre_seq_len",
        "4",
        "--max_steps",
        "6",
        "--logging_steps",
        "2",
        "--learning_rate",
        "1e38",
        *COMMON,
    )
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ptune train: error: training loss became nan by step 2")


def test_score_rejects_malformed_lines(tmp_path, capsys):
    bad = tmp_path / "preds.txt"
    bad.write_text('{"labels": "a", "predict": "a"}\n{"labels": "a" "predict": "b"}\n', encoding="utf-8")
    assert main(["score", str(bad)]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    bad.write_text('{"labels": "a"}\n', encoding="utf-8")
    assert main(["score", str(bad)]) == 2
    assert "expected an object with string 'labels' and 'predict'" in capsys.readouterr().err


def test_eval_and_predict_accept_the_training_config(tiny, tmp_path):
    """The demo flow: `ptune predict configs/demo.json` reuses a config whose evaluation schedule and
    load_best_model_at_end only concern training."""
    cfg = json.loads((REPO / "configs" / "demo.json").read_text(encoding="utf-8"))
    cfg.update(
        model_name_or_path=str(tiny),
        output_dir=str(tmp_path),
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        report_to="none",
    )
    cfg = {k: (str(REPO / v) if k.endswith("_file") else v) for k, v in cfg.items()}
    path = tmp_path / "demo.json"
    path.write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    # No checkpoint here: an untrained prefix must be asked for (--random_prefix), else eval/predict refuse.
    small = [
        "--pre_seq_len",
        "4",
        "--random_prefix",
        "true",
        "--max_new_tokens",
        "4",
        "--disable_tqdm",
        "true",
    ]
    assert main(["eval", str(path), "--max_eval_samples", "4", *small]) == 0
    assert main(["predict", str(path), "--max_predict_samples", "4", *small]) == 0
    assert len((tmp_path / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()) == 4
