"""The plan at the start of `ptune train`: one line with the predicted peak, and on CUDA a refusal (exit 2, one
line naming flags that would fit) when the plan exceeds the free device memory by more than
`devices.REFUSE_MARGIN`, unless --ignore_plan true. Lengths are max_source_length + max_target_length (the
longest a sample can be after encoding), so the check runs before the data is read or the weights loaded."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from ptune.io.errors import UserError
from ptune.plan import devices

logger = logging.getLogger("ptune")


def refusal(peak: int, free: int, alternatives: dict[str, int]) -> str | None:
    """None when `peak` bytes fit `free` within the margin; else the one-line reason, naming the alternatives
    (flags → their predicted peak) that fit, best (largest peak that still fits) first."""
    if peak <= free * (1 + devices.REFUSE_MARGIN):
        return None
    gib = devices.GIB
    fitting = sorted((p, flags) for flags, p in alternatives.items() if p <= free)
    advice = (
        "; would fit: " + " or ".join(f"{flags} ({p / gib:.1f} GiB)" for p, flags in reversed(fitting))
        if fitting
        else "; no single change of --per_device_train_batch_size, --activation_checkpointing or "
        "--quantization_bit fits"
    )
    return (
        f"the plan predicts a peak of {peak / gib:.1f} GiB but only {free / gib:.1f} GiB of the GPU is free "
        f"(margin {devices.REFUSE_MARGIN:.0%}){advice}; --ignore_plan true starts anyway"
    )


def alternatives(inputs) -> dict[str, int]:
    """Predicted peaks of the single changes that lower memory: checkpointing on, micro-batch 1 (with the same
    effective batch through gradient accumulation), and 4-bit quantization."""
    from ptune.plan.report import train_parts

    options = {}
    if not inputs.checkpointing:
        options["--activation_checkpointing true"] = sum(
            train_parts(inputs, inputs.train_batch, True).values()
        )
    if inputs.train_batch > 1:
        steps = inputs.train_batch * inputs.grad_accum  # the same effective batch
        flags = f"--per_device_train_batch_size 1 --gradient_accumulation_steps {steps}"
        options[flags] = sum(train_parts(inputs, 1, inputs.checkpointing).values())
    if inputs.bits != 4:
        four = dataclasses.replace(inputs, bits=4, cache={})
        options["--quantization_bit 4"] = sum(
            train_parts(four, inputs.train_batch, inputs.checkpointing).values()
        )
    return options


def check_training_plan(model_args, data_args, training_args) -> str | None:
    """The line that tells the plan's peak of this run (the recipe logs it once the data is read, so that a
    bad data file still fails with its one line alone); on CUDA refuse a run that will not fit (UserError →
    exit 2), before a byte of weights is read."""
    from ptune.io.files import read_json
    from ptune.plan.report import PlanInputs, train_parts

    if model_args.ptuning_checkpoint or not model_args.pre_seq_len:
        return None  # the prefix shape comes from a checkpoint: planned by `ptune plan`, not here
    device = training_args.device
    from ptune.model.devices import resolve_dtype

    try:
        inputs = PlanInputs(
            cfg=read_json(Path(model_args.model_name_or_path) / "config.json"),
            folder=model_args.model_name_or_path,
            dtype=resolve_dtype(model_args.dtype, device),
            pre_seq_len=model_args.pre_seq_len,
            projection=bool(model_args.prefix_projection),
            bits=model_args.quantization_bit,
            train_batch=training_args.per_device_train_batch_size,
            eval_batch=training_args.per_device_eval_batch_size,
            seq=data_args.max_source_length + data_args.max_target_length,
            answer=data_args.max_target_length,
            prompt=data_args.max_source_length,
            new_tokens=data_args.val_max_target_length,
            checkpointing=bool(training_args.activation_checkpointing),
            device=device.type,
            grad_accum=training_args.gradient_accumulation_steps,
            phases=("train",),
        )
        peak = sum(train_parts(inputs, inputs.train_batch, inputs.checkpointing).values())
    except Exception as error:  # noqa: BLE001 - a plan is advice: a folder the trace cannot build is for the
        # model loader to refuse (with its own one-line message), right after this
        logger.debug("plan: not available for this run (%s)", " ".join(str(error).split())[:200])
        return None
    line = (
        f"plan: a training step of {inputs.train_batch} x {inputs.seq} tokens peaks at "
        f"{peak / devices.GIB:.3g} GiB of {device.type} memory (ptune plan for the details)"
    )
    if device.type != "cuda" or model_args.ignore_plan:
        return line
    free = torch.cuda.mem_get_info(device)[0]
    message = refusal(peak, free, alternatives(inputs) if peak > free else {})
    if message:
        raise UserError(message)
    return line
