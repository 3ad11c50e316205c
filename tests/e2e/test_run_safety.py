"""Resume, best model, NaN, signals and I/O failures: the run's checkpoints stay right whatever happens.

Each test reproduces one way a run used to go wrong (best checkpoint recorded under `.staging/` and rotated
away after a resume; one step trained past max_steps on resume; an incomplete newest checkpoint resumed with
a fresh optimizer or a traceback; NaN checkpoints kept; SIGTERM without a word; disk full as a traceback).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_safety import refused, snapshot, train_argv

from ptune.cli import main

KEY = "transformer.prefix_encoder.embedding.weight"
REPO = Path(__file__).resolve().parents[2]


def prefix(folder: Path) -> torch.Tensor:
    return load_file(str(folder / "model.safetensors"))[KEY]


def state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


def steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


# ------------------------------------------------------------------------------------------ best model
BEST = (
    "--validation_file",
    str(REPO / "data" / "demo" / "dev.json"),
    "--max_eval_samples",
    "8",
    "--eval_strategy",
    "steps",
    "--eval_steps",
    "2",
    "--load_best_model_at_end",
    "true",
    "--metric_for_best_model",
    "eval_loss",
    "--greater_is_better",
    "true",  # best = the worst loss: an early one
    "--save_total_limit",
    "1",
    "--lr_scheduler_type",
    "constant",
    "--prefix_dropout",
    "0",
)


def test_best_checkpoint_survives_rotation_and_resume_and_is_the_final_prefix(tiny, hf_cache, tmp_path):
    """Run 6 steps, then resume to 10: the best checkpoint's recorded path exists, rotation kept it, and the
    final prefix in output_dir is the best one (not the last, not a staging path)."""
    out = tmp_path / "best"
    assert main(train_argv(tiny, out, *BEST, steps=6)) == 0
    best = state(out)["best_model_checkpoint"]
    assert ".staging" not in best and Path(best).is_dir()
    assert state(Path(best))["best_model_checkpoint"] == best  # the checkpoint's own copy of the state too
    assert main(train_argv(tiny, out, *BEST, "--resume_from_checkpoint", "true", steps=10)) == 0
    final = state(out)
    assert Path(final["best_model_checkpoint"]).is_dir(), final["best_model_checkpoint"]
    losses = {h["step"]: h["eval_loss"] for h in final["log_history"] if "eval_loss" in h}
    best_step = max(losses, key=losses.get)
    assert final["best_model_checkpoint"] == str(out / f"checkpoint-{best_step}")
    assert steps(out) == sorted({best_step, 10})  # save_total_limit 1 keeps the newest and the best
    assert torch.equal(prefix(out), prefix(out / f"checkpoint-{best_step}"))
    assert best_step != 10 and not torch.equal(prefix(out), prefix(out / "checkpoint-10"))


# ----------------------------------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def run4(tiny, hf_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run4") / "run"
    assert main(train_argv(tiny, out, "--lr_scheduler_type", "constant")) == 0
    assert steps(out) == [2, 4]
    return out


def test_resuming_a_finished_checkpoint_trains_nothing(run4, tiny, tmp_path):
    out = Path(shutil.copytree(run4, tmp_path / "again"))
    before = snapshot(out)
    argv = train_argv(tiny, out, "--lr_scheduler_type", "constant", "--resume_from_checkpoint", "true")
    assert main(argv) == 0
    assert snapshot(out) == before  # no extra step: the constant-LR prefix would have moved


@pytest.mark.parametrize("lost", ["trainer_state.json", "optimizer.pt"])
def test_resume_true_skips_an_incomplete_newest_checkpoint(run4, tiny, tmp_path, lost, capsys):
    out = Path(shutil.copytree(run4, tmp_path / "partial"))
    (out / "checkpoint-4" / lost).unlink()
    assert (
        main(train_argv(tiny, out, "--resume_from_checkpoint", "true", "--overwrite_output_dir", "true")) == 0
    )
    log = capsys.readouterr().err
    assert f"skipping {out / 'checkpoint-4'} for the resume: it lacks {lost}" in log
    assert f"resuming from {out / 'checkpoint-2'}" in log
    assert state(out / "checkpoint-4")["global_step"] == 4  # re-made from checkpoint-2


def test_resume_from_an_incomplete_or_corrupt_checkpoint_is_one_line(run4, tiny, tmp_path, capsys):
    out = Path(shutil.copytree(run4, tmp_path / "bad"))
    (out / "checkpoint-4" / "optimizer.pt").unlink()
    (out / "checkpoint-2" / "scheduler.pt").write_bytes(b"\x80\x04garbage")
    before = snapshot(out)
    for ckpt, fragment in (
        ("checkpoint-4", "lacks optimizer.pt"),
        ("checkpoint-2", "scheduler.pt: not a valid checkpoint file"),
    ):
        refused(train_argv(tiny, out, "--resume_from_checkpoint", str(out / ckpt)), capsys, fragment)
    (out / "checkpoint-2" / "scheduler.pt").unlink()
    refused(train_argv(tiny, out, "--resume_from_checkpoint", "true"), capsys, "no complete checkpoint")
    assert snapshot(out) == {k: v for k, v in before.items() if not k.endswith("checkpoint-2/scheduler.pt")}


def test_a_garbage_optimizer_or_trainer_state_is_one_line_never_torchs_unsafe_advice(
    run4, tiny, tmp_path, capsys
):
    """torch's message for a file weights_only refuses opens with "Re-running torch.load with weights_only set
    to False will likely succeed": ptune never passes that on (it would run whatever the pickle holds)."""
    import io
    import os as os_module

    out = Path(shutil.copytree(run4, tmp_path / "garbage"))
    ckpt = out / "checkpoint-4"
    pickled = io.BytesIO()
    torch.save({"state": {}, "hook": os_module.getcwd}, pickled)  # a pickle that would call a function
    for content, reason in (
        (b"\x80\x04garbage", "not a file torch.save writes (unsupported pickle operand 103)"),
        (pickled.getvalue(), "it holds a Python object (posix.getcwd), not only tensors"),
    ):
        (ckpt / "optimizer.pt").write_bytes(content)
        before = snapshot(out)
        line = refused(
            train_argv(tiny, out, "--resume_from_checkpoint", str(ckpt)),
            capsys,
            f"{ckpt / 'optimizer.pt'}: not a valid checkpoint file ({reason}); resume from an earlier checkpoint",
        )
        assert "weights_only" not in line
        assert snapshot(out) == before
    shutil.copyfile(run4 / "checkpoint-4" / "optimizer.pt", ckpt / "optimizer.pt")
    for history in ({"loss": 1.0}, "x", [1, 2]):
        trainer_state = {**state(run4 / "checkpoint-4"), "log_history": history}
        (ckpt / "trainer_state.json").write_text(json.dumps(trainer_state))
        before = snapshot(out)
        refused(
            train_argv(tiny, out, "--resume_from_checkpoint", "true", steps=6),
            capsys,
            f"{ckpt / 'trainer_state.json'}: 'log_history' must be a list of logged entries",
        )
        assert snapshot(out) == before


def test_resume_with_another_pre_seq_len_or_projection_is_one_line(run4, tiny, capsys):
    before = snapshot(run4)
    ckpt = str(run4 / "checkpoint-2")
    argv = train_argv(tiny, run4, "--resume_from_checkpoint", ckpt)
    argv[argv.index("--pre_seq_len") + 1] = "8"
    refused(argv, capsys, "the checkpoint has pre_seq_len 4, but --pre_seq_len 8 was given")
    argv = train_argv(tiny, run4, "--resume_from_checkpoint", ckpt, "--prefix_projection", "true")
    refused(argv, capsys, "the checkpoint has no prefix projection, but --prefix_projection true was given")
    assert snapshot(run4) == before


def test_truncated_prefix_checkpoint_is_one_line(run4, tiny, tmp_path, capsys):
    ckpt = Path(shutil.copytree(run4 / "checkpoint-2", tmp_path / "ckpt"))
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    argv = [
        "predict",
        "--model_name_or_path",
        str(tiny),
        "--ptuning_checkpoint",
        str(ckpt),
        "--output_dir",
        str(tmp_path / "p"),
        "--test_file",
        str(REPO / "data" / "demo" / "dev.json"),
        "--prompt_column",
        "content",
        "--response_column",
        "summary",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
    ]
    refused(argv, capsys, str(ckpt / "model.safetensors"))
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------------------------- NaN, disk
def test_no_checkpoint_ever_holds_a_nan_prefix(tiny, hf_cache, tmp_path, capsys):
    """Saving every step but logging every 4th: the NaN is caught at the save, not 3 checkpoints later."""
    out = tmp_path / "nan"
    argv = train_argv(
        tiny, out, "--save_steps", "1", "--logging_steps", "4", "--learning_rate", "1e38", steps=8
    )
    line = refused(argv, capsys, "the prefix became non-finite by step")
    for ckpt in out.glob("checkpoint-*"):
        assert torch.isfinite(prefix(ckpt)).all(), ckpt
    if steps(out):
        assert f"checkpoint-{steps(out)[-1]}" in line
    assert not (out / ".staging").exists()


def test_disk_full_during_a_save_keeps_earlier_checkpoints(tiny, hf_cache, tmp_path, capsys, monkeypatch):
    import ptune.train.checkpoint

    out = tmp_path / "full"
    real, calls = ptune.train.checkpoint.save_file, []

    def save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint's prefix
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(ptune.train.checkpoint, "save_file", save_file)
    refused(train_argv(tiny, out), capsys, "could not write checkpoint-4 (No space left on device)")
    assert steps(out) == [2] and not (out / ".staging").exists()
    assert not (out / "checkpoint-2" / "model.safetensors").with_name(".model.safetensors.tmp").exists()


def test_output_dir_that_is_a_file_read_only_or_full_is_refused_up_front(tiny, tmp_path, capsys, monkeypatch):
    import ptune.io.paths

    afile = tmp_path / "afile"
    afile.write_text("x")
    refused(train_argv(tiny, afile), capsys, "exists and is not a folder")
    refused(train_argv(tiny, afile / "sub"), capsys, "is a file, not a folder")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with monkeypatch.context() as m:  # root ignores permission bits, so the probe's failure is simulated
        m.setattr(ptune.io.paths.tempfile, "mkstemp", read_only)
        refused(train_argv(tiny, tmp_path / "ro"), capsys, "cannot write in", "Read-only file system")
    with monkeypatch.context() as m:
        m.setattr(ptune.io.paths.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1024))
        refused(train_argv(tiny, tmp_path / "full"), capsys, "only 0.0 MiB free")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# ------------------------------------------------------------------------------------------- signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_cleanly_with_a_checkpoint(tiny, hf_cache, tmp_path, sig):
    out = tmp_path / "sig"
    argv = train_argv(tiny, out, "--save_steps", "1000", steps=100000)
    env = {**os.environ, "HF_DATASETS_CACHE": str(hf_cache / "datasets"), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ptune", *argv], stderr=subprocess.PIPE, text=True, env=env
    )
    lines = []
    for line in proc.stderr:  # ptune logs this line once the handlers are installed
        lines.append(line)
        if "SIGTERM or SIGHUP stops after the current step" in line:
            break
    time.sleep(1.5)  # a few steps into training
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=120)
    err = "".join(lines) + err
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    (ckpt,) = out.glob("checkpoint-*")
    step = int(ckpt.name.split("-")[1])
    assert err.strip().splitlines()[-1] == (
        f"ptune train: stopped by {sig.name} after step {step}; checkpoint-{step} is saved: continue with "
        "--resume_from_checkpoint true"
    )
    assert state(ckpt)["global_step"] == step and (ckpt / "optimizer.pt").is_file()


def test_a_cpu_run_warns_nothing_about_pin_memory_and_counts_its_flops(tiny, hf_cache, tmp_path):
    import warnings

    out = tmp_path / "quiet"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(train_argv(tiny, out, steps=2)) == 0
    assert not [w for w in caught if "pin_memory" in str(w.message)]
    flos = state(out)["total_flos"]  # (the Trainer's printer drops it from the printed metrics)
    tokens = flos / (4 * 127_552)  # 4·N per real token, N = the tiny model's matmul params
    assert flos > 0 and tokens == int(tokens)
