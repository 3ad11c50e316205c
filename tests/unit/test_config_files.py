"""YAML configs (ptune.config.files): the same keys and rules as JSON, YAML's own traps, and THUDM's
finetune_demo YAML (ChatGLM3 finetune_hf.py, GLM-4 finetune.py) mapped onto ptune's arguments or refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptune.cli import main
from ptune.config.parse import load_config_file, parse_args
from tests.parsing import BASE, error_of

# THUDM's own files, copied unchanged (source and commit on each file's first line).
THUDM = Path(__file__).resolve().parents[1] / "fixtures" / "thudm_finetune_demo"


def yaml_file(tmp_path, text: str, name: str = "cfg.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---- plain YAML configs ---------------------------------------------------------------------------------


def test_yaml_config_with_flag_override(tmp_path):
    path = yaml_file(
        tmp_path,
        "how_to_run: ptune train cfg.yaml\n_note: a comment key\n# a YAML comment\n"
        "model_name_or_path: THUDM/chatglm2-6b\noutput_dir: out\ntrain_file: train.json\n"
        "learning_rate: 2e-2\nmax_steps: 3000\npre_seq_len: 128\nreport_to: []\n"
        "lr_scheduler_kwargs: {num_cycles: 2}\nnum_beams: null\nval_max_target_length:\n",
        "cfg.yml",
    )
    model, data, training, _ = parse_args("train", [path, "--pre_seq_len=64"])
    assert (training.learning_rate, training.max_steps, model.pre_seq_len) == (0.02, 3000, 64)
    assert (training.report_to, training.lr_scheduler_kwargs) == ([], {"num_cycles": 2})
    assert (data.num_beams, data.val_max_target_length) == (None, 128)  # null and empty: unset
    assert load_config_file(path)["learning_rate"] == 0.02


def test_yaml_1_1_traps_read_as_yaml_1_2(tmp_path):
    """PyYAML alone reads YAML 1.1: `2e-2` a string, `no` false, `010` eight, a date a date. ptune reads the
    YAML 1.2 core schema (what THUDM's ruamel.yaml reads), and converts by each field's type."""
    import yaml

    assert yaml.safe_load("learning_rate: 2e-2\neval_strategy: no\nsave_steps: 010") == {
        "learning_rate": "2e-2",
        "eval_strategy": False,
        "save_steps": 8,
    }  # the trap, in PyYAML's own reading
    path = yaml_file(
        tmp_path,
        "learning_rate: 2e-2\neval_strategy: no\nsave_steps: 010\noverwrite_cache: yes\n"
        "output_dir: 2024-01-01\nmax_grad_norm: .5\nwarmup_steps: 1e1\nseed: 0x10\n",
    )
    assert load_config_file(path) == {
        "learning_rate": 0.02,
        "eval_strategy": "no",
        "save_steps": 10,
        "overwrite_cache": "yes",
        "output_dir": "2024-01-01",
        "max_grad_norm": 0.5,
        "warmup_steps": 10.0,
        "seed": 16,
    }
    _, data, training, _ = parse_args("train", [path, "--model_name_or_path", "m", "--train_file", "t.json"])
    assert (training.learning_rate, training.eval_strategy, training.save_steps) == (0.02, "no", 10)
    assert (data.overwrite_cache, training.output_dir, training.warmup_steps, training.seed) == (
        True,
        "2024-01-01",
        10,
        16,
    )


def test_a_string_field_given_a_yaml_number_says_to_quote_it(tmp_path):
    path = yaml_file(tmp_path, "prompt_column: 1.10\n")
    assert error_of("train", [path, *BASE]) == (
        f"{path}:1: 'prompt_column' must be a string, got 1.1 (YAML reads it as a number or boolean: quote it)"
    )
    path = yaml_file(tmp_path, "prompt_column: '1.10'\n")
    assert parse_args("train", [path, *BASE])[1].prompt_column == "1.10"


def test_yaml_errors_name_file_line_and_column(tmp_path):
    path = yaml_file(tmp_path, "model_name_or_path: m\noutput_dir: [out\ntrain_file: t.json\n")
    assert (
        error_of("train", [path])
        == f"{path}:3:11: not valid YAML (while parsing a flow sequence, expected ',' or ']', but got ':')"
    )
    path = yaml_file(tmp_path, "model_name_or_path: m\n\tpre_seq_len: 8\n")
    assert error_of("train", [path]) == (
        f"{path}:2:1: not valid YAML (while scanning for the next token, found character '\\t' that cannot start any token)"
    )
    path = yaml_file(tmp_path, "pre_seq_len: 8\n---\npre_seq_len: 9\n")
    assert error_of("train", [path]) == (
        f"{path}:2:1: not valid YAML (expected a single document in the stream, but found another document)"
    )
    path = yaml_file(tmp_path, "pre_seq_len: !!python/object:os.system 8\n")
    assert error_of("train", [path]).startswith(
        f"{path}:1:14: not valid YAML (could not determine a constructor"
    )


def test_yaml_error_is_one_line_and_exit_2(tmp_path, capsys):
    path = yaml_file(tmp_path, "a: b: c\n")
    assert main(["train", path]) == 2
    assert capsys.readouterr().err == (
        f"ptune train: error: {path}:1:5: not valid YAML (mapping values are not allowed here)\n"
    )


def test_duplicate_yaml_keys_are_refused_naming_both_lines(tmp_path):
    path = yaml_file(tmp_path, "pre_seq_len: 8\nlearning_rate: 0.1\npre_seq_len: 16\n")
    assert error_of("train", [path]) == (
        f"{path}:3: key 'pre_seq_len' appears twice (first on line 1); YAML readers would silently keep the "
        "last value"
    )
    path = yaml_file(tmp_path, "training_args:\n  max_steps: 3\n  max_steps: 4\n")
    assert error_of("train", [path]) == (
        f"{path}:3: key 'training_args.max_steps' appears twice (first on line 2); YAML readers would "
        "silently keep the last value"
    )


@pytest.mark.parametrize(
    "text,shown",
    [
        ("- pre_seq_len\n- 8\n", '["pre_seq_len", 8]'),
        ("just text\n", "'just text'"),
        ("", "null"),
        ("# only a comment\n", "null"),
    ],
)
def test_the_top_level_must_be_a_mapping(tmp_path, text, shown):
    path = yaml_file(tmp_path, text)
    assert error_of("train", [path]) == (
        f"{path}: a config must be a YAML mapping (name: value lines), not {shown}"
    )


def test_unknown_keys_and_wrong_types_name_the_line(tmp_path):
    path = yaml_file(tmp_path, "model_name_or_path: m\n\nlearnig_rate: 0.1\n")
    assert (
        error_of("train", [path]) == f"{path}:3: unknown key 'learnig_rate' (did you mean 'learning_rate'?)"
    )
    path = yaml_file(tmp_path, "max_source_length: 64x\n")
    assert error_of("train", [path, *BASE]) == f"{path}:1: 'max_source_length' must be an integer, got '64x'"
    path = yaml_file(tmp_path, "pre_seq_len: 0\n")
    assert error_of("train", [path, *BASE]) == f"{path}:1: 'pre_seq_len' must be at least 1, got 0"
    path = yaml_file(tmp_path, "stamp: !!binary aGVsbG8=\n")
    assert error_of("train", [path, *BASE]) == (
        f"{path}:1: 'stamp' holds a bytes; write a plain value (string, number, true/false, null, list or mapping)"
    )


def test_config_file_suffixes(tmp_path):
    assert error_of("train", ["cfg.toml"]) == (
        "cfg.toml: a config file must be JSON or YAML, named *.json, *.yaml or *.yml (flags are --name value)"
    )
    assert error_of("train", [*BASE, "late.yaml"]) == (
        "unexpected argument 'late.yaml': a config file must come first, right after the verb"
    )
    assert error_of("train", [str(tmp_path / "no.yaml")]) == f"{tmp_path / 'no.yaml'}: no such config file"


# ---- THUDM finetune_demo YAML -----------------------------------------------------------------------------


def test_chatglm3_finetune_demo_ptuning_v2_yaml_maps_exactly():
    argv = [
        str(THUDM / "chatglm3_ptuning_v2.yaml"),
        "--model_name_or_path",
        "m",
        "--data_dir",
        "data/AdvertiseGen",
    ]
    model, data, training, generation = parse_args("train", argv)
    assert (model.pre_seq_len, model.prefix_projection) == (128, None)  # peft_config.num_virtual_tokens
    assert (data.data_dir, data.train_file, data.validation_file, data.test_file) == (
        "data/AdvertiseGen",
        "train.json",
        "dev.json",
        "dev.json",
    )
    assert [data.data_file(f) for f in (data.train_file, data.test_file)] == [
        "data/AdvertiseGen/train.json",
        "data/AdvertiseGen/dev.json",
    ]
    assert (data.preprocessing_num_workers, data.max_source_length, data.max_target_length) == (16, 256, 512)
    assert training.learning_rate == 5e-5  # `5e-5`: a float in YAML 1.2 (ruamel, THUDM), a string in PyYAML
    assert (training.output_dir, training.max_steps, training.per_device_train_batch_size) == (
        "./output",
        3000,
        4,
    )
    assert (training.dataloader_num_workers, training.remove_unused_columns) == (16, False)
    assert (training.save_strategy, training.save_steps, training.log_level) == ("steps", 500, "info")
    assert (training.logging_strategy, training.logging_steps, training.per_device_eval_batch_size) == (
        "steps",
        10,
        16,
    )
    # evaluation_strategy, the transformers 4 name, maps onto eval_strategy (ptune.config.compat)
    assert (training.eval_strategy, training.evaluation_strategy, training.eval_steps) == ("steps", None, 500)
    assert (training.predict_with_generate, training.use_cpu) == (True, False)
    assert (generation.max_new_tokens, generation.do_sample) == (
        512,
        False,
    )  # generation_config.max_new_tokens


def test_glm4_finetune_demo_ptuning_v2_yaml_maps_exactly():
    argv = [str(THUDM / "glm4_ptuning_v2.yaml"), "--model_name_or_path", "m", "--data_dir", "/data"]
    model, data, training, generation = parse_args("train", argv)
    assert model.pre_seq_len == 512
    assert (data.data_file(data.train_file), data.data_file(data.validation_file)) == (
        "/data/train.jsonl",
        "/data/dev.jsonl",
    )
    assert (data.preprocessing_num_workers, data.max_source_length, data.max_target_length) == (1, 512, 512)
    assert (training.learning_rate, training.eval_strategy, training.eval_steps) == (5e-4, "steps", 500)
    assert generation.max_new_tokens == 512


def test_finetune_demo_data_paths_need_the_data_dir():
    path = str(THUDM / "chatglm3_ptuning_v2.yaml")
    assert error_of("train", [path, "--model_name_or_path", "m"]) == (
        f"{path}:3: 'data_config.train_file' (train.json) is inside the DATA_DIR of THUDM's "
        "`finetune_hf.py DATA_DIR MODEL_DIR CONFIG` (GLM-4: finetune.py): pass --data_dir DATA_DIR"
    )
    # Files given as flags replace data_config's: no DATA_DIR is needed then.
    files = ["--train_file", "t.json", "--validation_file", "v.json", "--test_file", "v.json"]
    _, data, _, _ = parse_args("train", [path, "--model_name_or_path", "m", *files])
    assert (data.data_dir, data.data_file(data.train_file)) == (None, "t.json")


def test_finetune_demo_lora_and_full_fine_tuning_are_refused():
    lora, sft = str(THUDM / "chatglm3_lora.yaml"), str(THUDM / "chatglm3_sft.yaml")
    assert error_of("train", [lora, "--model_name_or_path", "m"]) == (
        f"{lora}:43: 'peft_config.peft_type' is LoRA: ptune does P-Tuning v2 only (peft_type: PREFIX_TUNING)"
    )
    assert error_of("train", [sft, "--model_name_or_path", "m"]) == (
        f"{sft}: a THUDM finetune_demo config without peft_config is full fine-tuning (sft.yaml); ptune does "
        "P-Tuning v2 only: add peft_config with peft_type PREFIX_TUNING and num_virtual_tokens"
    )


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "peft_config:\n  peft_type: PREFIX_TUNING\n  task_type: SEQ_2_SEQ_LM\n  num_virtual_tokens: 8\n",
            "3: 'peft_config.task_type' is 'SEQ_2_SEQ_LM': ptune tunes decoder-only models (task_type: CAUSAL_LM)",
        ),
        (
            "peft_config:\n  peft_type: PREFIX_TUNING\n",
            "1: 'peft_config' needs num_virtual_tokens (the prefix length, ptune's pre_seq_len)",
        ),
        (
            "peft_config:\n  num_virtual_tokens: 8\n  encoder_hidden_size: 64\n",
            "3: 'peft_config.encoder_hidden_size' is not a prefix-tuning setting ptune has (peft_type, task_type, "
            "num_virtual_tokens, prefix_projection, num_attention_heads, token_dim, num_layers, "
            "num_transformer_submodules)",
        ),
        (
            "peft_config:\n  num_virtual_tokens: abc\n",
            "2: 'peft_config.num_virtual_tokens' must be an integer, got 'abc'",
        ),
        (
            "pre_seq_len: 64\npeft_config:\n  num_virtual_tokens: 8\n",
            "3: 'peft_config.num_virtual_tokens' sets pre_seq_len, which 'pre_seq_len' (line 1) already sets; "
            "keep one",
        ),
        (
            "peft_config: {num_virtual_tokens: 8}\ntraining_args:\n  learnig_rate: 0.1\n",
            "3: 'training_args.learnig_rate' is not a training argument (did you mean 'learning_rate'?)",
        ),
        (
            "peft_config: {num_virtual_tokens: 8}\ntraining_args:\n  generation_config:\n    top_k: 5\n",
            "4: 'training_args.generation_config.top_k' is not a generation setting ptune has (max_new_tokens, "
            "do_sample, top_p, temperature, num_beams)",
        ),
        (
            "peft_config: {num_virtual_tokens: 8}\ndata_config:\n  eval_file: dev.json\n",
            "3: 'data_config.eval_file' is not a data_config key (train_file, val_file, test_file, num_proc)",
        ),
        (
            "peft_config: {num_virtual_tokens: 8}\nmax_input_length: 0\n",
            "2: 'max_input_length' must be at least 1, got 0",
        ),
    ],
)
def test_finetune_demo_settings_ptune_lacks_are_refused_naming_the_line(tmp_path, text, message):
    path = yaml_file(tmp_path, text)
    assert error_of("train", [path, *BASE]) == f"{path}:{message}"


def test_finetune_demo_layout_in_a_json_config(tmp_path):
    """The same mapping for a JSON config in THUDM's layout; its errors name the file (JSON has no key lines)."""
    path = tmp_path / "cfg.json"
    path.write_text('{"peft_config": {"num_virtual_tokens": 8}, "max_output_length": 32}', encoding="utf-8")
    model, data, _, _ = parse_args("train", [str(path), *BASE])
    assert (model.pre_seq_len, data.max_target_length) == (8, 32)
    path.write_text('{"peft_config": {"peft_type": "LORA"}}', encoding="utf-8")
    assert error_of("train", [str(path), *BASE]) == (
        f"{path}: 'peft_config.peft_type' is LoRA: ptune does P-Tuning v2 only (peft_type: PREFIX_TUNING)"
    )


def test_finetune_demo_layout_beside_ptune_keys(tmp_path):
    """ptune's own keys may sit beside THUDM's sections (THUDM gave the model and DATA_DIR on the command line)."""
    path = yaml_file(
        tmp_path,
        "model_name_or_path: /models/glm-4-9b-chat\ndata_dir: /data/adgen\nprompt_column: content\n"
        "response_column: summary\nmax_input_length: 64\npeft_config:\n  peft_type: PREFIX_TUNING\n"
        "  num_virtual_tokens: 16\n  num_attention_heads: 2\n  token_dim: 256\n"
        "data_config: {train_file: train.json}\ntraining_args: {output_dir: out, learning_rate: 2e-2}\n",
    )
    model, data, training, _ = parse_args("train", [path])
    assert (model.model_name_or_path, model.pre_seq_len, data.max_source_length) == (
        "/models/glm-4-9b-chat",
        16,
        64,
    )
    assert (data.data_file(data.train_file), data.prompt_column, training.learning_rate) == (
        "/data/adgen/train.json",
        "content",
        0.02,
    )


def test_finetune_demo_combine_false_is_what_ptune_does(tmp_path, caplog):
    """combine: false (THUDM: every assistant turn learned) is ptune's behaviour: accepted without a word;
    combine: true is accepted with a warning (tests/e2e/test_chat_data.py runs GLM-4's yaml that sets it)."""
    with caplog.at_level("WARNING", logger="ptune"):
        model, _, _, _ = parse_args(
            "train", [yaml_file(tmp_path, "peft_config: {num_virtual_tokens: 8}\ncombine: false\n"), *BASE]
        )
    assert model.pre_seq_len == 8 and caplog.records == []
