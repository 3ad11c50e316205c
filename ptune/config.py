"""Arguments of `ptune train|eval|predict`: dataclasses, and parsing from a JSON config plus flags.

The names and defaults are those of THUDM's `ptuning/arguments.py` (ModelArguments, DataTrainingArguments) and
of transformers' `Seq2SeqTrainingArguments`, so THUDM's shell scripts and JSON configs parse unchanged. On top:

- ptune-only fields (chat_format, dtype, prefix_dropout, ...) and a `GenerationArguments` dataclass. Generation
  settings get their own dataclass because `chat` uses them without any data or training arguments.
- THUDM-era training names that transformers 5 removed (`overwrite_output_dir`, `evaluation_strategy`,
  `logging_dir`, `no_cuda`, `per_gpu_*`, `warmup_ratio`, ...) are accepted and either mapped exactly onto their
  5.x replacement or given their old meaning.
- Flags THUDM declared but never read ("dead flags") are accepted at their defaults; set to anything else they
  raise a `UserError` that says why ptune ignores them, because silently ignoring a setting misleads.

`parse_args(verb, argv)` turns `[CONFIG.json] [--flag value ...]` into the four dataclasses. Every mistake
(unknown key, wrong type, contradiction) is a one-line `UserError` naming the file or flag, never argparse's
usage dump. The verb, not the config, decides `do_train` / `do_eval` / `do_predict`.
"""

import argparse
import dataclasses
import difflib
import importlib.util
import json
import math
import os
import re
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from transformers import HfArgumentParser, Seq2SeqTrainingArguments
from transformers.hf_argparser import string_to_bool

from ptune.errors import UserError

VERBS = ("train", "eval", "predict")
# How prompts are built; None in ModelArguments.chat_format means "detect from the model".
ChatFormat = Literal["chatglm2", "chatglm3", "glm4", "native"]
CHAT_FORMATS: tuple[str, ...] = typing.get_args(ChatFormat)
# Keys of a JSON config that are comments: configs start with a key that says how to run them.
COMMENT_KEYS = ("how_to_run",)


class _BadArgument(UserError):
    """A `UserError` about named arguments; `parse_args` uses `names` to say which file set them."""

    def __init__(self, message: str, *names: str):
        super().__init__(message)
        self.names = names


def _dead(name: str, why: str, value: str = "") -> _BadArgument:
    """The error for a flag THUDM declared but never read, set to a non-default value (shown if given)."""
    flag = f"--{name} {value}" if value else f"--{name}"
    return _BadArgument(f"{flag} has no effect in ptune: {why}; remove it", name)


@cache
def _choice_fields(cls: type) -> tuple[tuple[str, tuple, bool], ...]:
    """(name, allowed values, None allowed) of a dataclass's fields typed `Literal[...]` or `Literal[...] | None`."""
    found = []
    for name, hint in typing.get_type_hints(cls).items():
        if typing.get_origin(hint) is Literal:
            found.append((name, typing.get_args(hint), False))
            continue
        args = typing.get_args(hint)
        literals = [a for a in args if typing.get_origin(a) is Literal]
        if len(literals) == 1 and set(args) == {literals[0], type(None)}:
            found.append((name, typing.get_args(literals[0]), True))
    return tuple(found)


def _check_choices(obj: Any) -> None:
    """Check the `Literal` fields of a dataclass instance (argparse checks flags; this covers direct use)."""
    for name, allowed, none_ok in _choice_fields(type(obj)):
        value = getattr(obj, name)
        if value not in allowed and not (none_ok and value is None):
            raise _BadArgument(f"--{name} must be one of {', '.join(map(str, allowed))}, got {value!r}", name)


def _check_at_least(obj: Any, minimum: float, *names: str) -> None:
    """Each named field must be None or >= minimum (lengths, counts)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < minimum:
            raise _BadArgument(f"--{name} must be at least {minimum}, got {value}", name)


@dataclass
class ModelArguments:
    """Which model to tune or run, and how to load it (THUDM's ModelArguments plus ptune's loading options)."""

    _argument_group_name = "model"

    model_name_or_path: str = field(
        metadata={
            "help": "(required) Base model folder, e.g. a downloaded chatglm2-6b (ptune never downloads weights). "
            "eval/predict/chat: default the base that --ptuning_checkpoint's prefix_config.json names."
        }
    )
    ptuning_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Folder of a ptune (or THUDM) P-Tuning v2 checkpoint whose prefix is loaded over the base "
            "model; its pre_seq_len and prefix_projection are read from it."
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "THUDM flag, unused: the model config always comes from model_name_or_path."},
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Folder to load the tokenizer from instead of model_name_or_path."},
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where `datasets` caches the loaded and tokenized data files (default: its own cache)."
        },
    )
    use_fast_tokenizer: bool = field(
        default=True,
        metadata={"help": "THUDM flag: only true is accepted (each model family has exactly one tokenizer)."},
    )
    model_revision: str = field(
        default="main",
        metadata={"help": "THUDM flag: only main is accepted; pass the folder of another revision instead."},
    )
    use_auth_token: bool = field(
        default=False,
        metadata={
            "help": "THUDM flag: only false is accepted (ptune loads local folders and never contacts the Hub)."
        },
    )
    resize_position_embeddings: bool | None = field(
        default=None,
        metadata={"help": "THUDM flag, unused: position embeddings keep the checkpoint's size."},
    )
    quantization_bit: int | None = field(
        default=None,
        metadata={"help": "Quantize the frozen base model's linear layers to 4 or 8 bits (bitsandbytes)."},
    )
    pre_seq_len: int | None = field(
        default=None,
        metadata={
            "help": "Number of prefix tokens (virtual key/value positions per layer) P-Tuning v2 trains, e.g. "
            "128. Needed to train; eval/predict read it from the checkpoint."
        },
    )
    prefix_projection: bool | None = field(
        default=None,
        metadata={
            "help": "Reparameterize the prefix through a two-layer MLP (the paper's prefix projection) instead "
            "of training the key/value embedding directly. Default: false for a new prefix, the checkpoint's "
            "setting for --ptuning_checkpoint (a different value is an error)."
        },
    )
    chat_format: ChatFormat | None = field(
        default=None,
        metadata={
            "help": "How prompts are built: chatglm2 ([Round n] 问/答 text), chatglm3 (role tokens), glm4 "
            "(chat template), native (the tokenizer's chat template). Default: detected from the model."
        },
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="auto",
        metadata={
            "help": "Weight dtype of the frozen base model (the prefix is always float32). auto: bfloat16 on "
            "a GPU that supports it, else the checkpoint's float16; float32 on the CPU."
        },
    )
    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2"] = field(
        default="sdpa",
        metadata={"help": "Attention kernel of the base model (transformers' attn_implementation)."},
    )
    prefix_dropout: float = field(
        default=0.1,
        metadata={
            "help": "Dropout on the prefix keys/values during training, as in the reference (0 disables)."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Let native models run code from their hub repository (passed to AutoTokenizer and "
            "AutoModel). Never needed for ChatGLM2/3 or GLM-4: ptune has its own code for them."
        },
    )

    def __post_init__(self):
        _check_choices(self)
        if self.config_name is not None:
            raise _dead("config_name", "the model config is always read from --model_name_or_path")
        if not self.use_fast_tokenizer:
            raise _dead("use_fast_tokenizer", "each model family has exactly one tokenizer", "false")
        if self.model_revision != "main":
            raise _dead(
                "model_revision",
                "download the revision you want and pass its folder as --model_name_or_path",
            )
        if self.resize_position_embeddings is not None:
            raise _dead("resize_position_embeddings", "position embeddings always keep the checkpoint's size")
        if self.use_auth_token:
            raise _dead(
                "use_auth_token", "ptune loads local folders and never contacts the Hugging Face Hub", "true"
            )
        if self.quantization_bit not in (None, 4, 8):
            raise _BadArgument(
                f"--quantization_bit must be 4 or 8, got {self.quantization_bit}", "quantization_bit"
            )
        _check_at_least(self, 1, "pre_seq_len")
        if not 0 <= self.prefix_dropout < 1:
            raise _BadArgument(
                f"--prefix_dropout must be at least 0 and below 1, got {self.prefix_dropout}",
                "prefix_dropout",
            )
        if self.trust_remote_code and self.chat_format not in (None, "native"):
            raise _BadArgument(
                f"--trust_remote_code is only for native models, but --chat_format is {self.chat_format}: "
                "ptune runs ChatGLM2/3 and GLM-4 with its own code; remove --trust_remote_code",
                "trust_remote_code",
                "chat_format",
            )


@dataclass
class DataTrainingArguments:
    """Which data to read and how to cut it (THUDM's DataTrainingArguments)."""

    _argument_group_name = "data"

    lang: str | None = field(default=None, metadata={"help": "THUDM flag, unused (the data's language)."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "THUDM flag, unused: ptune reads local files (train_file etc.)."}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "THUDM flag, unused: ptune reads local files (train_file etc.)."}
    )
    prompt_column: str | None = field(
        default=None,
        metadata={"help": "Key of the input text in each data row, e.g. content (ADGEN) or prompt."},
    )
    response_column: str | None = field(
        default=None,
        metadata={"help": "Key of the target answer in each data row, e.g. summary (ADGEN) or response."},
    )
    history_column: str | None = field(
        default=None,
        metadata={"help": "Key of the earlier turns, a list of [question, answer] pairs (multi-turn data)."},
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Training data: JSON lines (.json/.jsonl) or .csv. Needed by train."}
    )
    validation_file: str | None = field(
        default=None,
        metadata={
            "help": "Validation data (same format). Needed by eval, and by train to evaluate while training."
        },
    )
    test_file: str | None = field(
        default=None, metadata={"help": "Data to generate answers for (same format). Needed by predict."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Redo the tokenization instead of reusing the datasets cache."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Number of processes that tokenize the data (default: one)."}
    )
    max_source_length: int = field(
        default=1024,
        metadata={"help": "Most prompt tokens kept (history is cut first, from the oldest turn)."},
    )
    max_target_length: int = field(
        default=128, metadata={"help": "Most answer tokens kept in training examples."}
    )
    val_max_target_length: int | None = field(
        default=None,
        metadata={
            "help": "Most answer tokens of the reference answers in eval/predict, and the default for "
            "max_new_tokens (default: max_target_length)."
        },
    )
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "THUDM flag, unused: batches are padded to their longest sample."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training rows (quick runs, debugging)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation rows."}
    )
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N test rows."}
    )
    num_beams: int | None = field(
        default=None, metadata={"help": "Beam search width for generation (default: 1, no beam search)."}
    )
    ignore_pad_token_for_loss: bool = field(
        default=True,
        metadata={"help": "Leave padding out of the loss and of the decoded reference answers."},
    )
    source_prefix: str = field(
        default="", metadata={"help": "Text put in front of every prompt (before the chat formatting)."}
    )
    forced_bos_token: str | None = field(
        default=None, metadata={"help": "THUDM flag, unused (for encoder-decoder translation models)."}
    )

    def __post_init__(self):
        if self.lang is not None:
            raise _dead("lang", "the data's language changes nothing in how it is read or scored")
        for name in ("dataset_name", "dataset_config_name"):
            if getattr(self, name) is not None:
                raise _dead(
                    name, "ptune reads local files: use --train_file, --validation_file or --test_file"
                )
        if self.pad_to_max_length:
            raise _dead("pad_to_max_length", "batches are padded to their longest sample")
        if self.forced_bos_token is not None:
            raise _dead("forced_bos_token", "it is for encoder-decoder translation models")
        _check_at_least(
            self,
            1,
            "max_source_length",
            "max_target_length",
            "val_max_target_length",
            "preprocessing_num_workers",
            "max_train_samples",
            "max_eval_samples",
            "max_predict_samples",
            "num_beams",
        )
        columns = [(n, getattr(self, n)) for n in ("prompt_column", "response_column", "history_column")]
        for i, (name_a, a) in enumerate(columns):
            for name_b, b in columns[i + 1 :]:
                if a is not None and a == b:
                    raise _BadArgument(f"--{name_a} and --{name_b} are both {a!r}", name_a, name_b)
        if self.val_max_target_length is None:
            # THUDM's rule: reference answers in eval are cut like training answers unless told otherwise.
            self.val_max_target_length = self.max_target_length


@dataclass
class GenerationArguments:
    """How answers are generated in eval/predict/chat (ptune only: THUDM hard-coded sampling).

    ptune generates greedily by default, so that predictions and scores are reproducible; THUDM sampled with
    top_p 0.7 and temperature 0.95, which `--do_sample true` restores.
    """

    _argument_group_name = "generation"

    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Most tokens generated per answer (default: val_max_target_length)."},
    )
    do_sample: bool = field(
        default=False,
        metadata={"help": "Sample answers (top_p, temperature) instead of greedy decoding, as THUDM did."},
    )
    top_p: float = field(
        default=0.7, metadata={"help": "Nucleus sampling: keep the smallest token set with this much mass."}
    )
    temperature: float = field(
        default=0.95, metadata={"help": "Sampling temperature (lower: closer to greedy)."}
    )

    def __post_init__(self):
        _check_at_least(self, 1, "max_new_tokens")
        if not 0 < self.top_p <= 1:
            raise _BadArgument(f"--top_p must be above 0 and at most 1, got {self.top_p}", "top_p")
        if not self.temperature > 0:
            raise _BadArgument(f"--temperature must be above 0, got {self.temperature}", "temperature")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = [n for n in ("top_p", "temperature") if getattr(self, n) != defaults[n]]
        if changed and not self.do_sample:
            # Greedy decoding ignores both; say so rather than let a tuned value do nothing.
            flags = " and ".join(f"--{n}" for n in changed)
            verb = "applies" if len(changed) == 1 else "apply"
            raise _BadArgument(
                f"{flags} only {verb} when sampling: add --do_sample true or remove {flags}",
                *changed,
                "do_sample",
            )


# THUDM-era training names that transformers 5 removed: (old name, 5.x name). Each old name maps exactly.
RENAMED_TRAINING_ARGUMENTS = (
    ("evaluation_strategy", "eval_strategy"),
    ("no_cuda", "use_cpu"),
    ("per_gpu_train_batch_size", "per_device_train_batch_size"),
    ("per_gpu_eval_batch_size", "per_device_eval_batch_size"),
    ("warmup_ratio", "warmup_steps"),
    ("group_by_length", "train_sampling_strategy"),
    ("gradient_checkpointing", "activation_checkpointing"),
    ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
)


def _renamed_value(old: str, value: Any) -> Any:
    """The 5.x value that an old-name value means, or None when the old name is unset."""
    if old in ("no_cuda", "group_by_length"):
        if not value:
            return None
        return True if old == "no_cuda" else "group_by_length"
    return value


def _tensorboard_installed() -> bool:
    """Whether transformers' TensorBoard callback can run (it takes tensorboard or tensorboardX)."""
    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


@dataclass
class TrainingArguments(Seq2SeqTrainingArguments):
    """transformers' Seq2SeqTrainingArguments plus THUDM-era names removed in transformers 5 and ptune's additions.

    Removed names map onto their replacements before transformers validates the arguments: evaluation_strategy
    -> eval_strategy, no_cuda -> use_cpu, per_gpu_*_batch_size -> per_device_*_batch_size, warmup_ratio ->
    warmup_steps (5.x reads a value below 1 as a ratio), group_by_length -> train_sampling_strategy,
    gradient_checkpointing(_kwargs) -> activation_checkpointing(_kwargs). After mapping, the old name reads as
    unset (gradient_checkpointing mirrors activation_checkpointing, as in transformers).
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
        _check_choices(self)
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):  # torch would raise mid-setup
            raise _BadArgument(
                f"--learning_rate must be a finite number of at least 0, got {self.learning_rate}",
                "learning_rate",
            )
        if self.disable_tqdm is None and not sys.stderr.isatty():
            self.disable_tqdm = True  # progress bar updates written into a log file are noise
        if not self.save_safetensors:
            raise _dead("save_safetensors", "checkpoints are always written as safetensors", "false")
        if self.include_inputs_for_metrics:
            raise _dead("include_inputs_for_metrics", "ptune's metrics read only predictions and labels")
        self._map_renamed()
        self._route_logging_dir()
        if self.fp16 and self.bf16:
            raise _BadArgument("--fp16 and --bf16 are both set: choose one", "fp16", "bf16")
        if self.early_stopping_patience is not None:
            _check_at_least(self, 1, "early_stopping_patience")
            if str(getattr(self.eval_strategy, "value", self.eval_strategy)) == "no":
                raise _BadArgument(
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
        except ImportError as error:  # e.g. --deepspeed without the deepspeed package
            if self.deepspeed:
                raise UserError("--deepspeed needs DeepSpeed: pip install deepspeed") from error
            raise UserError(f"a training option needs a package that is not installed: {error}") from error
        reports = self.report_to if isinstance(self.report_to, list) else [self.report_to]
        if "tensorboard" in reports and not _tensorboard_installed():
            raise _BadArgument(
                "TensorBoard logging (--logging_dir or --report_to tensorboard) needs tensorboard: "
                "pip install 'ptune[tensorboard]'",
                "logging_dir",
                "report_to",
            )

    def _map_renamed(self) -> None:
        """Move values given under removed names onto the 5.x names (parse_args reports given contradictions)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for old, new in RENAMED_TRAINING_ARGUMENTS:
            value = _renamed_value(old, getattr(self, old))
            if value is None:
                continue
            if old == "warmup_ratio" and not 0 <= value < 1:
                raise _BadArgument(
                    f"--warmup_ratio must be at least 0 and below 1, got {value} (transformers 5 reads a "
                    "warmup_steps below 1 as a ratio; give a number of steps as --warmup_steps)",
                    "warmup_ratio",
                )
            # The new name wins when both were set (only possible when constructing the class directly).
            if getattr(self, new) == defaults[new]:
                setattr(self, new, value)
            if not old.startswith(
                "gradient_checkpointing"
            ):  # those mirror the new name, as transformers does
                setattr(self, old, defaults[old])

    def _route_logging_dir(self) -> None:
        """`logging_dir` used to be TensorBoard's folder, and TensorBoard was on by default: keep that meaning."""
        if self.logging_dir is None:
            return
        reports = self.report_to
        reports = [] if reports is None else [reports] if isinstance(reports, str) else list(reports)
        if reports in ([], ["none"]):
            self.report_to = ["tensorboard"]
        elif "tensorboard" not in reports and "all" not in reports:
            raise _BadArgument(
                f"--logging_dir is where TensorBoard logs go, but --report_to {' '.join(reports)} leaves "
                "TensorBoard out: add tensorboard to --report_to or remove --logging_dir",
                "logging_dir",
                "report_to",
            )

    def apply_logging_dir(self) -> None:
        """Point transformers' TensorBoard callback at `logging_dir` (5.x reads TENSORBOARD_LOGGING_DIR).

        Call before creating the Trainer; a no-op when `logging_dir` is unset.
        """
        if self.logging_dir is not None:
            os.environ["TENSORBOARD_LOGGING_DIR"] = self.logging_dir


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, TrainingArguments, GenerationArguments)


# ---------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------


class _BadValue(Exception):
    """A value of the wrong type; the message says what was expected, e.g. "must be an integer"."""


def _show(value: Any) -> str:
    """A value as the user wrote it: strings quoted ('64x'), JSON values as JSON (true, null, 3.5)."""
    return repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _allows(hint: Any, cls: type) -> bool:
    """Whether a type annotation admits values of `cls` (e.g. `dict | str | None` admits dict)."""
    if hint is cls or typing.get_origin(hint) is cls:
        return True
    return any(_allows(arg, cls) for arg in typing.get_args(hint) if arg is not Ellipsis)


class _Converter:
    """Turns one field's value, a flag's text or a JSON value, into what the dataclass expects.

    Built from the argparse action that HfArgumentParser made for the field, so flags and JSON are checked by
    the same rules. Raises `_BadValue` with the expectation ("must be an integer").
    """

    def __init__(self, action: argparse.Action, hint: Any, default: Any):
        self.action, self.hint, self.default = action, hint, default
        self.kind = action.type  # kept: the action's own `type` is replaced by `for_argparse()`
        self.choices = {str(c): c for c in action.choices} if action.choices is not None else None
        if self.choices is not None:
            self.expected = "must be one of " + ", ".join(self.choices)
        elif action.type is string_to_bool:
            self.expected = "must be true or false"
        elif action.type is int:
            self.expected = "must be an integer"
        elif action.type is float:
            self.expected = "must be a number"
        elif action.type is str:
            self.expected = "must be a string"
        else:
            self.expected = "is not valid"

    def one(self, value: Any) -> Any:
        """Convert a single value (a list field's element, or a plain field's value)."""
        kind = self.kind
        if self.choices is not None:
            if isinstance(value, str) and value in self.choices:
                return self.choices[value]
        elif kind is string_to_bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                try:
                    return string_to_bool(value)
                except argparse.ArgumentTypeError:
                    pass
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    pass
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        elif kind is str:
            if isinstance(value, str):
                return value
        elif isinstance(value, str):
            try:
                return kind(value)
            except (TypeError, ValueError):
                pass
        raise _BadValue(self.expected)

    def from_json(self, value: Any) -> Any:
        """Convert a JSON value: null keeps a None default, lists and objects go where the field allows them."""
        if value is None:
            if self.default is None:
                return None
            raise _BadValue(self.expected)
        if isinstance(value, dict) and _allows(self.hint, dict):
            return value
        if isinstance(value, list) and (self.action.nargs == "+" or _allows(self.hint, list)):
            return [self.one(v) for v in value]
        if self.action.nargs == "+":
            return [self.one(value)]
        return self.one(value)

    def for_argparse(self) -> Callable[[str], Any]:
        """An argparse `type` function whose errors carry our wording."""

        def convert(text: str) -> Any:
            try:
                return self.one(text)
            except _BadValue as error:
                raise argparse.ArgumentTypeError(f"{error}, got {_show(text)}") from None

        return convert


class _Parser(HfArgumentParser):
    """HfArgumentParser whose errors raise `UserError` instead of printing usage and exiting."""

    def error(self, message: str):
        raise UserError(" ".join(message.split()))


@dataclass
class _Fields:
    """The parser for one verb, and per field (dest) its converter; option strings map to dests."""

    parser: _Parser
    converters: dict[str, _Converter]
    dest_of_option: dict[str, str]


def _usage(verb: str) -> str:
    return f"ptune {verb} [CONFIG.json] [--name value ...]"


@cache
def _fields(verb: str) -> _Fields:
    """Build (once per verb) the argparse parser over the four dataclasses, with ptune's type checking."""
    parser = _Parser(
        ARGUMENT_CLASSES,
        prog=f"ptune {verb}",
        usage=_usage(verb),
        description=(
            f"A CONFIG.json, if given first, supplies values by name (keys starting with _ and 'how_to_run' are "
            f"comments); flags after it override them. `ptune {verb}` sets do_train/do_eval/do_predict itself, "
            "whatever the config says."
        ),
        allow_abbrev=False,  # a misspelt flag must fail, not silently match a longer one
        exit_on_error=False,
    )
    hints: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for cls in ARGUMENT_CLASSES:
        hints.update(typing.get_type_hints(cls))
        defaults.update({f.name: f.default for f in dataclasses.fields(cls) if f.init})
    converters: dict[str, _Converter] = {}
    dest_of_option: dict[str, str] = {}
    for action in parser._actions:  # argparse keeps no public list of its actions
        for option in action.option_strings:
            dest_of_option[option] = action.dest
        if action.dest not in defaults or action.dest in converters or action.nargs == 0:
            continue  # --help, and the store_false `--no_X` twins of boolean fields
        converter = _Converter(action, hints[action.dest], defaults[action.dest])
        converters[action.dest] = converter
        action.type = converter.for_argparse()
        # model_name_or_path is required, but checked by parse_args for a message of ours.
        action.required = False
        if hints[action.dest] == bool | None and action.nargs is None:
            # transformers gives `bool | None` fields no bare form; keep `--prefix_projection` meaning true.
            action.nargs, action.const = "?", True
    return _Fields(parser, converters, dest_of_option)


def _closest(name: str, known: Any) -> str:
    """' (did you mean 'x'?)' for the known name nearest a misspelt one, or ''."""
    match = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json `object_pairs_hook`: a key given twice is a mistake (json would silently keep the last value)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _BadValue(f"key '{key}' appears twice")
        seen.add(key)
    return dict(pairs)


def load_config_file(path: str) -> dict[str, Any]:
    """Read a JSON config: an object of argument names to values, comment keys removed.

    Comment keys: those starting with "_" and "how_to_run". Raises UserError for a missing or unreadable file,
    bad JSON (with line and column), a non-object, or a key given twice.
    """
    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: editors on Windows may write a BOM
            text = handle.read()
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read it: {error.strerror}") from None
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as error:
        from ptune.data import json_error

        raise json_error(path, text, error, "not valid JSON") from None
    except _BadValue as error:
        raise UserError(f"{path}: {error}") from None
    if not isinstance(data, dict):
        raise UserError(
            f'{path}: a config must be a JSON object ({{"name": value, ...}}), not {_show(data)[:40]}'
        )
    return {k: v for k, v in data.items() if not (k.startswith("_") or k in COMMENT_KEYS)}


def _values_from_config(path: str, data: dict[str, Any], fields: _Fields) -> dict[str, Any]:
    """Check and convert a config's values by the fields' rules; errors name the file and the key."""
    values = {}
    for key, value in data.items():
        converter = fields.converters.get(key)
        if converter is None:
            raise UserError(f"{path}: unknown key '{key}'{_closest(key, fields.converters)}")
        try:
            values[key] = converter.from_json(value)
        except _BadValue as error:
            raise UserError(f"{path}: '{key}' {error}, got {_show(value)}") from None
    return values


def _flag_dests(flags: list[str], fields: _Fields) -> set[str]:
    """The fields that command-line flags set (by their option strings; values are not looked at)."""
    given = set()
    for token in flags:
        dest = fields.dest_of_option.get(token.split("=", 1)[0]) if token.startswith("--") else None
        if dest is not None:
            given.add(dest)
    return given


def _parse_flags(flags: list[str], start: dict[str, Any], fields: _Fields) -> argparse.Namespace:
    """Apply flags over the config's values; unknown or mistyped flags become a one-line UserError."""
    namespace = argparse.Namespace(**start)
    try:
        namespace, extra = fields.parser.parse_known_args(flags, namespace=namespace)
    except argparse.ArgumentError as error:
        if error.argument_name is None:
            raise UserError(" ".join(error.message.split())) from None
        option = error.argument_name.split("/")[0]
        name = "--" + fields.dest_of_option.get(option, option.lstrip("-"))
        if error.message.startswith("must "):
            raise UserError(f"{name} {error.message}") from None
        if error.message.startswith("expected "):
            raise UserError(f"{name} needs a value") from None
        raise UserError(f"{name}: {error.message}") from None
    if extra:
        token = extra[0]
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            match = difflib.get_close_matches(
                flag.lstrip("-").replace("-", "_"), sorted(fields.converters), n=1
            )
            suggestion = f" (did you mean '--{match[0]}'?)" if match else ""
            raise UserError(f"unknown flag '{flag}'{suggestion}")
        if token.endswith(".json"):
            raise UserError(
                f"unexpected argument '{token}': a config file must come first, right after the verb"
            )
        raise UserError(f"unexpected argument '{token}' (flags are --name value)")
    return namespace


def _check_renamed_pairs(given: set[str], values: dict[str, Any]) -> None:
    """An old training name and its 5.x name both given with different meanings: say which to keep."""
    for old, new in RENAMED_TRAINING_ARGUMENTS:
        value = _renamed_value(old, values[old])
        if old in given and new in given and value is not None and value != values[new]:
            raise _BadArgument(
                f"--{old} and --{new} disagree: {old} is the old name of {new}; keep only --{new}", old, new
            )


def _check_verb(verb: str, given: set[str], values: dict[str, Any]) -> None:
    """Checks of the raw values against the verb, made before the dataclasses (and transformers) see them."""
    needed_file = {"train": "train_file", "eval": "validation_file", "predict": "test_file"}[verb]
    if values[needed_file] is None:
        raise _BadArgument(f"ptune {verb} needs --{needed_file}", needed_file)
    if verb == "predict":
        if not values["predict_with_generate"] and "predict_with_generate" in given:
            raise _BadArgument(
                "ptune predict always generates: remove --predict_with_generate false",
                "predict_with_generate",
            )
        values["predict_with_generate"] = True
    if verb == "train":
        if values["pre_seq_len"] is None:
            for name in ("quantization_bit", "prefix_projection"):
                if values[name]:
                    raise _BadArgument(
                        f"--{name} needs --pre_seq_len (the prefix length, e.g. 128)", name, "pre_seq_len"
                    )
        if values["validation_file"] is None:
            strategy = "evaluation_strategy" if values["evaluation_strategy"] is not None else "eval_strategy"
            for name in (strategy, "load_best_model_at_end", "early_stopping_patience"):
                value = values[name]
                if value not in (None, False) and str(getattr(value, "value", value)) != "no":
                    raise _BadArgument(
                        f"--{name} evaluates during training but there is no --validation_file",
                        name,
                        "validation_file",
                    )


def _check_together(
    model: ModelArguments,
    data: DataTrainingArguments,
    training: TrainingArguments,
    generation: GenerationArguments,
) -> None:
    """Checks that involve several dataclasses."""
    for mixed, other in (("fp16", "bfloat16"), ("bf16", "float16")):
        if getattr(training, mixed) and model.dtype == other:
            raise _BadArgument(
                f"--{mixed} contradicts --dtype {other}: use --dtype {'float16' if mixed == 'fp16' else 'bfloat16'} "
                f"(or auto/float32) with --{mixed}",
                mixed,
                "dtype",
            )
    for name, beams in (
        ("num_beams", data.num_beams),
        ("generation_num_beams", training.generation_num_beams),
    ):
        if beams is not None and beams > 1:
            raise _BadArgument(
                f"--{name} {beams}: ptune generates greedily, or samples with --do_sample true; "
                "beam search is not implemented",
                name,
            )
    if training.generation_max_length is not None:
        raise _BadArgument(
            "--generation_max_length is not read by ptune: limit answers with --max_new_tokens",
            "generation_max_length",
        )
    if not data.ignore_pad_token_for_loss:
        raise _BadArgument(
            "--ignore_pad_token_for_loss false has no effect in ptune: batches are padded to their longest "
            "sample and padding never enters the loss; remove it",
            "ignore_pad_token_for_loss",
        )


def _from_config_only(
    error: _BadArgument, path: str | None, config_keys: set[str], flag_keys: set[str]
) -> str:
    """An argument error's message, re-worded for the config file when the config alone set the names."""
    message = str(error)
    names = [n for n in error.names if n in config_keys or n in flag_keys]
    if path is None or not names or any(n in flag_keys for n in names):
        return message
    for name in names:
        message = re.sub(rf"--{name}\b", f"'{name}'", message)
    return f"{path}: {message}"


def _build(cls: type, values: dict[str, Any]) -> Any:
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})


def parse_args(
    verb: str, argv: list[str]
) -> tuple[ModelArguments, DataTrainingArguments, TrainingArguments, GenerationArguments]:
    """Parse `ptune VERB [CONFIG.json] [--name value ...]` (argv is what follows the verb).

    The config's values come first, flags override them. The verb sets do_train (train), do_eval (eval) or
    do_predict with predict_with_generate (predict); do_* keys in a config (THUDM's have them) are accepted and
    overridden. `max_new_tokens` left unset becomes `val_max_target_length`. `-h`/`--help` prints the full help
    and exits 0. Every mistake raises a one-line UserError naming the file/key or flag.
    """
    if verb not in VERBS:
        raise ValueError(f"parse_args handles {', '.join(VERBS)}, not {verb!r}")
    fields = _fields(verb)
    if "-h" in argv or "--help" in argv:
        fields.parser.print_help()
        sys.exit(0)
    path = None
    config_values: dict[str, Any] = {}
    flags = list(argv)
    if flags and not flags[0].startswith("-"):
        if not flags[0].endswith(".json"):
            raise UserError(f"{flags[0]}: a config file must be JSON, named *.json (flags are --name value)")
        path = flags.pop(0)
        config_values = _values_from_config(path, load_config_file(path), fields)
    flag_keys = _flag_dests(flags, fields)
    namespace = _parse_flags(flags, config_values, fields)
    values = vars(namespace)
    given = set(config_values) | flag_keys
    if values.get("model_name_or_path") is None:
        values["model_name_or_path"] = base_from_checkpoint(verb, values.get("ptuning_checkpoint"))
    if values.get("output_dir") is None:
        raise UserError(f"ptune {verb} needs --output_dir (where checkpoints, metrics and predictions go)")
    values.update(do_train=verb == "train", do_eval=verb == "eval", do_predict=verb == "predict")
    try:
        _check_renamed_pairs(given, values)
        _check_verb(verb, given, values)
        model = _build(ModelArguments, values)
        data = _build(DataTrainingArguments, values)
        generation = _build(GenerationArguments, values)
        training = _build(TrainingArguments, values)
        _check_together(model, data, training, generation)
    except _BadArgument as error:
        raise UserError(_from_config_only(error, path, set(config_values), flag_keys)) from None
    if generation.max_new_tokens is None:
        generation.max_new_tokens = data.val_max_target_length
    return model, data, training, generation


def base_from_checkpoint(verb: str, checkpoint: str | None) -> str:
    """The base model folder a prefix checkpoint names (its prefix_config.json), so that
    `--ptuning_checkpoint CKPT` alone is enough; an error when there is neither flag nor usable record."""
    from ptune.checkpoint import read_prefix_config

    if checkpoint is None:
        raise UserError(f"ptune {verb} needs --model_name_or_path (a model folder)")
    base = read_prefix_config(checkpoint).get("base_model_name_or_path")
    if not base:
        raise UserError(
            f"ptune {verb} needs --model_name_or_path: {checkpoint} does not say which base model it was "
            "trained on (no prefix_config.json)"
        )
    if not Path(base).is_dir():
        raise UserError(
            f"{checkpoint}: trained on {base}, which is not a folder here; pass --model_name_or_path"
        )
    return base


def _default_text(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING:
        return "(required)"
    return json.dumps(f.default, ensure_ascii=False)


def argument_reference() -> list[tuple[str, str, str, str]]:
    """(group, name, default, help) for every ptune argument, for the README's configuration table.

    Groups: model, data, generation (all their fields), and training: only the fields ptune adds to
    transformers' Seq2SeqTrainingArguments (the rest are documented by transformers). Defaults are written as
    in a JSON config (null, true, "main", 0.1).
    """
    stock = {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}
    rows = []
    for group, cls in (
        ("model", ModelArguments),
        ("data", DataTrainingArguments),
        ("generation", GenerationArguments),
        ("training", TrainingArguments),
    ):
        for f in dataclasses.fields(cls):
            if f.init and f.name not in stock:
                rows.append((group, f.name, _default_text(f), f.metadata["help"]))
    return rows
