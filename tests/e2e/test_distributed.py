"""Two processes on the CPU: `torchrun` and `accelerate launch --multi_gpu` train what one process does.

On the CPU the process group uses gloo without being told (`--ddp_backend gloo` is not needed; in a plain
one-process run it even fails: accelerate then expects a process group that nobody started).

2 processes x batch 4 against 1 process x batch 8, --prefix_dropout 0 (dropout masks are drawn per rank, so
only without dropout are the two the same computation). Both see the same 8 examples per step: the sampler's
order comes from --data_seed, and the distributed dataloader hands consecutive batches of 4 to the ranks.
The Trainer divides each rank's summed loss by the answer tokens of the whole global batch (gathered), so
the averaged gradient equals the single-process one up to float32 summation order.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ptune.cli import main
from ptune.train.checkpoint import step_checkpoints
from tests.parsing import demo_train_argv

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
KEY = "transformer.prefix_encoder.embedding.weight"
STEPS = 12
CHECKPOINT_FILES = {
    "model.safetensors",
    "prefix_config.json",
    "optimizer.pt",
    "scheduler.pt",
    "trainer_state.json",
    "tokenizer.model",
    "tokenizer_config.json",
}
# Tolerance: float32 rounding differs (two partial sums + an all-reduce instead of one sum), ~1 ulp of the
# loss and gradient; Adam then moves each weight by at most ~lr = 3e-2 per step, and 12 such steps can carry
# a rounding difference of a few ulps of the weights (|w| < 4, ulp 2.4e-7 → observed 2.4e-7). 1e-5 is 40
# such ulps and 3 000 times below one Adam step: a real difference (other batches, a missing all-reduce)
# moves weights by ~1e-2. Adam ignores a constant gradient scale, so a wrong loss scale (e.g. a loss not
# divided by the world size) would not show in the weights: the logged losses and gradient norms are
# compared as well.
ATOL_PREFIX = 1e-5
RTOL_LOGS = 1e-5


def train_argv(tiny: Path, out: Path, batch: int) -> list[str]:
    return demo_train_argv(
        tiny,
        out,
        "--max_source_length",
        "32",
        "--max_target_length",
        "32",
        "--per_device_train_batch_size",
        str(batch),
        "--max_steps",
        str(STEPS),
        "--save_steps",
        "6",
        "--logging_steps",
        "2",
        "--learning_rate",
        "3e-2",
        "--pre_seq_len",
        "8",
        "--prefix_dropout",
        "0",
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
    )


def prefix(folder: Path) -> torch.Tensor:
    return load_file(str(folder / "model.safetensors"))[KEY]


def logs(folder: Path) -> list[tuple[int, float, float]]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return [(h["step"], h["loss"], h["grad_norm"]) for h in history if "loss" in h]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single(tiny, hf_cache, tmp_path_factory) -> Path:
    """The same training in this process: one process, batch 8."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(train_argv(tiny, out, batch=8)) == 0
    return out


def child_env(hf_cache: Path, **extra: str) -> dict[str, str]:
    """This environment for ptune's child processes: the test's datasets cache, this checkout first on the
    path, and torchrun on PATH (the scripts call it by name)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "HF_HOME": str(hf_cache),
        "HF_DATASETS_CACHE": str(hf_cache / "datasets"),
        "PYTHONPATH": python_path,
        "PATH": path,
        **extra,
    }


def launch(
    command: list[str], tiny: Path, hf_cache: Path, tmp_path: Path, extra: tuple[str, ...] = (), **env: str
) -> tuple[Path, str]:
    """Run `command train ARGS` (2 processes x batch 4) from an empty folder; (output_dir, its output).
    `command`: a launcher module run with `-m ptune` (["torch.distributed.run", ...]) or a script (["bash", X])."""
    cwd, out = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    argv = train_argv(tiny, out, batch=4)
    if command[0] == "bash":  # scripts/*.sh add `-m ptune train` themselves
        argv = argv[1:]
    else:
        command = [sys.executable, "-m", *command, "-m", "ptune"]
    proc = subprocess.run(
        [*command, *argv, *extra],
        cwd=cwd,
        env=child_env(hf_cache, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert list(cwd.iterdir()) == []  # nothing written relative to the working directory by either rank
    return out, output


def check_like_single(out: Path, output: str, single: Path) -> None:
    # Rank 0 writes everything; each rank writes only its own RNG state.
    assert {p.name for p in out.iterdir()} == {p.name for p in single.iterdir()}
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]
    for ckpt in out.glob("checkpoint-*"):
        assert {p.name for p in ckpt.iterdir()} == CHECKPOINT_FILES | {"rng_state_0.pth", "rng_state_1.pth"}
        assert {p.name for p in (single / ckpt.name).iterdir()} == CHECKPOINT_FILES | {"rng_state.pth"}
    assert output.count("***** train metrics *****") == 1  # printed by rank 0 only
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS and state["train_batch_size"] == 4
    # The same training as one process with batch 8.
    got, want = logs(out), logs(single)
    assert [s for s, _, _ in got] == [s for s, _, _ in want] == list(range(2, STEPS + 1, 2))
    for (_, loss, norm), (_, loss1, norm1) in zip(got, want, strict=True):
        assert loss == pytest.approx(loss1, rel=RTOL_LOGS) and norm == pytest.approx(norm1, rel=RTOL_LOGS)
    assert torch.allclose(prefix(out), prefix(single), rtol=0, atol=ATOL_PREFIX)
    assert torch.allclose(
        prefix(out / "checkpoint-6"), prefix(single / "checkpoint-6"), rtol=0, atol=ATOL_PREFIX
    )
    moved = (prefix(single) - prefix(single / "checkpoint-6")).abs().max()
    assert moved > 1000 * ATOL_PREFIX  # the tolerance is far below what training changes


def test_torchrun_two_cpu_processes_train_like_one(tiny, hf_cache, single, tmp_path):
    check_like_single(*launch(TORCHRUN, tiny, hf_cache, tmp_path), single)


TORCHRUN = ["torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
FSDP = ("--fsdp", "full_shard auto_wrap")


def decoder_shares(output: str) -> dict[int, tuple[int, int]]:
    """{rank: (held, total)} from each process's "FSDP: process R holds X of Y decoder parameters" line."""
    found = re.findall(r"FSDP: process (\d) holds (\d+) of (\d+) decoder parameters", output)
    return {int(rank): (int(held), int(total)) for rank, held, total in found}


@pytest.fixture(scope="module")
def fsdp_run(tiny, hf_cache, single, tmp_path_factory) -> tuple[Path, str]:
    """scripts/fsdp_train.sh with 2 processes: torchrun, --fsdp "full_shard auto_wrap" and scripts/fsdp_config.json."""
    script = ["bash", str(REPO / "scripts" / "fsdp_train.sh")]
    return launch(script, tiny, hf_cache, tmp_path_factory.mktemp("fsdp"), NUM_GPUS="2")


def test_fsdp_shards_the_decoder_and_trains_like_one_process(fsdp_run, single):
    """`--fsdp "full_shard auto_wrap"`: each process holds half of every decoder layer (FSDP2 shards dim 0;
    the tiny model's widths are even) and the prefix trains as one process with the same global batch does.
    The checkpoints hold ptune's files only: no `pytorch_model_fsdp*`, no DCP shards of the base."""
    out, output = fsdp_run
    shares = decoder_shares(output)
    total = shares[0][1]
    assert shares == {0: (total // 2, total), 1: (total // 2, total)} and total > 0
    check_like_single(out, output, single)


def test_fsdp_resume_continues_exactly_and_evaluates(fsdp_run, tiny, hf_cache, tmp_path):
    """Stopped at step 6 (only checkpoint-6 kept) and resumed under FSDP, with activation checkpointing on
    this time: the same prefix, to the bit, as the uninterrupted FSDP run (activation checkpointing recomputes
    the same operations; the prefix's Adam state is gathered into optimizer.pt and re-sharded). Its evaluation
    at step 12 runs under FSDP too: the eval_loss one process computes for that prefix on the same batches."""
    out, _ = fsdp_run
    resumed = tmp_path / "run"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-6", resumed / "checkpoint-6")
    evaluation = ("--validation_file", str(DEMO / "dev.json"), "--per_device_eval_batch_size", "4")
    extra = (
        *FSDP,
        "--resume_from_checkpoint",
        "true",
        "--activation_checkpointing",
        "true",
        *evaluation,
        "--eval_strategy",
        "steps",
        "--eval_steps",
        str(STEPS),
    )
    again, output = launch(TORCHRUN, tiny, hf_cache, tmp_path, extra)
    assert again == resumed and "resuming from" in output
    assert torch.equal(prefix(again), prefix(out))
    assert logs(again) == logs(out)  # the log history: the checkpoint's first half, then the same steps
    history = json.loads((again / "trainer_state.json").read_text())["log_history"]
    [fsdp_eval] = [h["eval_loss"] for h in history if "eval_loss" in h]
    one = tmp_path / "eval-one"
    eval_argv = [
        "eval",
        "--model_name_or_path",
        str(tiny),
        "--ptuning_checkpoint",
        str(again),
        "--output_dir",
        str(one),
        "--prompt_column",
        "content",
        "--response_column",
        "summary",
        "--max_source_length",
        "32",
        "--max_target_length",
        "32",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        *evaluation,
    ]
    assert main(eval_argv) == 0
    one_eval = json.loads((one / "eval_results.json").read_text())["eval_loss"]
    assert fsdp_eval == pytest.approx(one_eval, rel=RTOL_LOGS)


def test_accelerate_launch_multi_gpu_on_cpu_trains_like_one(tiny, hf_cache, single, tmp_path):
    """`accelerate launch --multi_gpu` starts 2 CPU processes (`--cpu --num_processes 2` would start one)."""
    pytest.importorskip("accelerate")
    launcher = [
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
    check_like_single(*launch(launcher, tiny, hf_cache, tmp_path), single)


def test_torchrun_two_processes_predict_like_one(tiny, hf_cache, single, tmp_path):
    """Predictions are gathered across ranks in the file's order; rank 0 alone writes them."""

    def predict_argv(out: Path) -> list[str]:
        return [
            "predict",
            "--model_name_or_path",
            str(tiny),
            "--ptuning_checkpoint",
            str(single),
            "--test_file",
            str(DEMO / "dev.json"),
            "--prompt_column",
            "content",
            "--response_column",
            "summary",
            "--output_dir",
            str(out),
            "--max_source_length",
            "32",
            "--max_target_length",
            "8",
            "--per_device_eval_batch_size",
            "8",
            "--use_cpu",
            "true",
            "--disable_tqdm",
            "true",
            "--report_to",
            "none",
        ]

    assert main(predict_argv(tmp_path / "one")) == 0
    proc = subprocess.run(
        [sys.executable, "-m", *TORCHRUN, "-m", "ptune", *predict_argv(tmp_path / "two")],
        env=child_env(hf_cache),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    one = (tmp_path / "one" / "generated_predictions.txt").read_text(encoding="utf-8")
    two = (tmp_path / "two" / "generated_predictions.txt").read_text(encoding="utf-8")
    assert len(two.splitlines()) == 40 and two == one
    metrics = [json.loads((tmp_path / d / "predict_results.json").read_text()) for d in ("one", "two")]
    assert metrics[0]["predict_rouge-l"] == metrics[1]["predict_rouge-l"]


# ------------------------------------------------------------------------------------ several machines (loopback)
def start_node(
    rank: int, port: int, argv: list[str], hf_cache: Path, log: Path, run: str
) -> subprocess.Popen:
    """One "machine" of 2 (1 process each): scripts/train.sh with NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT, its
    own loopback address (127.0.0.1 / 127.0.0.2) so that torchrun's c10d rendezvous numbers the nodes alike on
    every start, as it does real machines by host name."""
    env = child_env(
        hf_cache,
        NNODES="2",
        NODE_RANK=str(rank),
        NODE_ADDR=f"127.0.0.{rank + 1}",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        NUM_GPUS="1",
        RDZV_ID=run,
    )
    with log.open("w") as sink:
        return subprocess.Popen(
            ["bash", str(REPO / "scripts" / "train.sh"), *argv],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


@contextlib.contextmanager
def nodes_of(argvs: list[list[str]], hf_cache: Path, tmp_path: Path, run: str):
    """Start both nodes (node 1 first: it waits for node 0's rendezvous); yields (nodes, log files). Whatever
    is still running on the way out is SIGKILLed, so a failed test leaves no process behind."""
    port = free_port()
    logs_ = [tmp_path / f"{run}-node{rank}.log" for rank in (0, 1)]
    nodes = [start_node(rank, port, argvs[rank], hf_cache, logs_[rank], run) for rank in (1, 0)][::-1]
    try:
        yield nodes, logs_
    finally:
        for node in nodes:
            if node.poll() is None:
                sigkill_node(node)


def run_nodes(argvs: list[list[str]], hf_cache: Path, tmp_path: Path, run: str) -> list[str]:
    """Both nodes to the end; their outputs (each must exit 0)."""
    with nodes_of(argvs, hf_cache, tmp_path, run) as (nodes, logs_):
        for node, log in zip(nodes, logs_, strict=True):
            assert node.wait(timeout=240) == 0, log.read_text()[-4000:]
        return [log.read_text() for log in logs_]


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (torchrun's workers run in sessions of their own)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def sigkill_node(node: subprocess.Popen) -> None:
    """SIGKILL a node as a machine dies: its torchrun agent and its worker at once."""
    for pid in [*children(node.pid), node.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.wait(timeout=30)


def node_argv(tiny: Path, out: Path, *extra: str) -> list[str]:
    return [*train_argv(tiny, out, batch=4)[1:], *extra]


def test_two_nodes_shared_folder_train_like_one_node(tiny, hf_cache, single, tmp_path):
    """2 machines x 1 process into one shared folder: global rank 0 alone writes each checkpoint, every rank
    adds its RNG file, and the run is the 1 machine x 2 processes run (same batches, same all-reduce)."""
    out = tmp_path / "shared"
    outputs = run_nodes([node_argv(tiny, out)] * 2, hf_cache, tmp_path, "shared")
    check_like_single(out, "".join(outputs), single)
    assert [o.count("***** train metrics *****") for o in outputs] == [1, 0]  # rank 0 is NODE_ADDR 127.0.0.1


def test_two_nodes_own_folders_sigkill_one_and_restart_both(tiny, hf_cache, single, tmp_path):
    """2 machines x 1 process, each writing into its own folder (--save_on_each_node): each folder gets every
    checkpoint, with the RNG file of its own rank only. Node 1 is SIGKILLed once it has checkpoint-6 (node 0
    then has checkpoint-4 at least: a save waits for every rank before the next step) and its checkpoints after
    step 2 are removed, as if it had died before renaming them into place. Restarted with
    --resume_from_checkpoint true, both nodes continue from checkpoint-2, the newest step both hold complete,
    and end where one process with the same global batch does."""
    outs = [tmp_path / "node0", tmp_path / "node1"]
    argvs = [node_argv(tiny, out, "--save_on_each_node", "true", "--save_steps", "2") for out in outs]
    with nodes_of(argvs, hf_cache, tmp_path, "killed") as (nodes, logs_):
        deadline = time.monotonic() + 240
        while not (outs[1] / "checkpoint-6").is_dir():
            assert nodes[1].poll() is None and time.monotonic() < deadline, logs_[1].read_text()[-4000:]
            time.sleep(0.02)
        sigkill_node(nodes[1])
        with contextlib.suppress(subprocess.TimeoutExpired):
            nodes[0].wait(timeout=60)  # its worker fails on the lost peer (else it is killed on the way out)
    assert nodes[1].returncode == -signal.SIGKILL
    assert not (outs[1] / "checkpoint-12").exists()  # killed before the end
    for out, rank in zip(outs, (0, 1), strict=True):
        for ckpt in out.glob("checkpoint-*"):
            assert {p.name for p in ckpt.iterdir()} == CHECKPOINT_FILES | {f"rng_state_{rank}.pth"}
    assert (outs[0] / "checkpoint-4").is_dir()
    for step, ckpt in step_checkpoints(outs[1]):
        if step > 2:
            shutil.rmtree(ckpt)
    outputs = run_nodes(
        [[*a, "--resume_from_checkpoint", "true"] for a in argvs], hf_cache, tmp_path, "again"
    )
    assert all(f"resuming from {out / 'checkpoint-2'}" in o for out, o in zip(outs, outputs, strict=True))
    assert "the newest step every process holds complete" in outputs[0]
    # The run's final files (trainer_state.json, *_results.json) are global rank 0's: node 0's folder.
    for out, state in zip(outs, (outs[0], outs[1] / "checkpoint-12"), strict=True):
        assert torch.allclose(prefix(out), prefix(single), rtol=0, atol=ATOL_PREFIX)
        got, want = logs(state), logs(single)
        assert [s for s, _, _ in got] == [s for s, _, _ in want]
        for (_, loss, norm), (_, loss1, norm1) in zip(got, want, strict=True):
            assert loss == pytest.approx(loss1, rel=RTOL_LOGS) and norm == pytest.approx(norm1, rel=RTOL_LOGS)
    assert torch.equal(prefix(outs[0]), prefix(outs[1]))
