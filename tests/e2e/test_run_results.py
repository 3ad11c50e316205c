"""A run never ends without its results, and never beside another run's.

Each test reproduces one way a run lost or mixed its results: a SIGKILL right after the last checkpoint (the
resume said "nothing to train" and wrote no final files), a SIGKILL while the curves were drawn (no PNG, a
`.tmp` left), `--overwrite_output_dir` keeping an earlier prefix's eval/predict results, a resume from a
checkpoint of another model family. The kills are real: `tests/kill_at.py` runs `ptune train` in a child
process that SIGKILLs itself at the exact moment, so the folder holds what a `kill -9` there leaves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_safety import refused, snapshot, train_argv

from ptune.cli import main
from tools.tiny import make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
KEY = "transformer.prefix_encoder.embedding.weight"
PNG = b"\x89PNG\r\n\x1a\n"
CONSTANT = ("--lr_scheduler_type", "constant")  # every step moves the prefix: a step too many shows


def prefix(folder: Path) -> torch.Tensor:
    return load_file(str(folder / "model.safetensors"))[KEY]


def state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


def steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


def files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.is_file()}


def run_killed(argv: list[str], moment: str, hf_cache: Path) -> None:
    """`ptune ARGV` in a child process that SIGKILLs itself at `moment` (see tests/kill_at.py)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_DATASETS_CACHE": str(hf_cache / "datasets"),
    }
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "kill_at.py"), moment, *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def whole(tiny, hf_cache, tmp_path_factory) -> Path:
    """A 4-step run trained in one go: what every interrupted run below must end as."""
    out = tmp_path_factory.mktemp("whole") / "run"
    assert main(train_argv(tiny, out, *CONSTANT)) == 0
    return out


# ------------------------------------------------------------------------------ killed at the very end
def test_a_run_killed_right_after_its_last_checkpoint_is_finished_by_a_resume(
    whole, tiny, hf_cache, tmp_path
):
    """SIGKILL right after checkpoint-4 (= max_steps) is in place: no final file, and one checkpoint over
    --save_total_limit 1. The resume trains nothing and writes the run's final files from checkpoint-4, as
    the uninterrupted run did, then rotates."""
    out = tmp_path / "killed"
    argv = train_argv(tiny, out, *CONSTANT, "--save_total_limit", "1")
    run_killed(argv, "last-checkpoint", hf_cache)
    assert steps(out) == [2, 4] and files(out) == set()  # the state a kill -9 at that moment leaves

    assert main([*argv, "--resume_from_checkpoint", "true"]) == 0
    assert steps(out) == [4]
    assert files(out) == files(whole)
    assert torch.equal(prefix(out), prefix(whole))  # the last step's prefix: no step was trained past it
    assert torch.equal(prefix(out), prefix(out / "checkpoint-4"))
    for name in ("prefix_config.json", "tokenizer.model", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert (out / "training_curves.png").read_bytes()[:8] == PNG
    ours, theirs = state(out), state(whole)
    assert ours["global_step"] == theirs["global_step"] == 4
    assert ours["log_history"][:-1] == theirs["log_history"][:-1]  # every logged step, same values
    summary = ours["log_history"][-1]
    assert summary["train_loss"] == pytest.approx(theirs["log_history"][-1]["train_loss"], abs=1e-4)
    results = json.loads((out / "train_results.json").read_text())
    expected = json.loads((whole / "train_results.json").read_text())
    # The killed process took its runtime figures with it; the rest is what the whole run wrote.
    assert set(results) == set(expected) - {
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
    }
    assert results.pop("train_loss") == pytest.approx(expected["train_loss"], abs=1e-4)
    assert results == {k: expected[k] for k in results}
    assert set(results) == {"epoch", "train_samples"} | ({"total_flos"} & set(expected))
    assert json.loads((out / "all_results.json").read_text()) == json.loads(
        (out / "train_results.json").read_text()
    )

    before = snapshot(out)  # once finished, a resume changes nothing
    assert main([*argv, "--resume_from_checkpoint", "true"]) == 0
    assert snapshot(out) == before


def test_a_run_killed_while_drawing_its_curves_gets_them_on_resume(whole, tiny, hf_cache, tmp_path):
    out = tmp_path / "plot"
    argv = train_argv(tiny, out, *CONSTANT)
    run_killed(argv, "plot", hf_cache)
    assert (out / ".training_curves.png.tmp").is_file() and not (out / "training_curves.png").exists()
    before = snapshot(out)

    assert main([*argv, "--resume_from_checkpoint", "true"]) == 0
    assert (out / "training_curves.png").read_bytes()[:8] == PNG
    assert not (out / ".training_curves.png.tmp").exists()
    tmp, png = str(out / ".training_curves.png.tmp"), str(out / "training_curves.png")
    assert {k: v for k, v in snapshot(out).items() if k != png} == {
        k: v for k, v in before.items() if k != tmp
    }
    assert files(out) == files(whole)


# ------------------------------------------------------------------------- a checkpoint of another base
@pytest.mark.parametrize("family", ["chatglm2", "glm4"])
def test_resuming_from_a_checkpoint_of_another_family_is_refused(
    whole, tiny, family, hf_cache, tmp_path, capsys
):
    """A ChatGLM2 or GLM-4 run's checkpoint copied into a ChatGLM3 run (the tiny models have the same prefix
    shape: only prefix_config.json tells them apart) is refused as predict refuses it, before anything is
    written."""
    other = make_tiny_checkpoint(tmp_path / family, family)
    assert main(train_argv(other, tmp_path / "other", steps=2)) == 0
    out = Path(shutil.copytree(whole, tmp_path / "run"))
    shutil.copytree(tmp_path / "other" / "checkpoint-2", out / "checkpoint-6")
    before = snapshot(out)
    line = refused(
        train_argv(tiny, out, *CONSTANT, "--resume_from_checkpoint", "true", steps=8),
        capsys,
        f"{out / 'checkpoint-6' / 'prefix_config.json'}: this prefix was trained on a {family} base",
        "is family chatglm3",
    )
    assert len(line.splitlines()) == 1
    assert snapshot(out) == before


# ------------------------------------------------------------------------------ --overwrite_output_dir
def test_overwrite_moves_an_earlier_runs_results_aside(whole, tiny, hf_cache, tmp_path, capsys):
    """A run folder whose checkpoints were deleted, with the old prefix's predictions and eval scores: the
    new run (--overwrite_output_dir) moves every file of the old run into previous-run-*/ (byte-identical),
    and its own all_results.json holds its own figures only."""
    out = Path(shutil.copytree(whole, tmp_path / "run"))
    for verb, data in (("predict", "--test_file"), ("eval", "--validation_file")):
        assert (
            main(
                [
                    verb,
                    "--ptuning_checkpoint",
                    str(out),
                    "--output_dir",
                    str(out),
                    data,
                    str(DEMO / "dev.json"),
                    "--max_predict_samples",
                    "2",
                    "--max_eval_samples",
                    "2",
                    "--prompt_column",
                    "content",
                    "--response_column",
                    "summary",
                    "--max_source_length",
                    "32",
                    "--max_new_tokens",
                    "2",
                    "--predict_with_generate",
                    "true",
                    "--use_cpu",
                    "true",
                    "--report_to",
                    "none",
                ]
            )
            == 0
        )
    for ckpt in out.glob("checkpoint-*"):
        shutil.rmtree(ckpt)
    old = {name: (out / name).read_bytes() for name in files(out)}
    assert {"eval_results.json", "predict_results.json", "generated_predictions.txt"} <= set(old)
    assert any(k.startswith("predict_") for k in json.loads(old["all_results.json"]))

    refused(train_argv(tiny, out, steps=2), capsys, "already holds a run's results")
    assert {name: (out / name).read_bytes() for name in files(out)} == old
    assert main(train_argv(tiny, out, "--overwrite_output_dir", "true", "--seed", "4", steps=2)) == 0
    (aside,) = out.glob("previous-run-*")
    assert {name: (aside / name).read_bytes() for name in files(aside)} == old
    assert files(out) == files(whole)  # the new run's files only
    assert json.loads((out / "all_results.json").read_text()) == json.loads(
        (out / "train_results.json").read_text()
    )
    assert not torch.equal(prefix(out), prefix(aside))
