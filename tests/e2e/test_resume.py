"""Checkpoints and resuming: exact resume, the checkpoint file set, rotation, best model, early stopping, kill -9.

Every run trains the tiny ChatGLM3 checkpoint on the demo data on the CPU, deterministically (`--seed`,
`--data_seed`, no dataloader workers). Runs go through `ptune.cli.main` in-process (no interpreter start-up)
except in the kill test, which needs a real `python -m ptune train` process to SIGKILL.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ptune.cli import main
from tests.parsing import demo_train_argv

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
KEY = "transformer.prefix_encoder.embedding.weight"
PRE_SEQ_LEN = 8
PREFIX_WIDTH = 2 * 2 * 2 * 16  # layers x (key, value) x kv groups x head dim of the tiny model
CHECKPOINT_FILES = {
    "model.safetensors",
    "prefix_config.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "tokenizer.model",
    "tokenizer_config.json",
}
TOP_LEVEL_FILES = {
    "model.safetensors",
    "prefix_config.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "trainer_state.json",
    "train_results.json",
    "all_results.json",
    "training_curves.png",
}
STEPS, SAVE_STEPS = 24, 2


def train_argv(
    tiny: Path, out: Path, *extra: str, steps: int = STEPS, save_steps: int = SAVE_STEPS
) -> list[str]:
    """`ptune train` flags shared by every run here; `extra` flags come last and win."""
    return demo_train_argv(
        tiny,
        out,
        "--max_source_length",
        "32",
        "--max_target_length",
        "32",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        str(steps),
        "--save_steps",
        str(save_steps),
        "--logging_steps",
        "4",
        "--learning_rate",
        "3e-2",
        "--pre_seq_len",
        str(PRE_SEQ_LEN),
        "--seed",
        "7",
        "--data_seed",
        "11",
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


def prefix(folder: Path) -> torch.Tensor:
    return load_file(str(folder / "model.safetensors"))[KEY]


def state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


def losses(folder: Path, first_step: int = 0) -> list[tuple[int, float, float]]:
    """(step, loss, grad_norm) of each training log entry after `first_step`."""
    return [
        (h["step"], h["loss"], h["grad_norm"])
        for h in state(folder)["log_history"]
        if "loss" in h and h["step"] > first_step
    ]


def run(argv: list[str]) -> None:
    assert main(argv) == 0


@pytest.fixture(scope="module")
def reference(tiny, hf_cache, tmp_path_factory) -> Path:
    """An uninterrupted run of STEPS steps with a checkpoint every SAVE_STEPS (prefix dropout 0.1, the default)."""
    out = tmp_path_factory.mktemp("reference")
    run(train_argv(tiny, out))
    return out


def copy_checkpoint(reference: Path, out: Path, step: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(reference / f"checkpoint-{step}", out / f"checkpoint-{step}"))


# ------------------------------------------------------------------------------------------- exact resume
def test_resume_from_a_checkpoint_is_exact(reference, tiny, tmp_path):
    """Resuming from checkpoint-12 reproduces the uninterrupted run bit for bit: prefix, and every logged loss.

    The run only ever sees checkpoint-12 (copied from the reference run), exactly what a run stopped after
    step 12 would have left. Identical losses after step 12 mean the same batches (data order) and the same
    prefix dropout masks (RNG restored from rng_state.pth) — see the next test for the RNG.
    """
    out = tmp_path / "resumed"
    ckpt = copy_checkpoint(reference, out, 12)
    run(train_argv(tiny, out, "--resume_from_checkpoint", str(ckpt)))
    assert torch.equal(prefix(out), prefix(reference))
    assert torch.equal(prefix(out / "checkpoint-24"), prefix(reference / "checkpoint-24"))
    assert losses(out, 12) == losses(reference, 12)
    assert [s for s, _, _ in losses(out, 12)] == [16, 20, 24]
    assert state(out)["global_step"] == STEPS


def test_resume_restores_the_dropout_rng(reference, tiny, tmp_path):
    """Control for the test above: with another step's rng_state.pth the prefix dropout masks differ, so does
    the prefix. (A checkpoint without rng_state.pth is refused as incomplete: see test_incomplete_checkpoint.)

    (With --prefix_dropout 0 the same experiment gives an identical prefix: the data order does not depend
    on the RNG state saved in the checkpoint, only the dropout masks do.)
    """
    out = tmp_path / "other-rng"
    ckpt = copy_checkpoint(reference, out, 12)
    shutil.copyfile(reference / "checkpoint-2" / "rng_state.pth", ckpt / "rng_state.pth")
    run(train_argv(tiny, out, "--resume_from_checkpoint", str(ckpt)))
    assert not torch.equal(prefix(out), prefix(reference))


def test_resume_true_takes_the_newest_complete_checkpoint(reference, tiny, tmp_path):
    """`--resume_from_checkpoint true` ignores what a crash mid-save leaves: `.staging/`, `.tmp-*` folders.

    checkpoint-8 is deliberately broken (no weights): resuming from it would fail, so success proves that
    checkpoint-12 was taken.
    """
    out = tmp_path / "run"
    copy_checkpoint(reference, out, 12)
    (copy_checkpoint(reference, out, 8) / "model.safetensors").unlink()
    partial = out / ".staging" / "checkpoint-14"  # a save killed half-way: some files, one truncated
    partial.mkdir(parents=True)
    shutil.copy(reference / "checkpoint-14" / "optimizer.pt", partial)
    (partial / "model.safetensors").write_bytes(
        (reference / "checkpoint-14" / "model.safetensors").read_bytes()[:100]
    )
    (out / ".tmp-checkpoint-30-x1y2").mkdir()  # an interrupted atomic_dir write (ptune.train.checkpoint)
    (out / ".tmp-checkpoint-30-x1y2" / "model.safetensors").write_bytes(b"partial")
    run(train_argv(tiny, out, "--resume_from_checkpoint", "true"))
    assert torch.equal(prefix(out), prefix(reference))
    assert not (out / ".staging").exists()  # the next save cleared it
    assert {p.name for p in (out / "checkpoint-14").iterdir()} == CHECKPOINT_FILES
    assert torch.equal(prefix(out / "checkpoint-14"), prefix(reference / "checkpoint-14"))


def test_stale_files_in_a_leftover_staging_folder_are_not_published(reference, tiny, tmp_path):
    """A file a killed save left in `.staging/checkpoint-N` (here: from a 2-process run) must not end up in
    the checkpoint-N the resumed run writes: the resumed 1-process run would publish a stale rng_state_1.pth.
    """
    out = tmp_path / "run"
    copy_checkpoint(reference, out, 20)
    partial = out / ".staging" / "checkpoint-22"
    partial.mkdir(parents=True)
    (partial / "rng_state_1.pth").write_bytes(b"stale")
    run(train_argv(tiny, out, "--resume_from_checkpoint", "true"))
    assert {p.name for p in (out / "checkpoint-22").iterdir()} == CHECKPOINT_FILES


# ---------------------------------------------------------------------------------------- file sets
def test_checkpoints_hold_exactly_the_prefix_and_trainer_state(reference, tiny):
    checkpoints = sorted(reference.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == [
        f"checkpoint-{s}" for s in range(SAVE_STEPS, STEPS + 1, SAVE_STEPS)
    ]
    assert {p.name for p in reference.iterdir() if p.is_file()} == TOP_LEVEL_FILES
    assert {p.name for p in reference.iterdir() if p.is_dir()} == {p.name for p in checkpoints}
    prefix_bytes = PRE_SEQ_LEN * PREFIX_WIDTH * 4
    for ckpt in checkpoints:
        assert {p.name for p in ckpt.iterdir()} == CHECKPOINT_FILES, ckpt
        with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
            assert set(f.keys()) == {KEY}
            tensor = f.get_tensor(KEY)
        assert tensor.shape == (PRE_SEQ_LEN, PREFIX_WIDTH) and tensor.dtype == torch.float32
        assert (ckpt / "model.safetensors").stat().st_size < 2 * prefix_bytes
        optimizer = torch.load(ckpt / "optimizer.pt", weights_only=True)
        assert list(optimizer["state"]) == [0]  # one optimized parameter: the prefix
        assert {k: tuple(v.shape) for k, v in optimizer["state"][0].items()} == {
            "step": (),
            "exp_avg": (PRE_SEQ_LEN, PREFIX_WIDTH),
            "exp_avg_sq": (PRE_SEQ_LEN, PREFIX_WIDTH),
        }
        assert set(torch.load(ckpt / "rng_state.pth", weights_only=False)) == {"python", "numpy", "cpu"}
        assert state(ckpt)["global_step"] == int(ckpt.name.split("-")[1])
        for name in ("tokenizer.model", "tokenizer_config.json"):
            assert (ckpt / name).read_bytes() == (tiny / name).read_bytes()
    # No base weights anywhere: every file is far smaller than one shard of the (tiny) base model.
    shard = min(p.stat().st_size for p in tiny.glob("pytorch_model-*.bin"))
    files = [p for p in reference.rglob("*") if p.is_file() and p.name != "training_curves.png"]
    assert max(p.stat().st_size for p in files) < shard / 8
    assert (reference / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # an image
    weights = {
        p.relative_to(reference).as_posix()
        for p in reference.rglob("*")
        if p.suffix in (".safetensors", ".bin")
    }
    assert weights == {"model.safetensors"} | {f"{c.name}/model.safetensors" for c in checkpoints}
    assert torch.equal(prefix(reference), prefix(reference / f"checkpoint-{STEPS}"))


# ------------------------------------------------------------------- rotation, best model, early stopping
def test_save_total_limit_keeps_the_newest_checkpoints(tiny, hf_cache, tmp_path):
    out = tmp_path / "run"
    run(train_argv(tiny, out, "--save_total_limit", "2", steps=8))
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["checkpoint-6", "checkpoint-8"]
    assert torch.equal(prefix(out), prefix(out / "checkpoint-8"))


@pytest.fixture(scope="module")
def best_run(tiny, hf_cache, tmp_path_factory) -> Path:
    """Evaluate and save every 2 steps, best model by eval_loss, patience 2, keep 2 checkpoints.

    eval_loss falls at every evaluation on this run (asserted below), so with lower-is-better the best
    checkpoint is always the last one and restoring it would be indistinguishable from not restoring it.
    `--greater_is_better true` turns that around: the first evaluation (step 2) is the best, no later one
    improves on it, and early stopping with patience 2 ends the run after the evaluations at steps 4 and 6.
    """
    out = tmp_path_factory.mktemp("best")
    run(
        train_argv(
            tiny,
            out,
            "--validation_file",
            str(DEMO / "dev.json"),
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "2",
            "--per_device_eval_batch_size",
            "20",
            "--load_best_model_at_end",
            "true",
            "--metric_for_best_model",
            "eval_loss",
            "--greater_is_better",
            "true",
            "--early_stopping_patience",
            "2",
            "--save_total_limit",
            "2",
            steps=20,
        )
    )
    return out


def test_load_best_model_at_end_restores_the_best_prefix(best_run):
    evals = [(h["step"], h["eval_loss"]) for h in state(best_run)["log_history"] if "eval_loss" in h]
    assert [s for s, _ in evals] == [2, 4, 6]
    assert all(a[1] > b[1] for a, b in zip(evals, evals[1:], strict=False))  # falling: step 2 is the "best"
    assert state(best_run)["best_model_checkpoint"] == str(best_run / "checkpoint-2")
    assert state(best_run)["best_metric"] == evals[0][1]
    # Rotation keeps the best checkpoint besides the newest one.
    assert sorted(p.name for p in best_run.iterdir() if p.is_dir()) == ["checkpoint-2", "checkpoint-6"]
    assert torch.equal(prefix(best_run), prefix(best_run / "checkpoint-2"))
    assert not torch.equal(prefix(best_run), prefix(best_run / "checkpoint-6"))
    assert state(best_run / "checkpoint-6")["global_step"] == 6  # the last checkpoint keeps the last prefix


def test_early_stopping_ends_the_run_after_patience_evaluations(best_run):
    assert state(best_run)["global_step"] == 6  # of --max_steps 20
    assert state(best_run)["max_steps"] == 20


# ------------------------------------------------------------------------------------------- kill -9
def newest_step(out: Path) -> int:
    return max((int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")), default=0)


def newest_checkpoint_is_complete(out: Path) -> int:
    """The checkpoint `--resume_from_checkpoint true` will take is complete and readable; returns its step.

    (Only the newest: a kill during rotation can leave an older folder half-deleted, which resuming never
    reads and the next rotation removes.)
    """
    step = newest_step(out)
    ckpt = out / f"checkpoint-{step}"
    assert {p.name for p in ckpt.iterdir()} == CHECKPOINT_FILES, ckpt
    assert prefix(ckpt).shape == (PRE_SEQ_LEN, PREFIX_WIDTH)
    assert state(ckpt)["global_step"] == step
    torch.load(ckpt / "optimizer.pt", weights_only=True)
    torch.load(ckpt / "scheduler.pt", weights_only=True)
    return step


def wait_for(condition, proc: subprocess.Popen, poll: float, timeout: float = 180.0) -> bool:
    """Poll `condition()` until it holds (-> True) or the process ends first (-> False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise AssertionError("training made no progress")


def staged_unpublished(out: Path, start: int) -> bool:
    """A save of a checkpoint newer than `start` is under way: `.staging/checkpoint-N` holds files already,
    `checkpoint-N` itself is not there yet."""
    try:  # the training process renames and removes these folders while we look
        for staged in (out / ".staging").glob("checkpoint-*"):
            if (
                int(staged.name.split("-")[1]) > start
                and not (out / staged.name).exists()
                and any(staged.iterdir())
            ):
                return True
    except FileNotFoundError:
        pass
    return False


def kill_when(kind: str, proc: subprocess.Popen, out: Path, start: int, rng: random.Random) -> bool:
    """SIGKILL `proc` at a moment of the given kind once it trained past step `start`; False if it ended first.

    delay:   a seeded random delay (0-50 ms: mid-step, mid-save or mid-log, depending on the machine's
             speed) after a seeded random checkpoint 2-6 steps on appeared (at most checkpoint-18, so that
             the run cannot end first);
    staging: as soon as a new checkpoint is half-written in `.staging/` (some files there, not renamed yet).
    """
    if kind == "delay":
        target = min(start + 2 * rng.randint(1, 3), STEPS - 6)
        if not wait_for(lambda: newest_step(out) >= target, proc, poll=0.001):
            return False
        time.sleep(rng.uniform(0.0, 0.05))
    # Two saves on: the first one may write into a half-written folder a kill before left (start + SAVE_STEPS).
    elif not wait_for(lambda: staged_unpublished(out, start + SAVE_STEPS), proc, poll=0.0002):
        return False
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(
    reference, tiny, hf_cache, tmp_path
):
    """SIGKILL `python -m ptune train` three times, restart it with `--resume_from_checkpoint true` each time.

    After every kill the newest `checkpoint-N` must be complete; every restart must resume from it (its log
    says so); the final prefix must equal the uninterrupted in-process reference run's (same flags;
    --save_total_limit only deletes old folders, --log_level only logs).
    """
    out = tmp_path / "run"
    rng = random.Random(20240611)
    env = {**os.environ, "HF_HOME": str(hf_cache), "HF_DATASETS_CACHE": str(hf_cache / "datasets")}
    argv = [
        sys.executable,
        "-m",
        "ptune",
        *train_argv(tiny, out, "--save_total_limit", "3", "--log_level", "info"),
    ]
    plan = ["delay", "staging", "delay"]
    kills: list[tuple[str, int, bool]] = []  # (kind, newest checkpoint after it, a half-written one left)
    start = 0
    for attempt in range(len(plan) + 1):
        log = tmp_path / f"log-{attempt}.txt"
        resume = ["--resume_from_checkpoint", "true"] if attempt else []
        with open(log, "wb") as sink:
            proc = subprocess.Popen(
                [*argv, *resume], cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
            )
        try:
            killed = attempt < len(plan) and kill_when(plan[attempt], proc, out, start, rng)
            if not killed:
                assert proc.wait(timeout=300) == 0, log.read_text(errors="replace")[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        if attempt:  # the restart resumed from the newest checkpoint, it did not start over
            assert f"Resuming training from checkpoint with epoch 0 and global step {start}" in text, text[
                -3000:
            ]
        if not killed:
            break
        start = newest_checkpoint_is_complete(out)
        kills.append((plan[attempt], start, staged_unpublished(out, start)))
    print("kills (kind, resumed from, half-written checkpoint left):", kills)
    assert [k for k, _, _ in kills] == plan, kills
    assert kills[1][2], f"the staging kill did not land mid-save: {kills}"
    assert state(out)["global_step"] == STEPS
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-20",
        "checkpoint-22",
        "checkpoint-24",
    ]
    assert torch.allclose(prefix(out), prefix(reference), rtol=0, atol=1e-6)
    assert torch.equal(prefix(out), prefix(reference)), "resumed runs reproduce the uninterrupted run exactly"
