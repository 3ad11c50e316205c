"""Command lines of the verbs that read a run's config: train, eval, predict, and data and plan over them.

`parse_args(verb, argv)` turns `[CONFIG] [--flag value ...]` into the four dataclasses of ptune.config.args
(plus the verb's own, for data and plan) through the one parser of every verb (ptune.config.parser): the
config's values are the starting values and flags override them, every key is checked by the same rule as its
flag, an unknown key or flag fails with the nearest known name ("did you mean ..."), and the verb, not the
config, decides `do_train` / `do_eval` / `do_predict`. Then the checks that involve the verb or several
dataclasses. Every mistake (unknown key, wrong type, contradiction) is a one-line `UserError` naming the file
or flag. Importing this module is cheap (no transformers, no torch); parse_args loads them when called.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptune.config.argtypes import BadArgument
from ptune.config.compat import check_renamed_pairs, refuse_unimplemented
from ptune.config.files import CONFIG_SUFFIXES, ConfigFile, read_config
from ptune.config.parser import (
    Command,
    config_fields,
    construct,
    flag_dests,
    parse_flags,
    values_from_config,
)
from ptune.io.errors import UserError

if TYPE_CHECKING:
    from ptune.config.args import (
        DataTrainingArguments,
        GenerationArguments,
        ModelArguments,
        TrainingArguments,
    )

VERBS = ("train", "eval", "predict")
NEEDED_FILE = {"train": "train_file", "eval": "validation_file", "predict": "test_file"}


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON or YAML config's values by argument name, comment keys removed (ptune.config.files.read_config)."""
    return read_config(path).values


def _check_verb(verb: str, given: set[str], values: dict[str, Any]) -> None:
    """Checks of the raw values against the verb, made before the dataclasses (and transformers) see them."""
    needed_file = NEEDED_FILE[verb]
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


def _description(verb: str) -> str:
    return (
        "A CONFIG (.json or .yaml), if given first, supplies values by name (keys starting with _ and "
        "'how_to_run' are comments; THUDM finetune_demo YAML is mapped); flags after it override them. "
        f"`ptune {verb}` sets do_train/do_eval/do_predict itself, whatever the config says."
    )


@cache
def run_command(verb: str) -> Command:
    """The Command of `ptune train|eval|predict`: the four dataclasses of ptune.config.args."""
    from ptune.config.args import ARGUMENT_CLASSES

    usage = f"ptune {verb} [CONFIG.json|CONFIG.yaml] [--name value ...]"
    return Command(f"ptune {verb}", ARGUMENT_CLASSES, _description(verb), usage, config=True)


def parse_args(verb: str, argv: list[str], command: Command | None = None) -> tuple:
    """Parse `ptune VERB [CONFIG.json|CONFIG.yaml] [--name value ...]` (argv is what follows the verb).

    Returns (ModelArguments, DataTrainingArguments, TrainingArguments, GenerationArguments), then an instance
    of each further dataclass of `command` (a verb that reads a run's config plus its own flags: data, plan).
    The config's values come first, flags override them. The verb sets do_train (train), do_eval (eval) or
    do_predict with predict_with_generate (predict); verb "data" is the first of them whose data file is
    given. do_* keys in a config (THUDM's have them) are accepted and overridden. `max_new_tokens` left unset
    becomes `val_max_target_length`. `-h`/`--help` prints the full help and exits 0. Every mistake raises a
    one-line UserError naming the file/key or flag.
    """
    if verb not in (*VERBS, "data"):
        raise ValueError(f"parse_args handles {', '.join(VERBS)} and data, not {verb!r}")
    from ptune.config.args import (
        ARGUMENT_CLASSES,
        DataTrainingArguments,
        GenerationArguments,
        ModelArguments,
        TrainingArguments,
    )
    from ptune.train.sharding import check_arguments as check_fsdp_arguments

    command = command or run_command(verb)
    fields = config_fields(command)
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
        config_values = values_from_config(config, fields)
    flag_keys = flag_dests(flags, fields)
    values = parse_flags(flags, config_values, fields)
    given = set(config_values) | flag_keys
    said = "train" if verb == "data" else verb  # data's messages before it picks a verb: as train's
    if values.get("model_name_or_path") is None:
        values["model_name_or_path"] = base_from_checkpoint(said, values.get("ptuning_checkpoint"))
    if values.get("output_dir") is None:
        raise UserError(f"ptune {said} needs --output_dir (where checkpoints, metrics and predictions go)")
    if verb == "data":  # "" when no data file is given: said after the checks that train's parse made first
        verb = next((v for v, name in NEEDED_FILE.items() if values[name] is not None), "")
    values.update(do_train=verb == "train", do_eval=verb == "eval", do_predict=verb == "predict")
    try:
        _check_data_dir(config, flag_keys, values)
        check_renamed_pairs(given, values)
        if not verb:
            raise UserError("ptune data needs a data file: --train_file, --validation_file or --test_file")
        _check_verb(verb, given, values)
        model = construct(ModelArguments, values)
        data = construct(DataTrainingArguments, values)
        generation = construct(GenerationArguments, values)
        training = construct(TrainingArguments, values)
        _check_together(model, data, training, generation)
        check_fsdp_arguments(verb, model, training)
        own = tuple(construct(cls, values) for cls in command.classes if cls not in ARGUMENT_CLASSES)
    except BadArgument as error:
        raise BadArgument(_from_config_only(error, config, flag_keys), *error.names) from None
    if generation.max_new_tokens is None:
        generation.max_new_tokens = data.val_max_target_length
    return model, data, training, generation, *own


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
