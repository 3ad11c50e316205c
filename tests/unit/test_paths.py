"""ptune.io.paths: the one path-safety policy's rules, each on its own (the verbs' refusals end to end are in
tests/e2e/test_safety.py, test_run_safety.py and test_data_report.py)."""

from __future__ import annotations

import re

import pytest

from ptune.io.errors import UserError
from ptune.io.paths import (
    check_output_dir,
    check_output_file,
    check_replaced_folder,
    holds_model_weights,
    protected_file,
    refuse_earlier_run,
    refuse_existing,
    relation,
)


def message(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as error:
        call(*args, **kwargs)
    return str(error.value)


def test_relation(tmp_path):
    assert relation(tmp_path / "a", tmp_path / "a") == "is"
    assert relation(tmp_path, tmp_path / "a" / "b") == "holds"
    assert relation(tmp_path / "a" / "b", tmp_path) == "inside"
    assert relation(tmp_path / "a", tmp_path / "b") is None
    assert relation(tmp_path / "a" / ".." / "b", tmp_path / "b") == "is"  # resolved


def test_a_model_folder_is_config_and_weights_without_a_prefix_marker(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert not holds_model_weights(tmp_path, "prefix_config.json")
    (tmp_path / "pytorch_model-00001-of-00002.bin").write_bytes(b"")
    assert holds_model_weights(tmp_path, "prefix_config.json")
    (tmp_path / "prefix_config.json").write_text("{}")
    assert not holds_model_weights(tmp_path, "prefix_config.json")


def test_output_dir_may_be_inside_but_not_equal_to_a_folder_it_reads(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    assert message(check_output_dir, model, {"--model_name_or_path": str(model)}, "p.json") == (
        f"--output_dir {model} is the --model_name_or_path folder: ptune would write its prefix files over "
        "the model's; choose another output folder"
    )
    check_output_dir(model / "out", {"--model_name_or_path": str(model)}, "p.json")
    assert not (model / "out").exists()  # nothing is created


def test_an_earlier_run(tmp_path):
    names = ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert message(refuse_earlier_run, tmp_path, names, True, False) == (
        f"{tmp_path}: already holds a run (checkpoint-2, checkpoint-4, checkpoint-6, ...); choose another "
        "--output_dir, or continue it with --resume_from_checkpoint true"
    )
    assert "never deletes checkpoints" in message(refuse_earlier_run, tmp_path, names[:1], False, True)
    assert "already holds a run's results" in message(refuse_earlier_run, tmp_path, [], True, False)
    refuse_earlier_run(tmp_path, [], True, True)
    refuse_earlier_run(tmp_path, [], False, False)


def test_an_existing_file_is_replaced_only_when_asked(tmp_path):
    path = tmp_path / "eval_results.json"
    refuse_existing(path, False)
    path.write_text("{}")
    refuse_existing(path, True)
    assert message(refuse_existing, path, False) == (
        f"{path}: already exists; pass --overwrite_output_dir to replace it"
    )
    assert message(refuse_existing, path, False, "--overwrite").endswith("pass --overwrite to replace it")


def test_protected_files(tmp_path):
    run_files = ("trainer_state.json", "tokenizer.model")
    checkpoint = re.compile(r"^checkpoint-(\d+)$").match
    assert protected_file(tmp_path / "checkpoint-3" / "x.jsonl", run_files, checkpoint) == (
        f"inside the checkpoint folder {tmp_path / 'checkpoint-3'}"
    )
    assert protected_file(tmp_path / "checkpoint-3-thudm" / "x.jsonl", run_files, checkpoint) is None
    assert protected_file(tmp_path / "rng_state.pth", run_files, checkpoint) == (
        "a weights or checkpoint file (.pth)"
    )
    assert protected_file(tmp_path / "tokenizer.model", run_files, checkpoint) == (
        "a file of a run or prefix folder (tokenizer.model)"
    )
    assert protected_file(tmp_path / "encoded.jsonl", run_files, checkpoint) is None


def test_an_output_file_never_replaces_what_the_command_reads(tmp_path):
    data, model = tmp_path / "train.json", tmp_path / "model"
    data.write_text("[]")
    model.mkdir()
    reads = {"the --train_file: it would replace your data": str(data)}

    def check(target, protected=None, overwrite=False):
        return message(check_output_file, target, "--w", reads, {"--m": str(model)}, protected, overwrite)

    assert check(data, overwrite=True) == f"--w {data} is the --train_file: it would replace your data"
    assert check(model / "x") == f"--w {model / 'x'} is inside the --m folder; write it elsewhere"
    assert check(tmp_path / "a.pt", "a weights file", True) == (
        f"--w {tmp_path / 'a.pt'} is a weights file: ptune data never writes over one; write elsewhere"
    )
    assert (
        check(tmp_path / "no" / "x")
        == f"--w {tmp_path / 'no' / 'x'}: folder {tmp_path / 'no'} does not exist"
    )
    check_output_file(tmp_path / "x.jsonl", "--w", reads, {"--m": str(model)}, None, False)


def test_a_replaced_folder_is_an_earlier_output_only(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    reads = {"the checkpoint": checkpoint}

    def check(target, overwrite=True):
        return message(
            check_replaced_folder,
            target,
            reads,
            overwrite,
            own_file=lambda entry: entry.suffix == ".json",
            holds_model=lambda folder: (folder / "model.json").is_file(),
        )

    assert (
        check(tmp_path / "run")
        == f"--out {tmp_path / 'run'}: is or holds the checkpoint ({checkpoint}); choose another folder"
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text("{}")
    assert check(out, overwrite=False) == f"{out}: already exists; pass --overwrite to replace it"
    check_replaced_folder(out, reads, True, lambda e: e.suffix == ".json", lambda f: False)
    (out / "model.json").write_text("{}")
    assert (
        check(out) == f"--out {out}: holds a model's config.json; --overwrite only replaces an earlier export"
    )
    (out / "notes.txt").write_text("mine")
    assert check(out) == (
        f"--out {out}: holds notes.txt, which ptune export does not write; --overwrite only replaces an "
        "earlier export"
    )
