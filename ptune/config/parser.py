"""One parser for every verb: a verb's argument dataclasses in, `[CONFIG] [--name value ...]` read into them.

A verb declares what it reads as a `Command`: its dataclasses (each field is one flag, built the way
transformers' HfArgumentParser builds it: `--name`, its type, its default, Literal fields as choices, booleans
with an optional value), its --help usage and description, and whether a CONFIG file may come first. Like TRL's
TrlParser, a config gives the starting values and flags override them; an unknown key or flag fails. Field
metadata beyond HfArgumentParser's: `positional` (an argument without `--`, e.g. export's CHECKPOINT), `append`
(a repeatable flag, e.g. serve's --prefix), `switch` (a flag without a value, e.g. bench's --serve) and `parse`
(a type function of the flag's text, e.g. a comma-separated list of integers).

Every mistake is a one-line `UserError` (the CLI prints `ptune VERB: error: ...` and exits 2), never argparse's
usage dump. Verbs with a CONFIG (train, eval, predict, data, plan) word their errors by name ("cfg.json: 'x'
must be an integer, got '64x'", "unknown flag '--x' (did you mean ...)"): a config key and the flag of the same
name go through one `Converter` (ptune.config.argtypes). The other verbs keep argparse's wording, ending with
"(see ptune VERB --help)". Importing this module is cheap: transformers is imported when a parser is built.

A new verb: a dataclass of its arguments (shared flags from ptune.config.fields, checks in __post_init__ raising
BadArgument), `COMMAND = Command("ptune VERB", (TheArguments,), "what it does")` and `main(argv)` calling
`parse_command(COMMAND, argv)` in its module, and one line in ptune.cli's verb table
(tests/unit/test_verb_arguments.py then checks its --help).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from ptune.config.argtypes import BadValue, Converter, int_list, show
from ptune.config.files import CONFIG_SUFFIXES, ConfigFile
from ptune.io.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are a one-line UserError (the CLI prints it and exits 2), not a usage dump.

    The message ends with a pointer to `PROG --help`, where the usage went; `--help` itself still prints the
    help and exits 0.
    """

    see_help = True

    def error(self, message: str):
        text = " ".join(message.split())
        raise UserError(f"{text} (see {self.prog} --help)" if self.see_help else text)


@dataclass(frozen=True)
class Command:
    """What one verb reads: its argument dataclasses (in order), and for --help its name, usage, description.

    `config`: a CONFIG (.json/.yaml) may come first and errors name keys and flags (see the module doc).
    `defaults`: (field, value) pairs that replace the dataclasses' defaults for this verb.
    """

    prog: str
    classes: tuple[type, ...]
    description: str | None = None
    usage: str | None = None
    config: bool = False
    defaults: tuple[tuple[str, Any], ...] = ()


# Field metadata read here, not passed to argparse: see the module doc.
OWN_METADATA = ("positional", "append", "parse", "switch")


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


@cache
def _parser_class() -> type:
    """The argparse class over dataclasses, defined on first use so that importing this module does not
    import transformers."""
    from transformers import HfArgumentParser

    class ArgumentParser(Parser, HfArgumentParser):
        @staticmethod
        def _parse_dataclass_field(parser: argparse._ActionsContainer, f: dataclasses.Field) -> None:
            meta = dict(f.metadata)
            if not any(key in meta for key in OWN_METADATA):
                HfArgumentParser._parse_dataclass_field(parser, f)
                return
            kwargs = {key: meta[key] for key in ("help", "metavar", "choices") if key in meta}
            if meta.get("positional"):
                parser.add_argument(f.name, **kwargs)
            elif meta.get("switch"):
                parser.add_argument(f"--{f.name}", action="store_true", **kwargs)
            elif meta.get("append"):
                parser.add_argument(f"--{f.name}", action="append", default=_default(f), **kwargs)
            else:
                parser.add_argument(f"--{f.name}", type=meta["parse"], default=_default(f), **kwargs)

    return ArgumentParser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """HfArgumentParser's formatter (each flag's default after its help), without the defaults that say
    nothing (None, "", []) or that the help already gives."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, "", [], argparse.SUPPRESS) or "default" in text.lower():
            return text
        if action.type is int_list:  # as it is written on the command line: 1,8,32
            return f"{text} (default: {','.join(map(str, action.default))})"
        return super()._get_help_string(action)


def build_parser(command: Command) -> argparse.ArgumentParser:
    """The argparse parser of a command (anew: a default_factory may read the environment)."""
    parser = _parser_class()(
        command.classes,
        formatter_class=_HelpFormatter,
        prog=command.prog,
        usage=command.usage,
        description=command.description,
        allow_abbrev=False,  # a misspelt flag must fail, not silently match a longer one
        exit_on_error=not command.config,
    )
    parser.see_help = not command.config  # config verbs' messages name the flag themselves
    if command.defaults:
        parser.set_defaults(**dict(command.defaults))
    return parser


def print_help(command: Command) -> None:
    build_parser(command).print_help()


def construct(cls: type, values: dict[str, Any]) -> Any:
    """An instance of one argument dataclass from values by name (the dataclass checks them)."""
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})


def parse_command(command: Command, argv: list[str]) -> tuple:
    """The command's dataclasses from a command line without CONFIG: argparse's own wording, one line."""
    namespace = build_parser(command).parse_args(argv)
    return tuple(construct(cls, vars(namespace)) for cls in command.classes)


# ------------------------------------------------------------------------------------- verbs with a CONFIG
@dataclass
class Fields:
    """A config verb's parser, and per field (dest) its converter; option strings map to dests."""

    parser: argparse.ArgumentParser
    converters: dict[str, Converter]
    dest_of_option: dict[str, str]


@cache
def config_fields(command: Command) -> Fields:
    """The parser of a config verb with ptune's type checking on every field (built once per command)."""
    parser = build_parser(command)
    hints: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for cls in command.classes:
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
    return Fields(parser, converters, dest_of_option)


def closest(name: str, known: Any) -> str:
    """' (did you mean 'x'?)' for the known name nearest a misspelt one, or ''."""
    match = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def values_from_config(config: ConfigFile, fields: Fields) -> dict[str, Any]:
    """Check and convert a config's values by the fields' rules; errors name the file (line) and the key."""
    values = {}
    for key, value in config.values.items():
        converter = fields.converters.get(key)
        if converter is None:
            raise UserError(
                f"{config.where(key)}: unknown key '{config.name(key)}'{closest(key, fields.converters)}"
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


def flag_dests(flags: list[str], fields: Fields) -> set[str]:
    """The fields that command-line flags set (by their option strings; values are not looked at)."""
    given = set()
    for token in flags:
        dest = fields.dest_of_option.get(token.split("=", 1)[0]) if token.startswith("--") else None
        if dest is not None:
            given.add(dest)
    return given


def parse_flags(flags: list[str], start: dict[str, Any], fields: Fields) -> dict[str, Any]:
    """Every field's value: flags over `start` (the config's values) over the defaults; unknown or mistyped
    flags become a one-line UserError."""
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
    return vars(namespace)
