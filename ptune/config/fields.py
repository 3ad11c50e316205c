"""The flags several verbs share, each defined once: a verb's argument dataclass takes its field from here.

`--chat_format`, `--dtype` and `--quantization_bit` say how a base model is loaded (train, eval, predict, data,
plan, chat, serve, bench); `--device`, `--model_name_or_path` of the verbs that generate, `--prefix
NAME=CHECKPOINT` (serve, bench --serve) and the comma-separated integer lists of the benchmarks are the
others. Each factory returns a fresh `dataclasses.field` (a Field belongs to one class); its type annotation is
the matching alias here. `check_quantization_bit` is the one rule for 4 or 8 bits.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal

from ptune.config.argtypes import BadArgument, int_list
from ptune.families.registry import FAMILY_NAMES

# How prompts are built; None means "detect from the model". The one list of chat formats: the registry's
# families (ptune.families); ChatFormat, the fields' type, is made from it.
CHAT_FORMATS: tuple[str, ...] = FAMILY_NAMES
ChatFormat = Literal[CHAT_FORMATS]  # type: ignore[valid-type]
DTYPES = ("auto", "bfloat16", "float16", "float32")
Dtype = Literal[DTYPES]  # type: ignore[valid-type]


def chat_format_field() -> Any:
    return field(
        default=None,
        metadata={
            "help": "How prompts are built: chatglm2 ([Round n] 问/答 text), chatglm3 (role tokens), glm4 "
            "(chat template), native (the tokenizer's chat template). Default: detected from the model."
        },
    )


def dtype_field() -> Any:
    return field(
        default="auto",
        metadata={
            "help": "Weight dtype of the frozen base model (the prefix is always float32). auto: bfloat16 on "
            "a GPU that supports it, else the checkpoint's float16; float32 on the CPU."
        },
    )


def quantization_bit_field() -> Any:
    return field(
        default=None,
        metadata={"help": "Quantize the frozen base model's linear layers to 4 or 8 bits (bitsandbytes)."},
    )


def check_quantization_bit(obj: Any) -> None:
    if obj.quantization_bit not in (None, 4, 8):
        raise BadArgument(
            f"--quantization_bit must be 4 or 8, got {obj.quantization_bit}", "quantization_bit"
        )


def ptuning_checkpoint_field() -> Any:
    return field(
        default=None,
        metadata={
            "help": "Folder of a ptune or THUDM P-Tuning v2 checkpoint, or of a PEFT prefix-tuning adapter (native "
            "bases), whose prefix is loaded over the base model; its pre_seq_len and prefix_projection are read "
            "from it."
        },
    )


def device_field(help: str = "cpu, cuda, cuda:1, ... (default: cuda if available, else cpu).") -> Any:
    return field(default=None, metadata={"help": help})


def base_model_field(help: str) -> Any:
    """--model_name_or_path of a verb that can find the base elsewhere (a checkpoint's record, --url)."""
    return field(default=None, metadata={"help": help})


def prefixes_field(help: str = "A prefix checkpoint served as model NAME (repeatable).") -> Any:
    """--prefix NAME=CHECKPOINT, repeatable (ptune.serve.cli.parse_prefixes reads the values)."""
    return field(default_factory=list, metadata={"append": True, "metavar": "NAME=CHECKPOINT", "help": help})


def int_list_field(default: list[int], help: str) -> Any:
    """A comma-separated list of positive integers, e.g. --micro_batch 1,4,16."""
    return field(default_factory=lambda: list(default), metadata={"parse": int_list, "help": help})
