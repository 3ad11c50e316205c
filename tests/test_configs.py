"""Every shipped config parses for every verb, says first how to run it, and the scripts stay thin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptune.config import parse_args

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.json"))


def test_there_are_the_recipes_the_docs_promise():
    names = {c.name for c in CONFIGS}
    assert {"demo.json", "chatglm2-6b-adgen.json", "chatglm3-6b-adgen.json", "glm-4-9b-chat-adgen.json",
            "chatglm3-6b-chat.json"} <= names  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("verb", ["train", "eval", "predict"])
def test_config_parses(config, verb):
    first_key = next(iter(json.loads(config.read_text(encoding="utf-8"))))
    assert first_key == "how_to_run"
    model, data, training, _ = parse_args(verb, [str(config)])
    assert model.pre_seq_len and data.prompt_column and data.response_column
    assert (training.do_train, training.do_predict) == (verb == "train", verb == "predict")
    # transformers turns do_eval on by itself when an eval_strategy is set (the demo evaluates while training)
    assert training.do_eval == (verb == "eval" or training.eval_strategy != "no")


def test_demo_config_points_at_shipped_data():
    data = json.loads((REPO / "configs" / "demo.json").read_text(encoding="utf-8"))
    for key in ("train_file", "validation_file", "test_file"):
        assert (REPO / data[key]).is_file()


@pytest.mark.parametrize("script", ["train.sh", "evaluate.sh", "predict.sh"])
def test_launch_scripts_use_torchrun_and_hold_no_hyperparameters(script):
    text = (REPO / "scripts" / script).read_text(encoding="utf-8")
    assert "torchrun" in text and "NUM_GPUS" in text and "-m ptune" in text
    assert "--learning_rate" not in text and "--pre_seq_len" not in text


def test_readme_config_reference_is_current():
    import importlib.util

    spec = importlib.util.spec_from_file_location("argument_table", REPO / "scripts" / "argument_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.argument_table() in (REPO / "README.md").read_text(encoding="utf-8")
