"""Every verb reads its command line through ptune.config.parser: `ptune VERB --help` lists exactly the flags of
the verb's argument dataclasses (a flag no dataclass declares cannot exist, and none is left out), the verbs that
add flags to a run's config (data, plan) read them as fields, and a flag several verbs share is checked alike."""

from __future__ import annotations

import dataclasses
import importlib
import re

import pytest

from ptune.cli import MODULE_VERBS, SCORE, VERBS, main
from ptune.config.parse import run_command
from ptune.config.parser import OWN_METADATA, Command, parse_command
from ptune.io.errors import UserError


def commands() -> dict[str, Command]:
    """Every verb's Command: train/eval/predict's, score's, and the COMMAND of each verb module in cli's table."""
    found = {verb: run_command(verb) for verb in ("train", "eval", "predict")}
    found["score"] = SCORE
    for verb, (module, _) in MODULE_VERBS.items():
        found[verb] = importlib.import_module(module).COMMAND
    found["bench --serve"] = importlib.import_module("ptune.bench.serve").COMMAND
    return found


def declared(command: Command) -> set[str]:
    """The option strings (and positional names) the dataclasses declare, by HfArgumentParser's rule: --name,
    --name-with-hyphens, and --no_name / --no-name for a boolean that defaults to true."""
    names = {"-h", "--help"}
    for cls in command.classes:
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f.metadata.get("positional"):
                names.add(f.name)
                continue
            names.add(f"--{f.name}")
            if any(key in f.metadata for key in OWN_METADATA):
                continue
            names.update(f"--{alias}" for alias in f.metadata.get("aliases", ()))
            if "_" in f.name:
                names.add(f"--{f.name.replace('_', '-')}")
            if f.default is True:
                names.update({f"--no_{f.name}", f"--no-{f.name.replace('_', '-')}"})
    return names


def listed(out: str) -> set[str]:
    """The option strings and positional names an argparse help lists (its two-space indented lines)."""
    names = set()
    for line in out.splitlines():
        match = re.match(r"^  (\S.*?)(?:\s{2,}.*)?$", line)
        if not match:
            continue
        for part in match.group(1).split(", "):
            names.add(part.split(" ")[0])
    return names


def test_every_verb_has_a_command():
    assert {v.split()[0] for v in commands()} == set(VERBS) | set(MODULE_VERBS)


@pytest.mark.parametrize("verb", ["train", "eval", "predict", "score", *MODULE_VERBS, "bench --serve"])
def test_help_lists_exactly_the_dataclass_flags(capsys, verb):
    command = commands()[verb]
    assert command.prog == f"ptune {verb}"
    try:
        assert main([*verb.split(), "--help"]) == 0  # ptune data returns; the others exit
    except SystemExit as stop:
        assert stop.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ptune {verb} ")
    assert listed(out) == declared(command)


def test_data_help_shows_write_encoded_and_bench_help_points_to_serve(capsys):
    found = commands()
    assert "--write_encoded" in declared(found["data"])
    assert "--url" in declared(found["bench --serve"]) and "--serve" in declared(found["bench"])


# ---- verbs that read a run's config plus their own flags -------------------------------------------------


def test_data_reads_the_split_the_config_names_and_its_own_flag(tmp_path):
    from ptune.config.parse import parse_args
    from ptune.data.report import COMMAND as DATA

    config = tmp_path / "cfg.json"
    config.write_text('{"write_encoded": "ids.jsonl", "test_file": "t.json"}', encoding="utf-8")
    model, data, training, _, own = parse_args(
        "data", [str(config), "--model_name_or_path", "m", "--output_dir", "out"], DATA
    )
    assert (own.write_encoded, data.test_file) == ("ids.jsonl", "t.json")
    # the first of train / eval / predict whose file is given: predict, which always generates
    assert (training.do_train, training.do_eval, training.do_predict) == (False, False, True)
    assert training.predict_with_generate is True
    argv = ["--model_name_or_path", "m", "--output_dir", "out", "--write_encoded", "x.jsonl"]
    with pytest.raises(UserError) as caught:
        parse_args("data", argv, DATA)
    assert str(caught.value) == (
        "ptune data needs a data file: --train_file, --validation_file or --test_file"
    )
    with pytest.raises(UserError) as caught:
        parse_args("data", [*argv[:4], "--write_encoded"], DATA)
    assert str(caught.value) == "--write_encoded needs a value"


def test_plan_defaults_need_no_output_dir_and_its_flags_are_checked():
    from ptune.config.parse import parse_args
    from ptune.plan.cli import COMMAND as PLAN

    *_, plan = parse_args("train", ["--model_name_or_path", "m", "--gpu_memory", "24GiB"], PLAN)
    assert (plan.gpu_memory, plan.device, plan.max_batch, plan.max_length) == ("24GiB", "cuda", 16, 2048)
    with pytest.raises(UserError) as caught:
        parse_args("train", ["--model_name_or_path", "m", "--max_batch", "0"], PLAN)
    assert str(caught.value) == "--max_batch must be at least 1, got 0"


# ---- the other verbs -------------------------------------------------------------------------------------


def test_shared_flags_are_checked_alike_in_every_verb(capsys):
    for verb in ("serve", "bench"):
        assert main([verb, "--quantization_bit", "3"]) == 2
        assert capsys.readouterr().err == f"ptune {verb}: error: --quantization_bit must be 4 or 8, got 3\n"
    assert main(["chat", "--dtype", "half"]) == 2
    assert capsys.readouterr().err.startswith("ptune chat: error: argument --dtype: invalid choice: 'half'")


def test_serve_help_never_prints_the_api_key(capsys, monkeypatch):
    monkeypatch.setenv("PTUNE_API_KEY", "sk-secret")
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "sk-secret" not in capsys.readouterr().out
    (args,) = parse_command(commands()["serve"], [])
    assert args.api_key == "sk-secret"  # still the default


def test_a_repeatable_flag_and_a_list_flag():
    (serve,) = parse_command(commands()["serve"], ["--prefix", "a=x", "--prefix", "b=y"])
    assert serve.prefix == ["a=x", "b=y"]
    (bench,) = parse_command(commands()["bench"], ["--micro_batch", "1,4,,16", "--group_by_length"])
    assert (bench.micro_batch, bench.group_by_length, bench.pre_seq_len) == ([1, 4, 16], True, [128])
