"""`ptune plan CONFIG [--flag value ...] [--gpu_memory 24GiB] [--device_name H100] [--device cuda|cpu]
[--max_batch 16] [--max_length 2048] [--json FILE]`: the config and flags of `ptune train` plus the plan's own
(PlanArguments), read by the one parser of every verb.
Only config.json of --model_name_or_path is read (no weights); with --train_file the lengths come from the
real data, encoded as training encodes it (the tokenizer files are needed then)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ptune.config.args import ARGUMENT_CLASSES
from ptune.config.argtypes import check_at_least, check_choices
from ptune.config.parse import parse_args
from ptune.config.parser import Command
from ptune.data.labels import IGNORE_INDEX
from ptune.io.errors import UserError
from ptune.plan import devices
from ptune.plan.report import PARTS, PlanInputs, make_plan


@dataclass
class PlanArguments:
    """`ptune plan`'s own flags; the rest are ptune train's (ptune.config.args)."""

    gpu_memory: str | None = field(
        default=None,
        metadata={"help": "Memory of the GPU to plan for, e.g. 24GiB (default: --device_name's)."},
    )
    device_name: str | None = field(
        default=None,
        metadata={"help": f"A GPU whose memory and peak FLOP/s to plan with ({', '.join(devices.DEVICES)})."},
    )
    device: Literal["cuda", "cpu"] = field(default="cuda", metadata={"help": "Where the run would go."})
    json: str | None = field(default=None, metadata={"help": "Also write the plan to this JSON file."})
    max_batch: int = field(default=16, metadata={"help": "serve: most requests generated together."})
    max_length: int = field(
        default=2048, metadata={"help": "serve: most prompt + answer tokens per request."}
    )

    def __post_init__(self):
        check_choices(self)
        check_at_least(self, 1, "max_batch")
        check_at_least(self, 3, "max_length")


COMMAND = Command(
    "ptune plan",
    (*ARGUMENT_CLASSES, PlanArguments),
    "Predicted peak memory and FLOPs of the run a config describes: train, eval, predict and serve steps "
    "traced with fake tensors (only config.json of --model_name_or_path is read; with --train_file, the "
    "real data's lengths). Reads the config and flags of ptune train, plus the plan's own.",
    "ptune plan [CONFIG.json|CONFIG.yaml] [--name value ...] [--gpu_memory 24GiB] [--device_name H100]",
    config=True,
    # Nothing is written, and without --train_file the lengths are max_source_length + max_target_length.
    defaults=(("output_dir", "<plan: nothing is written>"), ("train_file", "<none>")),
)


def parse(argv: list[str]) -> tuple[PlanInputs, str | None]:
    """PlanInputs from `ptune plan`'s arguments, and the --json path."""
    from ptune.io.files import read_json

    model, data, training, gen, flags = parse_args("train", argv, COMMAND)
    cfg = read_json(Path(model.model_name_or_path) / "config.json")
    device = torch.device(flags.device)
    dtype = _dtype(model.dtype, device)
    seq, answer = data.max_source_length + data.max_target_length, data.max_target_length
    samples = tokens = where = None
    if data.train_file not in (None, "<none>"):
        seq, answer, samples, tokens = data_lengths(model, data, training)
        where = f"the longest encoded sample of {data.train_file}"
    memory = flags.gpu_memory
    inputs = PlanInputs(
        cfg=cfg,
        folder=model.model_name_or_path,
        dtype=dtype,
        pre_seq_len=model.pre_seq_len or 0,
        projection=bool(model.prefix_projection),
        bits=model.quantization_bit,
        train_batch=training.per_device_train_batch_size,
        eval_batch=training.per_device_eval_batch_size,
        seq=seq,
        answer=answer,
        prompt=data.max_source_length,
        new_tokens=gen.max_new_tokens,
        checkpointing=bool(training.activation_checkpointing),
        device=device.type,
        gpu_memory=_memory(memory, flags.device_name),
        device_name=flags.device_name,
        samples=samples,
        tokens=tokens,
        serve_batch=flags.max_batch,
        serve_length=flags.max_length,
        lengths_from=where or "max_source_length + max_target_length",
    )
    return inputs, flags.json


def _dtype(name: str, device: torch.device) -> torch.dtype:
    from ptune.model.devices import DTYPES

    if name == "auto":  # as resolve_dtype decides on a bf16-capable GPU / on the CPU
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def _memory(text: str | None, device_name: str | None) -> int | None:
    if text is not None:
        try:
            return devices.parse_memory(text)
        except ValueError as e:
            raise UserError(f"--gpu_memory: {e}") from None
    if device_name is not None:
        return int(_spec(device_name)[1] * devices.GIB)
    return None


def _spec(name: str) -> tuple[float, float]:
    try:
        return devices.device_spec(name)
    except KeyError:
        raise UserError(f"--device_name {name}: unknown (known: {', '.join(devices.DEVICES)})") from None


def data_lengths(model_args, data_args, training_args) -> tuple[int, int, int, int]:
    """(longest sample, the most supervised tokens of a sample, samples, tokens) of the training data, encoded
    as ptune train encodes it (the tokenizer and ptune.data.splits's path, cached like a training run's)."""
    from ptune.families.registry import load_tokenizer
    from ptune.train.recipe import PTuningRecipe

    recipe = PTuningRecipe("train", model_args, data_args, training_args, None)
    recipe.tokenizer = load_tokenizer(
        model_args.tokenizer_name or model_args.model_name_or_path, model_args.chat_format
    )
    ds = recipe.dataset(data_args.train_file, data_args.max_target_length, data_args.max_train_samples)
    seq = max(len(ids) for ids in ds["input_ids"])
    answer = max(sum(1 for t in labels[1:] if t != IGNORE_INDEX) for labels in ds["labels"])
    return seq, answer, len(ds), sum(len(ids) for ids in ds["input_ids"])


def format_plan(plan: dict) -> str:
    """The plan as aligned text: one row per phase, GiB per part, then the batch and FLOPs lines."""
    i = plan["inputs"]
    lines = [
        f"plan for {i['folder']} ({i['dtype']}"
        + (f", int{i['bits']}" if i["bits"] else "")
        + f", P={i['pre_seq_len']}, device {i['device']}); lengths: {i['seq']} tokens ({i['answer']} answer) from "
        f"{i['lengths_from']}; traced under FakeTensorMode (no weights read)",
        f"{'phase':<34}" + "".join(f"{p:>12}" for p in PARTS) + f"{'peak GiB':>12}",
    ]
    what = {
        "train": f"train step {i['train_batch']} x {i['seq']}" + (" (ckpt)" if i["checkpointing"] else ""),
        "eval": f"eval batch {i['eval_batch']} x {i['seq']}",
        "predict": f"predict {i['eval_batch']} x {i['prompt']}+{i['new_tokens']}",
        "serve": f"serve {i['serve_batch']} x {i['serve_length']}",
    }
    for name in i["phases"]:
        row = plan[name]
        lines.append(
            f"{what[name]:<34}"
            + "".join(f"{_gib(row[p + '_gib']):>12}" for p in PARTS)
            + f"{_gib(row['peak_gib']):>12}"
        )
    t = plan.get("train", {})
    if "max_micro_batch" in t:
        lines.append(
            f"largest micro-batch in {i['gpu_memory'] / devices.GIB:.1f} GiB: {t['max_micro_batch_no_checkpointing']}"
            f" without activation checkpointing, {t['max_micro_batch_checkpointing']} with it"
        )
    if "flops_per_sample" in t:
        line = (
            f"training FLOPs per sample: {t['flops_per_sample']:.3e} (4·N per token x {t['tokens_per_sample']:.0f}"
            f" tokens, N = {t['matmul_params']:.3e})"
        )
        if "epoch_seconds_lower_bound" in t:
            line += (
                f"; {t['epoch_samples']} samples take at least {t['epoch_seconds_lower_bound']:.0f} s on "
                f"{i['device_name']} at its {t['peak_tflops']:.0f} TFLOP/s peak (a lower bound: real runs reach "
                "a fraction of peak)"
            )
        lines.append(line)
    return "\n".join(lines)


def _gib(x: float) -> str:
    return f"{x:.2f}" if x >= 1 or x == 0 else f"{x:.3g}"


def main(argv: list[str]) -> int:
    """`ptune plan ...`: print the plan (and write --json)."""
    from ptune.io.files import write_json

    quiet, level = logging.getLogger("ptune"), logging.getLogger("ptune").level
    quiet.setLevel(logging.WARNING)  # the data reading's info lines would interleave with the plan
    try:
        inputs, json_path = parse(argv)
        plan = make_plan(inputs)
    finally:
        quiet.setLevel(level)  # in-process callers (tests, the Python API) keep their logging
    print(format_plan(plan))
    if json_path:
        write_json(json_path, plan)  # strict JSON, written atomically
    return 0
