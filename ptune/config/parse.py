"""Command lines to arguments: `parse_args` for train/eval/predict, and `Parser` for every other verb.

`parse_args(verb, argv)` turns `[CONFIG] [--flag value ...]` into the four dataclasses of ptune.config.args. The
config's values become the parser's starting values and flags parsed over them override them, so a config and
a command line mean the same thing; every key is checked by the same rule as its flag (ptune.config.argtypes), an
unknown key or flag fails with the nearest known name ("did you mean ..."), and the verb, not the config,
decides `do_train` / `do_eval` / `do_predict`. Every mistake (unknown key, wrong type, contradiction) is a
one-line `UserError` naming the file or flag, never argparse's usage dump.

`Parser` is the argparse parser of chat, export, plot, score and bench: the same one-line `UserError` (the CLI
prints `ptune VERB: error: ...` and exits 2) instead of a usage dump and exit. Importing this module is cheap
(no transformers, no torch: `ptune plot` and `ptune score` use `Parser`); parse_args loads them when called.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptune.config.argtypes import BadArgument, BadValue, Converter, show
from ptune.config.compat import check_renamed_pairs, refuse_unimplemented
from ptune.config.files import CONFIG_SUFFIXES, ConfigFile, read_config
from ptune.io.errors import UserError

if TYPE_CHECKING:
    from ptune.config.args import (
        DataTrainingArguments,
        GenerationArguments,
        ModelArguments,
        TrainingArguments,
    )

VERBS = ("train", "eval", "predict")


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are a one-line UserError (the CLI prints it and exits 2), not a usage dump.

    The message ends with a pointer to `PROG --help`, where the usage went; `--help` itself still prints the
    help and exits 0.
    """

    see_help = True

    def error(self, message: str):
        text = " ".join(message.split())
        raise UserError(f"{text} (see {self.prog} --help)" if self.see_help else text)


def _field_parser(classes: tuple[type, ...], **kwargs: Any) -> Parser:
    """transformers' HfArgumentParser over the argument dataclasses, made a `Parser` (defined here, on first
    use, so that importing this module does not import transformers). Its messages name the flag themselves
    (`_parse_flags` words argparse's errors), so they carry no --help pointer."""
    from transformers import HfArgumentParser

    class FieldParser(Parser, HfArgumentParser):
        see_help = False

    return FieldParser(classes, **kwargs)


def help_parser(prog: str, usage: str, description: str) -> Parser:
    """A parser over every argument of train/eval/predict under another verb's name, usage and description:
    for the --help of a verb that reads their config (`ptune data`), which adds its own flags to it."""
    from ptune.config.args import ARGUMENT_CLASSES

    return _field_parser(
        ARGUMENT_CLASSES, prog=prog, usage=usage, description=description, allow_abbrev=False
    )


@dataclass
class _Fields:
    """The parser for one verb, and per field (dest) its converter; option strings map to dests."""

    parser: Parser
    converters: dict[str, Converter]
    dest_of_option: dict[str, str]


def _usage(verb: str) -> str:
    return f"ptune {verb} [CONFIG.json|CONFIG.yaml] [--name value ...]"


@cache
def _fields(verb: str) -> _Fields:
    """Build (once per verb) the argparse parser over the four dataclasses, with ptune's type checking."""
    from ptune.config.args import ARGUMENT_CLASSES

    parser = _field_parser(
        ARGUMENT_CLASSES,
        prog=f"ptune {verb}",
        usage=_usage(verb),
        description=(
            f"A CONFIG (.json or .yaml), if given first, supplies values by name (keys starting with _ and "
            f"'how_to_run' are comments; THUDM finetune_demo YAML is mapped); flags after it override them. `ptune {verb}` sets do_train/do_eval/do_predict itself, "
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
    converters: dict[str, Converter] = {}
    dest_of_option: dict[str, str] = {}
    for action in parser._actions:  # argparse keeps no public list of its actions
        for option in action.option_strings:
            dest_of_option[option] = action.dest
        if action.dest not in defaults or action.dest in converters or action.nargs == 0:
            continue  # --help, and the store_false `--no_X` twins of boolean fields
        converter = Converter(action, hints[action.dest], defaults[action.dest])
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


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON or YAML config's values by argument name, comment keys removed (ptune.config.files.read_config)."""
    return read_config(path).values


def _values_from_config(config: ConfigFile, fields: _Fields) -> dict[str, Any]:
    """Check and convert a config's values by the fields' rules; errors name the file (line) and the key."""
    values = {}
    for key, value in config.values.items():
        converter = fields.converters.get(key)
        if converter is None:
            raise UserError(
                f"{config.where(key)}: unknown key '{config.name(key)}'{_closest(key, fields.converters)}"
            )
        try:
            values[key] = converter.from_json(value)
        except BadValue as error:
            hint = ""
            if converter.kind is str and not config.path.endswith(".json"):
                hint = " (YAML reads it as a number or boolean: quote it)"
            raise UserError(
                f"{config.where(key)}: '{config.name(key)}' {error}, got {show(value)}{hint}"
            ) from None
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
        if token.endswith(CONFIG_SUFFIXES):
            raise UserError(
                f"unexpected argument '{token}': a config file must come first, right after the verb"
            )
        raise UserError(f"unexpected argument '{token}' (flags are --name value)")
    return namespace


def _check_verb(verb: str, given: set[str], values: dict[str, Any]) -> None:
    """Checks of the raw values against the verb, made before the dataclasses (and transformers) see them."""
    needed_file = {"train": "train_file", "eval": "validation_file", "predict": "test_file"}[verb]
    if values[needed_file] is None:
        raise BadArgument(f"ptune {verb} needs --{needed_file}", needed_file)
    if verb == "predict":
        if not values["predict_with_generate"] and "predict_with_generate" in given:
            raise BadArgument(
                "ptune predict always generates: remove --predict_with_generate false",
                "predict_with_generate",
            )
        values["predict_with_generate"] = True
    if verb == "train":
        if values["compare_base"]:
            raise BadArgument(
                "--compare_base is for ptune eval and predict (it compares a trained prefix with the base "
                "model alone); remove it from the training run",
                "compare_base",
            )
        if values["pre_seq_len"] is None:
            for name in ("quantization_bit", "prefix_projection"):
                if values[name]:
                    raise BadArgument(
                        f"--{name} needs --pre_seq_len (the prefix length, e.g. 128)", name, "pre_seq_len"
                    )
        if values["validation_file"] is None:
            strategy = "evaluation_strategy" if values["evaluation_strategy"] is not None else "eval_strategy"
            for name in (strategy, "load_best_model_at_end", "early_stopping_patience"):
                value = values[name]
                if value not in (None, False) and str(getattr(value, "value", value)) != "no":
                    raise BadArgument(
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
    """Checks that involve several dataclasses, in this order: dtype contradictions, then what ptune refuses."""
    for mixed, other in (("fp16", "bfloat16"), ("bf16", "float16")):
        if getattr(training, mixed) and model.dtype == other:
            raise BadArgument(
                f"--{mixed} contradicts --dtype {other}: use --dtype {'float16' if mixed == 'fp16' else 'bfloat16'} "
                f"(or auto/float32) with --{mixed}",
                mixed,
                "dtype",
            )
    refuse_unimplemented(data, training)  # beam search, generation_max_length, ignore_pad_token_for_loss


def _from_config_only(error: BadArgument, config: ConfigFile | None, flag_keys: set[str]) -> str:
    """An argument error's message, re-worded for the config file when the config alone set the names."""
    message = str(error)
    names = [n for n in error.names if (config and n in config.values) or n in flag_keys]
    if config is None or not names or any(n in flag_keys for n in names):
        return message
    for name in names:
        message = re.sub(rf"--{name}\b", f"'{config.name(name)}'", message)
    return f"{config.where(names[0])}: {message}"


def _check_data_dir(config: ConfigFile | None, flag_keys: set[str], values: dict[str, Any]) -> None:
    """THUDM's finetune_demo reads data_config's relative paths inside its DATA_DIR argument: ask for it."""
    if config is None or values["data_dir"] is not None:
        return
    for name in config.data_dir_relative:
        if name not in flag_keys:
            raise UserError(
                f"{config.where(name)}: '{config.name(name)}' ({config.values[name]}) is inside the DATA_DIR of "
                "THUDM's `finetune_hf.py DATA_DIR MODEL_DIR CONFIG` (GLM-4: finetune.py): pass --data_dir DATA_DIR"
            )


def _build(cls: type, values: dict[str, Any]) -> Any:
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})


def parse_args(
    verb: str, argv: list[str]
) -> tuple[ModelArguments, DataTrainingArguments, TrainingArguments, GenerationArguments]:
    """Parse `ptune VERB [CONFIG.json|CONFIG.yaml] [--name value ...]` (argv is what follows the verb).

    The config's values come first, flags override them. The verb sets do_train (train), do_eval (eval) or
    do_predict with predict_with_generate (predict); do_* keys in a config (THUDM's have them) are accepted and
    overridden. `max_new_tokens` left unset becomes `val_max_target_length`. `-h`/`--help` prints the full help
    and exits 0. Every mistake raises a one-line UserError naming the file/key or flag.
    """
    if verb not in VERBS:
        raise ValueError(f"parse_args handles {', '.join(VERBS)}, not {verb!r}")
    from ptune.config.args import (
        DataTrainingArguments,
        GenerationArguments,
        ModelArguments,
        TrainingArguments,
    )
    from ptune.train.sharding import check_arguments as check_fsdp_arguments

    fields = _fields(verb)
    if "-h" in argv or "--help" in argv:
        fields.parser.print_help()
        sys.exit(0)
    config = None
    config_values: dict[str, Any] = {}
    flags = list(argv)
    if flags and not flags[0].startswith("-"):
        if not flags[0].endswith(CONFIG_SUFFIXES):
            raise UserError(
                f"{flags[0]}: a config file must be JSON or YAML, named *.json, *.yaml or *.yml "
                "(flags are --name value)"
            )
        config = read_config(flags.pop(0))
        config_values = _values_from_config(config, fields)
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
        _check_data_dir(config, flag_keys, values)
        check_renamed_pairs(given, values)
        _check_verb(verb, given, values)
        model = _build(ModelArguments, values)
        data = _build(DataTrainingArguments, values)
        generation = _build(GenerationArguments, values)
        training = _build(TrainingArguments, values)
        _check_together(model, data, training, generation)
        check_fsdp_arguments(verb, model, training)
    except BadArgument as error:  # still a BadArgument: `ptune data` tries the next verb on a missing file
        raise BadArgument(_from_config_only(error, config, flag_keys), *error.names) from None
    if generation.max_new_tokens is None:
        generation.max_new_tokens = data.val_max_target_length
    return model, data, training, generation


def base_from_checkpoint(verb: str, checkpoint: str | None) -> str:
    """The base model folder a prefix checkpoint names (its prefix_config.json), so that
    `--ptuning_checkpoint CKPT` alone is enough; an error when there is neither flag nor usable record."""
    from ptune.train.checkpoint import read_prefix_config

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
