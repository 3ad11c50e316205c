"""Tests of ptune.config.args, compat and parse: THUDM's flags parse unchanged, JSON configs, one-line errors."""

import dataclasses
import json
import os
import pickle
import re
import sys
import warnings

import pytest

from ptune.config.args import (
    DataTrainingArguments,
    GenerationArguments,
    ModelArguments,
    TrainingArguments,
    argument_reference,
)
from ptune.config.parse import load_config_file, parse_args
from ptune.io.errors import UserError
from tests.parsing import BASE, error_of

# THUDM/ChatGLM2-6B ptuning/train.sh and evaluate.sh, flag for flag.
TRAIN_SH = (
    "--do_train --train_file AdvertiseGen/train.json --validation_file AdvertiseGen/dev.json "
    "--preprocessing_num_workers 10 --prompt_column content --response_column summary --overwrite_cache "
    "--model_name_or_path THUDM/chatglm2-6b --output_dir output/adgen-chatglm2-6b-pt-128-2e-2 "
    "--overwrite_output_dir --max_source_length 64 --max_target_length 128 --per_device_train_batch_size 1 "
    "--per_device_eval_batch_size 1 --gradient_accumulation_steps 16 --predict_with_generate --max_steps 3000 "
    "--logging_steps 10 --save_steps 1000 --learning_rate 2e-2 --pre_seq_len 128 --quantization_bit 4"
).split()
EVALUATE_SH = (
    "--do_predict --validation_file AdvertiseGen/dev.json --test_file AdvertiseGen/dev.json --overwrite_cache "
    "--prompt_column content --response_column summary --model_name_or_path THUDM/chatglm2-6b "
    "--ptuning_checkpoint ./output/adgen-chatglm2-6b-pt-128-2e-2/checkpoint-3000 "
    "--output_dir ./output/adgen-chatglm2-6b-pt-128-2e-2 --overwrite_output_dir --max_source_length 64 "
    "--max_target_length 64 --per_device_eval_batch_size 1 --predict_with_generate --pre_seq_len 128 "
    "--quantization_bit 4"
).split()


def write_config(tmp_path, values: dict, name: str = "cfg.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(values, ensure_ascii=False), encoding="utf-8")
    return str(path)


# ---- THUDM's scripts ------------------------------------------------------------------------------------


def test_train_sh_flags_parse_unchanged():
    model, data, training, generation = parse_args("train", TRAIN_SH)
    assert (model.model_name_or_path, model.pre_seq_len, model.quantization_bit) == (
        "THUDM/chatglm2-6b",
        128,
        4,
    )
    assert (model.prefix_projection, model.ptuning_checkpoint, model.chat_format, model.dtype) == (
        None,  # unset: false for a new prefix, the checkpoint's own setting for --ptuning_checkpoint
        None,
        None,
        "auto",
    )
    assert (data.train_file, data.validation_file, data.test_file) == (
        "AdvertiseGen/train.json",
        "AdvertiseGen/dev.json",
        None,
    )
    assert (data.prompt_column, data.response_column, data.history_column) == ("content", "summary", None)
    assert (data.overwrite_cache, data.preprocessing_num_workers) == (True, 10)
    assert (data.max_source_length, data.max_target_length, data.val_max_target_length) == (64, 128, 128)
    assert training.output_dir == "output/adgen-chatglm2-6b-pt-128-2e-2"
    assert training.overwrite_output_dir is True
    assert (training.per_device_train_batch_size, training.per_device_eval_batch_size) == (1, 1)
    assert training.gradient_accumulation_steps == 16
    assert (training.max_steps, training.logging_steps, training.save_steps) == (3000, 10, 1000)
    assert training.learning_rate == 0.02
    assert training.predict_with_generate is True
    assert (training.do_train, training.do_eval, training.do_predict) == (True, False, False)
    assert generation == GenerationArguments(max_new_tokens=128, do_sample=False, top_p=0.7, temperature=0.95)


def test_evaluate_sh_flags_parse_unchanged():
    model, data, training, generation = parse_args("predict", EVALUATE_SH)
    assert model.ptuning_checkpoint == "./output/adgen-chatglm2-6b-pt-128-2e-2/checkpoint-3000"
    assert (model.pre_seq_len, model.quantization_bit) == (128, 4)
    assert (data.validation_file, data.test_file) == ("AdvertiseGen/dev.json", "AdvertiseGen/dev.json")
    assert (data.max_source_length, data.max_target_length, data.val_max_target_length) == (64, 64, 64)
    assert generation.max_new_tokens == 64
    assert training.per_device_eval_batch_size == 1
    assert (training.do_train, training.do_eval, training.do_predict, training.predict_with_generate) == (
        False,
        False,
        True,
        True,
    )


def test_the_verb_decides_what_runs():
    _, _, training, _ = parse_args("train", [*BASE, "--do_predict", "--do_eval"])
    assert (training.do_train, training.do_eval, training.do_predict) == (True, False, False)
    _, _, training, _ = parse_args("eval", [*BASE, "--validation_file", "dev.json", "--do_train"])
    assert (training.do_train, training.do_eval, training.do_predict) == (False, True, False)
    assert training.predict_with_generate is False
    _, _, training, _ = parse_args("predict", [*BASE, "--test_file", "test.json"])
    assert (training.do_predict, training.predict_with_generate) == (True, True)


# ---- JSON configs ----------------------------------------------------------------------------------------


def test_json_config_with_flag_override(tmp_path):
    config = {
        "how_to_run": "ptune train cfg.json",
        "_comment": "ADGEN, THUDM's settings",
        "_anything": [1, 2],
        "do_train": True,
        "model_name_or_path": "THUDM/chatglm2-6b",
        "output_dir": "out",
        "train_file": "train.json",
        "learning_rate": 0.02,
        "max_steps": 3000.0,
        "pre_seq_len": 128,
        "overwrite_cache": "yes",
        "source_prefix": "-- ",
        "report_to": [],
        "lr_scheduler_kwargs": {"num_cycles": 2},
        "num_beams": None,
    }
    path = write_config(tmp_path, config)
    model, data, training, _ = parse_args("train", [path, "--learning_rate", "1e-2", "--pre_seq_len=64"])
    assert training.learning_rate == 0.01
    assert model.pre_seq_len == 64
    assert training.max_steps == 3000
    assert data.overwrite_cache is True
    assert data.source_prefix == "-- "
    assert data.num_beams is None
    assert training.report_to == []
    assert training.lr_scheduler_kwargs == {"num_cycles": 2}
    assert model.model_name_or_path == "THUDM/chatglm2-6b"


def test_load_config_file_drops_comment_keys(tmp_path):
    path = write_config(tmp_path, {"how_to_run": "x", "_c": 1, "__note": "y", "lang": None})
    assert load_config_file(path) == {"lang": None}


def test_unknown_key_in_json_suggests_the_right_one(tmp_path):
    path = write_config(tmp_path, {"model_name_or_path": "m", "learnig_rate": 0.1})
    assert error_of("train", [path]) == f"{path}: unknown key 'learnig_rate' (did you mean 'learning_rate'?)"
    path = write_config(tmp_path, {"zzzzzz": 1})
    assert error_of("train", [path]) == f"{path}: unknown key 'zzzzzz'"


def test_unknown_flag_suggests_the_right_one():
    assert error_of("train", [*BASE, "--learnig_rate", "1"]) == (
        "unknown flag '--learnig_rate' (did you mean '--learning_rate'?)"
    )
    assert error_of("train", [*BASE, "--max-source-lenght=3"]) == (
        "unknown flag '--max-source-lenght' (did you mean '--max_source_length'?)"
    )
    # Abbreviations are not accepted: a misspelling must not silently match a longer flag.
    assert error_of("train", [*BASE, "--max_target", "3"]) == (
        "unknown flag '--max_target' (did you mean '--max_target_length'?)"
    )


def test_wrong_type_names_key_and_expected_type(tmp_path):
    path = write_config(tmp_path, {"max_source_length": "64x"}, "config.json")
    assert error_of("train", [path, *BASE]) == f"{path}: 'max_source_length' must be an integer, got '64x'"
    path = write_config(tmp_path, {"max_source_length": None})
    assert error_of("train", [path, *BASE]) == f"{path}: 'max_source_length' must be an integer, got null"
    path = write_config(tmp_path, {"learning_rate": True})
    assert error_of("train", [path, *BASE]) == f"{path}: 'learning_rate' must be a number, got true"
    path = write_config(tmp_path, {"prompt_column": 3})
    assert error_of("train", [path, *BASE]) == f"{path}: 'prompt_column' must be a string, got 3"
    assert error_of("train", [*BASE, "--max_source_length", "64x"]) == (
        "--max_source_length must be an integer, got '64x'"
    )
    assert error_of("train", [*BASE, "--overwrite_cache", "maybe"]) == (
        "--overwrite_cache must be true or false, got 'maybe'"
    )
    assert error_of("train", [*BASE, "--chat_format", "chatglm5"]) == (
        "--chat_format must be one of chatglm2, chatglm3, glm4, native, got 'chatglm5'"
    )
    assert error_of("train", [*BASE, "--learning_rate"]) == "--learning_rate needs a value"


def test_not_json_reports_line_and_column(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text('{\n  "model_name_or_path": "m"\n  "output_dir": "o"\n}\n', encoding="utf-8")
    assert error_of("train", [str(path)]) == f"{path}:3:3: not valid JSON (Expecting ',' delimiter)"


@pytest.mark.parametrize(
    "text,where",
    [
        ('{\n  "model_name_or_path": "m",\n  "output_dir": "o",\n}\n', "3:20: trailing comma before '}'"),
        ('{"report_to": ["none", ]  }', "1:22: trailing comma before ']'"),
    ],
)
def test_trailing_comma_is_named_at_the_comma(tmp_path, text, where):
    # json reports the next line's "}" as "Expecting property name enclosed in double quotes".
    path = tmp_path / "cfg.json"
    path.write_text(text, encoding="utf-8")
    assert error_of("train", [str(path)]) == f"{path}:{where} (JSON allows none)"


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "-0.5"])
def test_learning_rate_must_be_finite_and_not_negative(tmp_path, value):
    # torch.optim raised "ValueError: Invalid learning rate: nan" with a traceback, after loading the model.
    shown = str(float(value))
    assert error_of("train", [*BASE, "--learning_rate", value]) == (
        f"--learning_rate must be a finite number of at least 0, got {shown}"
    )
    path = tmp_path / "cfg.json"
    path.write_text(f'{{"learning_rate": {json.dumps(float(value))}}}', encoding="utf-8")
    assert error_of("train", [str(path), *BASE]) == (
        f"{path}: 'learning_rate' must be a finite number of at least 0, got {shown}"
    )


def test_learning_rate_zero_is_allowed():
    _, _, training, _ = parse_args("train", [*BASE, "--learning_rate", "0"])
    assert training.learning_rate == 0.0


@pytest.mark.parametrize(
    "terminal,given,expected", [(False, None, True), (True, None, False), (False, "false", False)]
)
def test_trainer_progress_bars_only_on_a_terminal(monkeypatch, terminal, given, expected):
    """Bar updates written into a log file are noise: off when stderr is not a terminal, unless asked for."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    flags = [] if given is None else ["--disable_tqdm", given]
    _, _, training, _ = parse_args("train", [*BASE, *flags])
    assert training.disable_tqdm is expected


def test_config_file_problems(tmp_path):
    missing = str(tmp_path / "nope.json")
    assert error_of("train", [missing]) == f"{missing}: no such config file"
    path = write_config(tmp_path, ["model_name_or_path", "m"])
    assert (
        error_of("train", [path])
        == f'{path}: a config must be a JSON object ({{"name": value, ...}}), not ["model_name_or_path", "m"]'
    )
    duplicated = tmp_path / "dup.json"
    duplicated.write_text('{"pre_seq_len": 8, "pre_seq_len": 16}', encoding="utf-8")
    assert error_of("train", [str(duplicated)]) == f"{duplicated}: key 'pre_seq_len' appears twice"
    assert error_of("train", ["cfg.txt"]) == (
        "cfg.txt: a config file must be JSON or YAML, named *.json, *.yaml or *.yml (flags are --name value)"
    )
    assert error_of("train", [*BASE, "late.json"]) == (
        "unexpected argument 'late.json': a config file must come first, right after the verb"
    )
    assert error_of("train", [*BASE, "stray"]) == "unexpected argument 'stray' (flags are --name value)"


def test_required_arguments():
    assert error_of("train", ["--output_dir", "o", "--train_file", "t.json"]) == (
        "ptune train needs --model_name_or_path (a model folder)"
    )
    assert error_of("eval", ["--model_name_or_path", "m", "--validation_file", "d.json"]) == (
        "ptune eval needs --output_dir (where checkpoints, metrics and predictions go)"
    )
    assert (
        error_of("train", ["--model_name_or_path", "m", "--output_dir", "o"])
        == "ptune train needs --train_file"
    )
    assert error_of("eval", BASE) == "ptune eval needs --validation_file"
    assert error_of("predict", BASE) == "ptune predict needs --test_file"


# ---- dead flags ------------------------------------------------------------------------------------------


def test_dead_flags_set_are_rejected_with_the_reason(tmp_path):
    assert error_of("train", [*BASE, "--pad_to_max_length"]) == (
        "--pad_to_max_length has no effect in ptune: batches are padded to their longest sample; remove it"
    )
    assert error_of("train", [*BASE, "--lang", "zh"]) == (
        "--lang has no effect in ptune: the data's language changes nothing in how it is read or scored; remove it"
    )
    assert error_of("train", [*BASE, "--no_use_fast_tokenizer"]) == (
        "--use_fast_tokenizer false has no effect in ptune: each model family has exactly one tokenizer; remove it"
    )
    assert error_of("train", [*BASE, "--model_revision", "v1.0"]).startswith("--model_revision has no effect")
    assert error_of("train", [*BASE, "--config_name", "c"]).startswith("--config_name has no effect")
    assert error_of("train", [*BASE, "--dataset_name", "adgen"]).startswith("--dataset_name has no effect")
    assert error_of("train", [*BASE, "--forced_bos_token", "x"]).startswith(
        "--forced_bos_token has no effect"
    )
    assert error_of("train", [*BASE, "--resize_position_embeddings", "true"]).startswith(
        "--resize_position_embeddings has no effect"
    )
    # Set in a config file: the file and the key are named.
    path = write_config(tmp_path, {"pad_to_max_length": True})
    assert error_of("train", [path, *BASE]) == (
        f"{path}: 'pad_to_max_length' has no effect in ptune: batches are padded to their longest sample; remove it"
    )
    with pytest.raises(UserError, match="--pad_to_max_length has no effect"):
        DataTrainingArguments(pad_to_max_length=True)


def test_dead_flags_at_their_defaults_are_fine(tmp_path):
    path = write_config(tmp_path, {"lang": None, "dataset_name": None, "pad_to_max_length": False})
    flags = ["--use_fast_tokenizer", "true", "--model_revision", "main", "--pad_to_max_length", "false"]
    model, data, _, _ = parse_args("train", [path, *BASE, *flags, "--tokenizer_name", "tok"])
    assert (model.use_fast_tokenizer, model.model_revision, model.tokenizer_name) == (True, "main", "tok")
    assert (data.lang, data.pad_to_max_length) == (None, False)


# ---- training names removed in transformers 5 ------------------------------------------------------------


def test_removed_training_names_are_mapped():
    flags = [
        "--validation_file",
        "dev.json",
        "--evaluation_strategy",
        "steps",
        "--eval_steps",
        "50",
        "--no_cuda",
        "--per_gpu_train_batch_size",
        "4",
        "--per_gpu_eval_batch_size",
        "2",
        "--warmup_ratio",
        "0.1",
        "--group_by_length",
        "--save_safetensors",
        "true",
        "--overwrite_output_dir",
    ]
    _, _, training, _ = parse_args("train", [*BASE, *flags])
    assert training.eval_strategy.value == "steps" and training.evaluation_strategy is None
    assert training.use_cpu is True and training.no_cuda is False
    assert (training.per_device_train_batch_size, training.per_device_eval_batch_size) == (4, 2)
    assert (training.per_gpu_train_batch_size, training.per_gpu_eval_batch_size) == (None, None)
    assert training.warmup_steps == 0.1 and training.warmup_ratio is None
    assert training.train_sampling_strategy == "group_by_length" and training.group_by_length is False
    assert training.overwrite_output_dir is True
    # A copy re-runs __post_init__: the mapped values stay.
    copy = dataclasses.replace(training, learning_rate=1.0)
    assert (copy.per_device_train_batch_size, copy.warmup_steps, copy.use_cpu) == (4, 0.1, True)


def test_gradient_checkpointing_and_activation_checkpointing_are_one_setting():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FutureWarning for the THUDM-era name
        _, _, training, _ = parse_args("train", [*BASE, "--gradient_checkpointing"])
    assert (training.activation_checkpointing, training.gradient_checkpointing) == (True, True)
    _, _, training, _ = parse_args("train", [*BASE, "--activation_checkpointing"])
    assert (training.activation_checkpointing, training.gradient_checkpointing) == (True, True)
    _, _, training, _ = parse_args("train", BASE)
    assert (training.activation_checkpointing, training.gradient_checkpointing) == (False, False)
    assert error_of("train", [*BASE, "--gradient_checkpointing", "--activation_checkpointing", "false"]) == (
        "--gradient_checkpointing and --activation_checkpointing disagree: gradient_checkpointing is the old name "
        "of activation_checkpointing; keep only --activation_checkpointing"
    )


def test_old_and_new_names_together():
    # An old name at its unset value does not contradict the new one.
    _, _, training, _ = parse_args(
        "train", [*BASE, "--group_by_length", "false", "--train_sampling_strategy", "sequential"]
    )
    assert training.train_sampling_strategy == "sequential"
    assert error_of(
        "train", [*BASE, "--per_gpu_train_batch_size", "4", "--per_device_train_batch_size", "8"]
    ) == (
        "--per_gpu_train_batch_size and --per_device_train_batch_size disagree: per_gpu_train_batch_size is the "
        "old name of per_device_train_batch_size; keep only --per_device_train_batch_size"
    )
    _, _, training, _ = parse_args(
        "train", [*BASE, "--per_gpu_train_batch_size", "4", "--per_device_train_batch_size", "4"]
    )
    assert training.per_device_train_batch_size == 4


def test_removed_flags_ptune_rejects():
    assert error_of("train", [*BASE, "--no_save_safetensors"]) == (
        "--save_safetensors false has no effect in ptune: checkpoints are always written as safetensors; remove it"
    )
    assert error_of("train", [*BASE, "--include_inputs_for_metrics"]) == (
        "--include_inputs_for_metrics has no effect in ptune: ptune's metrics read only predictions and labels; "
        "remove it"
    )
    assert error_of("train", [*BASE, "--warmup_ratio", "1"]) == (
        "--warmup_ratio must be at least 0 and below 1, got 1.0 (transformers 5 reads a warmup_steps below 1 as "
        "a ratio; give a number of steps as --warmup_steps)"
    )


def test_deepspeed_is_refused_naming_fsdp(tmp_path):
    """THUDM's `--deepspeed ds_zero_3.json` is still a known flag, refused before deepspeed is imported."""
    message = error_of("train", [*BASE, "--deepspeed", "ds_zero_3.json"])
    assert message == (
        "--deepspeed: ptune does not run under DeepSpeed (its checkpoints would hold the whole base, not the "
        'prefix); to shard the frozen base over GPUs use --fsdp "full_shard auto_wrap" (scripts/fsdp_train.sh)'
    )
    config = tmp_path / "ds.json"
    config.write_text('{"deepspeed": "ds_zero_3.json"}')
    named_in_file = message.replace("--deepspeed:", "'deepspeed':", 1)
    assert error_of("train", [str(config), *BASE]) == f"{config}: {named_in_file}"


def test_fsdp_runs_training_over_several_processes_only():
    fsdp = ["--use_cpu", "true", "--fsdp", "full_shard auto_wrap"]
    assert error_of("train", [*BASE, *fsdp]) == (
        "--fsdp shards the base over several processes: launch with torchrun --nproc_per_node N (N >= 2), "
        "e.g. scripts/fsdp_train.sh, or remove --fsdp"
    )
    assert error_of("eval", [*BASE, "--validation_file", "v.json", *fsdp]) == (
        "ptune eval does not run under --fsdp: run it in one process (without torchrun), or under torchrun "
        "without --fsdp"
    )


@pytest.mark.parametrize(
    "model,training,message",
    [
        (
            {},
            {"predict_with_generate": True},
            "--predict_with_generate does not go with --fsdp: generation runs outside FSDP's forward",
        ),
        (
            {"quantization_bit": 4},
            {},
            "--quantization_bit does not go with --fsdp: bitsandbytes layers are not sharded by ptune",
        ),
        (
            {},
            {"fsdp_plugin_args": {"fsdp_version": 1}},
            "fsdp_config version 1 does not go with --fsdp: ptune shards with FSDP2 (version 2)",
        ),
        (
            {},
            {"fsdp_plugin_args": {"fsdp_version": 2, "activation_checkpointing": True}},
            "fsdp_config activation_checkpointing does not go with --fsdp: use --activation_checkpointing true",
        ),
    ],
)
def test_fsdp_refuses_what_it_does_not_shard(model, training, message):
    """Checked on the parsed arguments of a 2-process run (a real one would start a process group here)."""
    from types import SimpleNamespace

    from ptune.train.sharding import check_arguments

    training = {
        "fsdp": True,
        "world_size": 2,
        "predict_with_generate": False,
        "fsdp_plugin_args": {},
        **training,
    }
    with pytest.raises(UserError, match="^" + re.escape(message) + "$"):
        check_arguments(
            "train", SimpleNamespace(**{"quantization_bit": None, **model}), SimpleNamespace(**training)
        )
    check_arguments(
        "train", SimpleNamespace(quantization_bit=None), SimpleNamespace(**{**training, "fsdp": False})
    )


def test_logging_dir_turns_on_tensorboard(monkeypatch):
    _, _, training, _ = parse_args("train", [*BASE, "--logging_dir", "tb"])
    assert training.logging_dir == "tb" and training.report_to == ["tensorboard"]
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    training.apply_logging_dir()
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == "tb"
    assert error_of("train", [*BASE, "--logging_dir", "tb", "--report_to", "wandb"]) == (
        "--logging_dir is where TensorBoard logs go, but --report_to wandb leaves TensorBoard out: add tensorboard "
        "to --report_to or remove --logging_dir"
    )


def test_training_arguments_pickle_round_trip():
    # The Trainer saves the arguments as training_args.bin (a pickle).
    _, _, training, _ = parse_args("train", [*BASE, "--overwrite_output_dir"])
    again = pickle.loads(pickle.dumps(training))
    assert type(again) is TrainingArguments and again.overwrite_output_dir is True


# ---- contradictions and bad values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--fp16", "--bf16"], "--fp16 and --bf16 are both set: choose one"),
        (
            ["--fp16", "--dtype", "bfloat16"],
            "--fp16 contradicts --dtype bfloat16: use --dtype float16 (or auto/float32) with --fp16",
        ),
        (["--quantization_bit", "3", "--pre_seq_len", "8"], "--quantization_bit must be 4 or 8, got 3"),
        (["--quantization_bit", "4"], "--quantization_bit needs --pre_seq_len (the prefix length, e.g. 128)"),
        (["--prefix_projection"], "--prefix_projection needs --pre_seq_len (the prefix length, e.g. 128)"),
        (["--pre_seq_len", "0"], "--pre_seq_len must be at least 1, got 0"),
        (["--max_source_length", "0"], "--max_source_length must be at least 1, got 0"),
        (["--max_train_samples", "-1"], "--max_train_samples must be at least 1, got -1"),
        (["--prefix_dropout", "1"], "--prefix_dropout must be at least 0 and below 1, got 1.0"),
        (
            ["--load_best_model_at_end"],
            "--load_best_model_at_end evaluates during training but there is no --validation_file",
        ),
        (
            ["--eval_strategy", "steps"],
            "--eval_strategy evaluates during training but there is no --validation_file",
        ),
        (
            ["--evaluation_strategy", "epoch"],
            "--evaluation_strategy evaluates during training but there is no --validation_file",
        ),
        (
            ["--validation_file", "d.json", "--early_stopping_patience", "2"],
            "--early_stopping_patience needs evaluations during training: set --eval_strategy steps (or epoch)",
        ),
        (
            ["--top_p", "0.5"],
            "--top_p only applies when sampling: add --do_sample true or remove --top_p",
        ),
        (
            ["--top_p", "0.5", "--temperature", "0.3"],
            "--top_p and --temperature only apply when sampling: add --do_sample true or remove --top_p and "
            "--temperature",
        ),
        (["--do_sample", "--top_p", "0"], "--top_p must be above 0 and at most 1, got 0.0"),
        (
            ["--do_sample", "--temperature", "0"],
            "--temperature must be at least 0.01 and finite, got 0.0 (lower overflows; greedy decoding is "
            "--do_sample false)",
        ),
        (
            ["--do_sample", "true", "--temperature", "1e-300"],
            "--temperature must be at least 0.01 and finite, got 1e-300 (lower overflows; greedy decoding is "
            "--do_sample false)",
        ),
        (
            ["--do_sample", "true", "--temperature", "inf"],
            "--temperature must be at least 0.01 and finite, got inf (lower overflows; greedy decoding is "
            "--do_sample false)",
        ),
        (["--do_sample", "--top_p", "nan"], "--top_p must be above 0 and at most 1, got nan"),
        (["--max_new_tokens", "0"], "--max_new_tokens must be at least 1, got 0"),
        (
            ["--num_beams", "2"],
            "--num_beams 2: ptune generates greedily, or samples with --do_sample true; beam search is not "
            "implemented",
        ),
        (
            ["--generation_num_beams", "4"],
            "--generation_num_beams 4: ptune generates greedily, or samples with --do_sample true; beam search "
            "is not implemented",
        ),
        (
            ["--generation_max_length", "100"],
            "--generation_max_length is not read by ptune: limit answers with --max_new_tokens",
        ),
        (
            ["--ignore_pad_token_for_loss", "false"],
            "--ignore_pad_token_for_loss false has no effect in ptune: batches are padded to their longest "
            "sample and padding never enters the loss; remove it",
        ),
        (
            ["--chat_format", "chatglm2", "--trust_remote_code"],
            "--trust_remote_code is only for native models, but --chat_format is chatglm2: ptune runs ChatGLM2/3 "
            "and GLM-4 with its own code; remove --trust_remote_code",
        ),
        (
            ["--prompt_column", "content", "--response_column", "content"],
            "--prompt_column and --response_column are both 'content'",
        ),
    ],
)
def test_contradictions(flags, message):
    assert error_of("train", [*BASE, *flags]) == message


def test_predict_refuses_predict_with_generate_false():
    argv = [*BASE, "--test_file", "t.json", "--predict_with_generate", "false"]
    assert error_of("predict", argv) == "ptune predict always generates: remove --predict_with_generate false"


def test_transformers_own_checks_become_one_line_user_errors():
    message = error_of("train", [*BASE, "--validation_file", "d.json", "--load_best_model_at_end"])
    assert message.startswith("--load_best_model_at_end requires the save and eval strategy to match")


def test_sampling_and_early_stopping_when_consistent():
    flags = ["--validation_file", "d.json", "--do_sample", "--top_p", "0.8", "--temperature", "0.5"]
    flags += ["--eval_strategy", "steps", "--early_stopping_patience", "3", "--max_new_tokens", "32"]
    _, _, training, generation = parse_args("train", [*BASE, *flags])
    assert generation == GenerationArguments(max_new_tokens=32, do_sample=True, top_p=0.8, temperature=0.5)
    assert (training.early_stopping_patience, training.metric_for_best_model) == (3, "loss")


# ---- help and reference ----------------------------------------------------------------------------------


def test_data_and_bench_help_are_their_own(capsys):
    # issue 16: `ptune data --help` printed train's usage without --write_encoded; bench's said nothing of --serve
    from ptune.cli import main

    assert main(["data", "cfg-that-is-not-read.json", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "usage: ptune data [CONFIG.json|CONFIG.yaml] [--name value ...] [--write_encoded FILE.jsonl]"
    )
    assert "--write_encoded FILE.jsonl" in out and "--pre_seq_len" in out and "ptune train [" not in out
    with pytest.raises(SystemExit) as caught:
        main(["bench", "--help"])
    assert caught.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "--serve benchmark ptune serve instead (streaming clients); its own flags: ptune bench --serve --help"
        in out
    )


def test_help_prints_everything_and_exits_0(capsys):
    with pytest.raises(SystemExit) as caught:
        parse_args("train", ["cfg-that-is-not-read.json", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ptune train [CONFIG.json|CONFIG.yaml] [--name value ...]")
    for flag in (
        "--pre_seq_len",
        "--chat_format",
        "--overwrite_output_dir",
        "--learning_rate",
        "--max_new_tokens",
    ):
        assert flag in out


def test_argument_reference_covers_every_ptune_field():
    rows = argument_reference()
    assert all(len(row) == 4 and all(isinstance(x, str) and x for x in row) for row in rows)
    names = [(group, name) for group, name, _, _ in rows]
    expected = [("model", f.name) for f in dataclasses.fields(ModelArguments)]
    expected += [("data", f.name) for f in dataclasses.fields(DataTrainingArguments)]
    expected += [("generation", f.name) for f in dataclasses.fields(GenerationArguments)]
    assert names[: len(expected)] == expected
    training = [name for group, name in names if group == "training"]
    assert training == [
        "overwrite_output_dir",
        "logging_dir",
        "early_stopping_patience",
        "evaluation_strategy",
        "no_cuda",
        "per_gpu_train_batch_size",
        "per_gpu_eval_batch_size",
        "warmup_ratio",
        "group_by_length",
        "save_safetensors",
        "include_inputs_for_metrics",
    ]
    by_name = {name: default for _, name, default, _ in rows}
    assert (by_name["model_name_or_path"], by_name["max_source_length"], by_name["model_revision"]) == (
        "(required)",
        "1024",
        '"main"',
    )
    assert (by_name["pre_seq_len"], by_name["use_fast_tokenizer"], by_name["prefix_dropout"]) == (
        "null",
        "true",
        "0.1",
    )


def test_dataclasses_validate_when_built_directly():
    with pytest.raises(
        UserError, match="--dtype must be one of auto, bfloat16, float16, float32, got 'half'"
    ):
        ModelArguments(model_name_or_path="m", dtype="half")
    with pytest.raises(UserError, match="--model_revision has no effect"):
        ModelArguments(model_name_or_path="m", model_revision="v2")
    assert ModelArguments(model_name_or_path="m").attn_implementation == "sdpa"
    assert DataTrainingArguments(max_target_length=32).val_max_target_length == 32


@pytest.mark.parametrize("value", ["100000000", "1e26"])
def test_a_prefix_no_model_holds_is_refused_before_any_tensor(tmp_path, value):
    # issue 16: --pre_seq_len 1e8 (a YAML or JSON config's 1e8 or 1e26 too) went on to allocate the prefix.
    shown = int(float(value))
    if value.isdigit():
        assert error_of("train", [*BASE, "--pre_seq_len", value]) == (
            f"--pre_seq_len {shown} is more prefix tokens than any model holds (at most 131072; THUDM's "
            "recipes use 128)"
        )
    path = tmp_path / "cfg.json"
    path.write_text(f'{{"pre_seq_len": {value}}}', encoding="utf-8")
    assert error_of("train", [str(path), *BASE]) == (
        f"{path}: 'pre_seq_len' {shown} is more prefix tokens than any model holds (at most 131072; THUDM's "
        "recipes use 128)"
    )
    yaml = tmp_path / "cfg.yaml"
    yaml.write_text(f"model_name_or_path: m\npre_seq_len: {float(value):.1e}\n", encoding="utf-8")
    assert error_of("train", [str(yaml), "--output_dir", "out", "--train_file", "train.json"]) == (
        f"{yaml}:2: 'pre_seq_len' {shown} is more prefix tokens than any model holds (at most 131072; THUDM's "
        "recipes use 128)"
    )


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--per_device_train_batch_size", "0", "--per_device_train_batch_size must be at least 1, got 0"),
        ("--per_device_eval_batch_size", "0", "--per_device_eval_batch_size must be at least 1, got 0"),
        ("--per_gpu_train_batch_size", "0", "--per_device_train_batch_size must be at least 1, got 0"),
        ("--seed", "-1", "--seed must be from 0 to 4294967295, got -1"),
        ("--seed", "4294967296", "--seed must be from 0 to 4294967295, got 4294967296"),
        ("--data_seed", "-3", "--data_seed must be from 0 to 4294967295, got -3"),
    ],
)
def test_batch_sizes_and_seeds_out_of_range(flag, value, message):
    # a batch of 0 divided by zero in the dataloader, seed -1 failed in numpy's seed(): both with a traceback
    assert error_of("train", [*BASE, flag, value]) == message
