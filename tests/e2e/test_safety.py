"""No command destroys work: every refusal below is one line, exit 2, and leaves every file byte-identical.

Each case once destroyed something (the issue "Trust: ... no command ever destroys a user's work"):
output_dir = the base model folder, --overwrite_output_dir over an earlier run's checkpoints, exports counted
as checkpoints by rotation, `export --overwrite` over an ancestor, two runs in one folder. Runs go through
`ptune.cli.main` in-process on the tiny ChatGLM3 checkpoint.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from ptune.cli import main
from ptune.train.rundir import RunLock
from tests.parsing import demo_train_argv

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"


def train_argv(model: Path, out: Path, *extra: str, steps: int = 4) -> list[str]:
    return demo_train_argv(
        model,
        out,
        "--max_source_length",
        "32",
        "--max_target_length",
        "16",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        str(steps),
        "--save_steps",
        "2",
        "--logging_steps",
        "2",
        "--learning_rate",
        "2e-2",
        "--pre_seq_len",
        "4",
        "--seed",
        "3",
        "--dataloader_num_workers",
        "0",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
        "--report_to",
        "none",
        *extra,
    )


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under `folders` (recursively) → sha256 of its bytes; folders themselves as '<dir>'."""
    out = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            key = str(path)
            out[key] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def refused(argv: list[str], capsys, *fragments: str) -> str:
    """Run argv, expect exit 2 and one error line holding every fragment; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("ptune "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


@pytest.fixture(scope="module")
def model_copy(tiny, tmp_path_factory) -> Path:
    """A private copy of the tiny base, so a destructive bug here cannot spoil the shared fixture."""
    return Path(shutil.copytree(tiny, tmp_path_factory.mktemp("base") / "chatglm3"))


@pytest.fixture(scope="module")
def run_a(model_copy, hf_cache, tmp_path_factory) -> Path:
    """A finished 6-step run with checkpoints 2, 4, 6."""
    out = tmp_path_factory.mktemp("run-a")
    assert main(train_argv(model_copy, out, steps=6)) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
    ]
    return out


# ------------------------------------------------------------------------ output_dir is the base model
@pytest.mark.parametrize("verb", ["train", "predict", "eval"])
def test_output_dir_equal_to_the_base_model_folder_is_refused(model_copy, tmp_path, capsys, verb):
    before = snapshot(model_copy)
    argv = train_argv(model_copy, model_copy)
    if verb != "train":
        argv = [
            verb,
            "--model_name_or_path",
            str(model_copy),
            "--output_dir",
            str(model_copy),
            "--pre_seq_len",
            "4",
            "--prompt_column",
            "content",
            "--response_column",
            "summary",
            "--validation_file",
            str(DEMO / "dev.json"),
            "--test_file",
            str(DEMO / "dev.json"),
            "--use_cpu",
            "true",
            "--report_to",
            "none",
        ]
    refused(argv, capsys, f"--output_dir {model_copy} is the --model_name_or_path folder")
    assert snapshot(model_copy) == before


def test_output_dir_holding_another_models_weights_is_refused(model_copy, tiny, tmp_path, capsys):
    other = Path(shutil.copytree(tiny, tmp_path / "other-model"))
    before = snapshot(model_copy, other)
    refused(train_argv(model_copy, other), capsys, "holds a model's config.json and weights")
    assert snapshot(model_copy, other) == before


def test_tokenizer_folder_is_protected_too(model_copy, tiny, tmp_path, capsys):
    tok = Path(shutil.copytree(tiny, tmp_path / "tok"))
    for weights in tok.glob("pytorch_model*"):
        weights.unlink()  # a tokenizer-only folder: not a model, but the run reads it
    before = snapshot(tok)
    refused(
        train_argv(model_copy, tok, "--tokenizer_name", str(tok)), capsys, "is the --tokenizer_name folder"
    )
    assert snapshot(tok) == before


# ------------------------------------------------------------------------------- overwriting a run
def test_overwrite_output_dir_never_deletes_or_mixes_an_earlier_runs_checkpoints(run_a, model_copy, capsys):
    before = snapshot(run_a)
    refused(
        train_argv(model_copy, run_a, "--overwrite_output_dir", "true", steps=4),
        capsys,
        "holds checkpoints of an earlier run (checkpoint-2, checkpoint-4, checkpoint-6)",
        "never deletes checkpoints",
    )
    assert snapshot(run_a) == before


def test_a_run_without_overwrite_is_refused(run_a, model_copy, capsys):
    before = snapshot(run_a)
    refused(train_argv(model_copy, run_a), capsys, "already holds a run", "--resume_from_checkpoint true")
    assert snapshot(run_a) == before


def test_overwrite_replaces_the_final_files_of_a_run_whose_checkpoints_are_gone(run_a, model_copy, tmp_path):
    out = Path(shutil.copytree(run_a, tmp_path / "results-only"))
    for ckpt in out.glob("checkpoint-*"):
        shutil.rmtree(ckpt)
    old = (out / "model.safetensors").read_bytes()
    assert main(train_argv(model_copy, out, "--overwrite_output_dir", "true", "--seed", "4", steps=2)) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (out / "model.safetensors").read_bytes() != old


# ----------------------------------------------------------------------------------------- exports
def test_export_default_folder_is_not_a_checkpoint_name_and_rotation_ignores_exports(
    run_a, model_copy, tmp_path, capsys
):
    out = Path(shutil.copytree(run_a, tmp_path / "run"))
    assert main(["export", str(out / "checkpoint-4")]) == 0
    assert capsys.readouterr().out.strip() == str(out / "exports" / "checkpoint-4-thudm")
    # An export made by an older ptune beside the checkpoints, with a checkpoint-like name:
    legacy = Path(shutil.copytree(out / "exports" / "checkpoint-4-thudm", out / "checkpoint-40-thudm"))
    exports = snapshot(out / "exports", legacy)
    # Continue the run to step 10 keeping 2 checkpoints: rotation must count only checkpoint-<step> folders.
    argv = train_argv(
        model_copy, out, "--resume_from_checkpoint", "true", "--save_total_limit", "2", steps=10
    )
    assert main(argv) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-10",
        "checkpoint-40-thudm",
        "checkpoint-8",
    ]
    assert snapshot(out / "exports", legacy) == exports


def test_export_overwrite_refuses_an_ancestor_of_the_checkpoint(run_a, model_copy, tmp_path, capsys):
    out = Path(shutil.copytree(run_a, tmp_path / "run"))
    before = snapshot(out, model_copy)
    for target, fragment in (
        (out, "is or holds the checkpoint"),
        (tmp_path, "is or holds the checkpoint"),
        (model_copy, "is or holds the base model"),
    ):
        refused(["export", str(out / "checkpoint-4"), "--out", str(target), "--overwrite"], capsys, fragment)
    assert snapshot(out, model_copy) == before


def test_export_overwrite_replaces_only_an_earlier_export(run_a, tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    before = snapshot(other)
    refused(
        ["export", str(run_a / "checkpoint-4"), "--out", str(other), "--overwrite"], capsys, "holds todo.txt"
    )
    assert snapshot(other) == before
    target = tmp_path / "exp"
    assert main(["export", str(run_a / "checkpoint-4"), "--out", str(target)]) == 0
    assert main(["export", str(run_a / "checkpoint-6"), "--out", str(target), "--overwrite"]) == 0


# ----------------------------------------------------------------------------------- two runs at once
def test_a_second_process_writing_into_a_locked_output_dir_is_refused(model_copy, tmp_path, capsys):
    out = tmp_path / "busy"
    with RunLock(out, "train"):  # another run holds the folder (flock: per open file, so in-process works)
        (out / "checkpoint-2").mkdir()
        before = snapshot(out)
        refused(
            train_argv(model_copy, out, "--resume_from_checkpoint", "true"), capsys, "another ptune process"
        )
        argv = [
            "predict",
            "--model_name_or_path",
            str(model_copy),
            "--pre_seq_len",
            "4",
            "--output_dir",
            str(out),
            "--test_file",
            str(DEMO / "dev.json"),
            "--prompt_column",
            "content",
            "--response_column",
            "summary",
            "--use_cpu",
            "true",
            "--report_to",
            "none",
        ]
        refused(argv, capsys, "another ptune process")
        assert snapshot(out) == before


def test_a_refused_run_leaves_no_empty_output_dir(model_copy, tmp_path, capsys):
    out = tmp_path / "new" / "run"
    refused(
        train_argv(model_copy, out, "--train_file", str(tmp_path / "missing.json")), capsys, "missing.json"
    )
    assert not out.exists()
