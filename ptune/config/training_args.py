"""`TrainingArguments`: transformers' Seq2SeqTrainingArguments, plus the transformers 4 names THUDM's scripts use.

THUDM's `train.sh` passes `--overwrite_output_dir`, `--evaluation_strategy`, `--per_gpu_*` ... which transformers
5 removed. They are declared here again so that those scripts parse; ptune.config.compat maps each onto its 5.x name
(or refuses it, for the dead ones) before transformers validates the arguments. `early_stopping_patience` is
ptune's own addition. transformers' own checks (ValueError, ImportError) become one-line `UserError`s.
"""

import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

from transformers import Seq2SeqTrainingArguments

from ptune.config.argtypes import BadArgument, check_at_least, check_choices
from ptune.config.compat import map_renamed, refuse_dead, route_logging_dir
from ptune.io.errors import UserError

# transformers has DeepSpeed write its own checkpoint (the whole base included: it leaves frozen weights out only
# for PEFT models) and resume from it instead of ptune's prefix files; nothing here could run it to check.
DEEPSPEED_REFUSED = (
    "--deepspeed: ptune does not run under DeepSpeed (its checkpoints would hold the whole base, not the "
    'prefix); to shard the frozen base over GPUs use --fsdp "full_shard auto_wrap" (scripts/fsdp_train.sh)'
)


def _tensorboard_installed() -> bool:
    """Whether transformers' TensorBoard callback can run (it takes tensorboard or tensorboardX)."""
    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


@dataclass
class TrainingArguments(Seq2SeqTrainingArguments):
    """transformers' Seq2SeqTrainingArguments plus THUDM-era names removed in transformers 5 and ptune's additions.

    Removed names map onto their replacements before transformers validates the arguments (ptune.config.compat):
    evaluation_strategy -> eval_strategy, no_cuda -> use_cpu, per_gpu_*_batch_size -> per_device_*_batch_size,
    warmup_ratio -> warmup_steps (5.x reads a value below 1 as a ratio), group_by_length ->
    train_sampling_strategy, gradient_checkpointing(_kwargs) -> activation_checkpointing(_kwargs). After mapping,
    the old name reads as unset (gradient_checkpointing mirrors activation_checkpointing, as in transformers).
    `overwrite_output_dir` and `logging_dir` keep their old meaning (see their help).
    """

    _argument_group_name = "training (transformers Seq2SeqTrainingArguments, plus ptune's additions)"

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow writing into an output_dir that already holds a run (checkpoints, trainer state); "
            "without it ptune refuses, so that a run is not overwritten by mistake."
        },
    )
    logging_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder for TensorBoard logs; setting it turns on TensorBoard reporting (default when "
            "reporting to TensorBoard: output_dir/runs/DATE_HOST)."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop training after this many evaluations without improvement of metric_for_best_model "
            "(default metric: loss). Needs an eval_strategy and a validation_file."
        },
    )
    evaluation_strategy: Literal["no", "steps", "epoch"] | None = field(
        default=None, metadata={"help": "Old name of eval_strategy (removed in transformers 5)."}
    )
    no_cuda: bool = field(
        default=False, metadata={"help": "Old name of use_cpu (removed in transformers 5)."}
    )
    per_gpu_train_batch_size: int | None = field(
        default=None, metadata={"help": "Old name of per_device_train_batch_size."}
    )
    per_gpu_eval_batch_size: int | None = field(
        default=None, metadata={"help": "Old name of per_device_eval_batch_size."}
    )
    warmup_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Old name: warm up over this fraction of the steps (below 1); now warmup_steps < 1."
        },
    )
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "Old name of train_sampling_strategy group_by_length (batches of similar lengths)."
        },
    )
    save_safetensors: bool = field(
        default=True,
        metadata={"help": "Old flag: only true is accepted (ptune always saves safetensors)."},
    )
    include_inputs_for_metrics: bool = field(
        default=False,
        metadata={
            "help": "Old flag: only false is accepted (ptune's metrics read predictions and labels only)."
        },
    )

    def __post_init__(self):
        check_choices(self)
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):  # torch would raise mid-setup
            raise BadArgument(
                f"--learning_rate must be a finite number of at least 0, got {self.learning_rate}",
                "learning_rate",
            )
        if self.disable_tqdm is None and not sys.stderr.isatty():
            self.disable_tqdm = True  # progress bar updates written into a log file are noise
        refuse_dead(self)  # save_safetensors, include_inputs_for_metrics (ptune.config.compat.FLAGS)
        if self.deepspeed:  # before transformers imports deepspeed
            raise BadArgument(DEEPSPEED_REFUSED, "deepspeed")
        map_renamed(self)  # evaluation_strategy -> eval_strategy, ... before transformers validates
        # A batch of 0 rows divides by zero in the dataloader; numpy (transformers' set_seed) takes 0..2**32-1.
        check_at_least(self, 1, "per_device_train_batch_size", "per_device_eval_batch_size")
        for name in ("seed", "data_seed"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 2**32:
                raise BadArgument(f"--{name} must be from 0 to {2**32 - 1}, got {value}", name)
        route_logging_dir(self)
        if self.fp16 and self.bf16:
            raise BadArgument("--fp16 and --bf16 are both set: choose one", "fp16", "bf16")
        if self.early_stopping_patience is not None:
            check_at_least(self, 1, "early_stopping_patience")
            if str(getattr(self.eval_strategy, "value", self.eval_strategy)) == "no":
                raise BadArgument(
                    "--early_stopping_patience needs evaluations during training: set --eval_strategy steps "
                    "(or epoch)",
                    "early_stopping_patience",
                    "eval_strategy",
                )
            if self.metric_for_best_model is None:
                self.metric_for_best_model = "loss"
        try:
            super().__post_init__()
        except ValueError as error:  # transformers' own checks: one line, as every UserError
            raise UserError(" ".join(str(error).split())) from error
        except ImportError as error:  # an option whose package is missing
            raise UserError(f"a training option needs a package that is not installed: {error}") from error
        reports = self.report_to if isinstance(self.report_to, list) else [self.report_to]
        if "tensorboard" in reports and not _tensorboard_installed():
            raise BadArgument(
                "TensorBoard logging (--logging_dir or --report_to tensorboard) needs tensorboard: "
                "pip install tensorboard (a core dependency of ptune: reinstall ptune)",
                "logging_dir",
                "report_to",
            )

    def apply_logging_dir(self) -> None:
        """Point transformers' TensorBoard callback at `logging_dir` (5.x reads TENSORBOARD_LOGGING_DIR).

        Call before creating the Trainer; a no-op when `logging_dir` is unset.
        """
        if self.logging_dir is not None:
            os.environ["TENSORBOARD_LOGGING_DIR"] = self.logging_dir
