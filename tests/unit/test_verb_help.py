"""`ptune VERB --help` lists exactly the flags of the verb's argument dataclasses: every verb reads its command
line through ptune.config.parser, so a flag no dataclass declares cannot exist, and none is left out."""

from __future__ import annotations

import dataclasses
import importlib
import re

import pytest

from ptune.cli import MODULE_VERBS, SCORE, VERBS, main
from ptune.config.parse import run_command
from ptune.config.parser import OWN_METADATA, Command


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
