"""Every shipped config (JSON and YAML) parses for every verb, says first how to run it, and the scripts stay
thin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptune.config.files import read_config
from ptune.config.parse import parse_args

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (REPO / "configs").iterdir() if p.suffix in (".json", ".yaml", ".yml"))


def test_there_are_the_recipes_the_docs_promise():
    names = {c.name for c in CONFIGS}
    assert {
        "demo.json",
        "chatglm2-6b-adgen.json",
        "chatglm3-6b-adgen.json",
        "glm-4-9b-chat-adgen.json",
        "chatglm3-6b-chat.json",
        "chatglm3-6b-adgen.yaml",
        "chatglm3-6b-conversations.json",
        "glm-4-9b-chat-messages.json",
    } <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("verb", ["train", "eval", "predict"])
def test_config_parses(config, verb):
    assert next(iter(read_config(str(config)).lines or json.loads(config.read_text(encoding="utf-8")))) == (
        "how_to_run"
    )
    model, data, training, _ = parse_args(verb, [str(config)])
    assert model.pre_seq_len
    assert data.data_format in ("conversations", "messages") or (data.prompt_column and data.response_column)
    assert (training.do_train, training.do_predict) == (verb == "train", verb == "predict")
    # transformers turns do_eval on by itself when an eval_strategy is set (the demo evaluates while training)
    assert training.do_eval == (verb == "eval" or training.eval_strategy != "no")


def test_yaml_recipe_is_the_json_recipe():
    """configs/chatglm3-6b-adgen.yaml and .json give every argument the same value, for every verb."""
    for verb in ("train", "eval", "predict"):
        from_yaml = parse_args(verb, [str(REPO / "configs" / "chatglm3-6b-adgen.yaml")])
        from_json = parse_args(verb, [str(REPO / "configs" / "chatglm3-6b-adgen.json")])
        values = [
            [a.to_dict() if hasattr(a, "to_dict") else vars(a) for a in args]
            for args in (from_yaml, from_json)
        ]
        assert values[0] == values[1]  # TrainingArguments compares by to_dict (it holds a device object)


@pytest.mark.parametrize(
    "name", ["demo.json", "chatglm3-6b-conversations.json", "glm-4-9b-chat-messages.json"]
)
def test_config_points_at_shipped_data(name):
    data = json.loads((REPO / "configs" / name).read_text(encoding="utf-8"))
    for key in ("train_file", "validation_file", "test_file"):
        assert (REPO / data[key]).is_file()


@pytest.mark.parametrize(
    ("script", "verb", "added"),
    [
        ("train.sh", "train", []),
        ("evaluate.sh", "eval", ["--predict_with_generate", "true"]),  # as THUDM's
        ("predict.sh", "predict", []),
    ],
)
def test_launch_scripts_run_torchrun_with_num_gpus_and_pass_every_flag_through(script, verb, added, tmp_path):
    """Run the script with a stand-in `torchrun` first on PATH that records its arguments: the script must
    launch NUM_GPUS processes of `ptune VERB` with the user's config and flags, adding no hyperparameter."""
    import os
    import subprocess

    fake = tmp_path / "torchrun"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$TORCHRUN_ARGS"\n')
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "NUM_GPUS": "3",
        "TORCHRUN_ARGS": str(tmp_path / "args"),
    }
    user = ["configs/chatglm2-6b-adgen.json", "--model_name_or_path", "/models/x y"]
    subprocess.run(["bash", str(REPO / "scripts" / script), *user], env=env, check=True, cwd=REPO)
    args = (tmp_path / "args").read_text(encoding="utf-8").splitlines()
    assert args == ["--standalone", "--nnodes=1", "--nproc-per-node=3", "-m", "ptune", verb, *user, *added]


def test_readme_config_reference_is_current():
    import importlib.util

    spec = importlib.util.spec_from_file_location("argument_table", REPO / "scripts" / "argument_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.argument_table() in (REPO / "README.md").read_text(encoding="utf-8")
