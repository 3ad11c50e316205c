"""THUDM's and transformers 4's argument names that ptune accepts but does not take as given: one table.

THUDM's `ptuning/arguments.py` and the transformers 4 `Seq2SeqTrainingArguments` its scripts were written for
declare names that are gone, or mean nothing, here. Failing on THUDM's own scripts and configs would be
unhelpful, and silently ignoring a setting misleads, so each such name is one row of `FLAGS`:

- `Renamed`: a training argument transformers 5 removed; its value maps exactly onto the 5.x name before
  transformers validates the arguments (`map_renamed`), and giving both names with different meanings is an
  error (`check_renamed_pairs`).
- `Dead`: a flag THUDM declared but never read; accepted at its default, refused otherwise with the reason
  (`refuse_dead`, called by each argument dataclass).

Settings ptune refuses because it does not implement them (beam search, `generation_max_length`) are checked
by `refuse_unimplemented`. `overwrite_output_dir` and `logging_dir` keep their old meaning (`route_logging_dir`
and ptune.train.rundir). The dataclasses themselves are in ptune.config.args; this module only reads and sets their fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ptune.config.argtypes import BadArgument


@dataclass(frozen=True)
class Renamed:
    """A training argument transformers 5 removed (`old`), and the 5.x argument its value maps onto (`new`)."""

    old: str
    new: str


@dataclass(frozen=True)
class Dead:
    """A flag THUDM declared but never read: only `accepted`, its default, passes.

    `why` says why ptune has no use for it; `shown` is the value the error shows after the flag, if any.
    """

    name: str
    accepted: Any
    why: str
    shown: str = ""


_LOCAL_FILES = "ptune reads local files: use --train_file, --validation_file or --test_file"

FLAGS = (
    # transformers 4 training names (TrainingArguments): each maps exactly.
    Renamed("evaluation_strategy", "eval_strategy"),
    Renamed("no_cuda", "use_cpu"),
    Renamed("per_gpu_train_batch_size", "per_device_train_batch_size"),
    Renamed("per_gpu_eval_batch_size", "per_device_eval_batch_size"),
    Renamed("warmup_ratio", "warmup_steps"),
    Renamed("group_by_length", "train_sampling_strategy"),
    Renamed("gradient_checkpointing", "activation_checkpointing"),
    Renamed("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
    # THUDM's ModelArguments
    Dead("config_name", None, "the model config is always read from --model_name_or_path"),
    Dead("use_fast_tokenizer", True, "each model family has exactly one tokenizer", "false"),
    Dead(
        "model_revision",
        "main",
        "download the revision you want and pass its folder as --model_name_or_path",
    ),
    Dead("resize_position_embeddings", None, "position embeddings always keep the checkpoint's size"),
    Dead(
        "use_auth_token", False, "ptune loads local folders and never contacts the Hugging Face Hub", "true"
    ),
    # THUDM's DataTrainingArguments
    Dead("lang", None, "the data's language changes nothing in how it is read or scored"),
    Dead("dataset_name", None, _LOCAL_FILES),
    Dead("dataset_config_name", None, _LOCAL_FILES),
    Dead("pad_to_max_length", False, "batches are padded to their longest sample"),
    Dead("forced_bos_token", None, "it is for encoder-decoder translation models"),
    # transformers 4 training flags (TrainingArguments)
    Dead("save_safetensors", True, "checkpoints are always written as safetensors", "false"),
    Dead("include_inputs_for_metrics", False, "ptune's metrics read only predictions and labels"),
)
RENAMED_TRAINING_ARGUMENTS = tuple((row.old, row.new) for row in FLAGS if isinstance(row, Renamed))


def dead(name: str, why: str, value: str = "") -> BadArgument:
    """The error for a flag THUDM declared but never read, set to a non-default value (shown if given)."""
    flag = f"--{name} {value}" if value else f"--{name}"
    return BadArgument(f"{flag} has no effect in ptune: {why}; remove it", name)


def _is_set(row: Dead, value: Any) -> bool:
    """Whether a dead flag's value differs from the one accepted (booleans by truth, as THUDM read them)."""
    if row.accepted is None:
        return value is not None
    if isinstance(row.accepted, bool):
        return bool(value) != row.accepted
    return value != row.accepted


def refuse_dead(obj: Any) -> None:
    """Raise for the first dead flag among a dataclass's fields (in table order) that is set."""
    names = {f.name for f in dataclasses.fields(obj)}
    for row in FLAGS:
        if isinstance(row, Dead) and row.name in names and _is_set(row, getattr(obj, row.name)):
            raise dead(row.name, row.why, row.shown)


def renamed_value(old: str, value: Any) -> Any:
    """The 5.x value that an old-name value means, or None when the old name is unset."""
    if old in ("no_cuda", "group_by_length"):
        if not value:
            return None
        return True if old == "no_cuda" else "group_by_length"
    return value


def map_renamed(training: Any) -> None:
    """Move values given under removed names onto the 5.x names (parse_args reports given contradictions)."""
    defaults = {f.name: f.default for f in dataclasses.fields(training)}
    for old, new in RENAMED_TRAINING_ARGUMENTS:
        value = renamed_value(old, getattr(training, old))
        if value is None:
            continue
        if old == "warmup_ratio" and not 0 <= value < 1:
            raise BadArgument(
                f"--warmup_ratio must be at least 0 and below 1, got {value} (transformers 5 reads a "
                "warmup_steps below 1 as a ratio; give a number of steps as --warmup_steps)",
                "warmup_ratio",
            )
        # The new name wins when both were set (only possible when constructing the class directly).
        if getattr(training, new) == defaults[new]:
            setattr(training, new, value)
        if not old.startswith("gradient_checkpointing"):  # those mirror the new name, as transformers does
            setattr(training, old, defaults[old])


def check_renamed_pairs(given: set[str], values: dict[str, Any]) -> None:
    """An old training name and its 5.x name both given with different meanings: say which to keep."""
    for old, new in RENAMED_TRAINING_ARGUMENTS:
        value = renamed_value(old, values[old])
        if old in given and new in given and value is not None and value != values[new]:
            raise BadArgument(
                f"--{old} and --{new} disagree: {old} is the old name of {new}; keep only --{new}", old, new
            )


def route_logging_dir(training: Any) -> None:
    """`logging_dir` used to be TensorBoard's folder, and TensorBoard was on by default: keep that meaning."""
    if training.logging_dir is None:
        return
    reports = training.report_to
    reports = [] if reports is None else [reports] if isinstance(reports, str) else list(reports)
    if reports in ([], ["none"]):
        training.report_to = ["tensorboard"]
    elif "tensorboard" not in reports and "all" not in reports:
        raise BadArgument(
            f"--logging_dir is where TensorBoard logs go, but --report_to {' '.join(reports)} leaves "
            "TensorBoard out: add tensorboard to --report_to or remove --logging_dir",
            "logging_dir",
            "report_to",
        )


def refuse_unimplemented(data: Any, training: Any) -> None:
    """Settings ptune does not implement (checked once all argument dataclasses exist): name the alternative."""
    for name, beams in (
        ("num_beams", data.num_beams),
        ("generation_num_beams", training.generation_num_beams),
    ):
        if beams is not None and beams > 1:
            raise BadArgument(
                f"--{name} {beams}: ptune generates greedily, or samples with --do_sample true; "
                "beam search is not implemented",
                name,
            )
    if training.generation_max_length is not None:
        raise BadArgument(
            "--generation_max_length is not read by ptune: limit answers with --max_new_tokens",
            "generation_max_length",
        )
    if not data.ignore_pad_token_for_loss:
        raise dead(
            "ignore_pad_token_for_loss",
            "batches are padded to their longest sample and padding never enters the loss",
            "false",
        )
