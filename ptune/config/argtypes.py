"""Argument values: one rule per field for a flag's text and for a JSON config's value, and the argument errors.

A config key and the flag of the same name must accept and refuse the same values with the same words
("must be an integer, got '64x'"), so both go through one `Converter`, built from the argparse action that
transformers' HfArgumentParser makes for the field (ptune.config.parser builds them). `BadArgument` is the error the
argument dataclasses (ptune.config.args, ptune.config.compat) raise: it carries the names it is about, so that parse_args can
say "cfg.json: 'name' ..." when the config file, not a flag, set them.
"""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, Literal

from ptune.io.errors import UserError


class BadArgument(UserError):
    """A `UserError` about named arguments; `parse_args` uses `names` to say which file set them."""

    def __init__(self, message: str, *names: str):
        super().__init__(message)
        self.names = names


class BadValue(Exception):
    """A value of the wrong type; the message says what was expected, e.g. "must be an integer"."""


def show(value: Any) -> str:
    """A value as the user wrote it: strings quoted ('64x'), JSON values as JSON (true, null, 3.5)."""
    return repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _allows(hint: Any, cls: type) -> bool:
    """Whether a type annotation admits values of `cls` (e.g. `dict | str | None` admits dict)."""
    if hint is cls or typing.get_origin(hint) is cls:
        return True
    return any(_allows(arg, cls) for arg in typing.get_args(hint) if arg is not Ellipsis)


class Converter:
    """Turns one field's value, a flag's text or a JSON value, into what the dataclass expects.

    Built from the argparse action that HfArgumentParser made for the field, so flags and JSON are checked by
    the same rules. Raises `BadValue` with the expectation ("must be an integer").
    """

    def __init__(self, action: argparse.Action, hint: Any, default: Any):
        from transformers.hf_argparser import string_to_bool  # here: importing this module stays cheap

        self.action, self.hint, self.default = action, hint, default
        self.kind = action.type  # kept: the action's own `type` is replaced by `for_argparse()`
        self.choices = {str(c): c for c in action.choices} if action.choices is not None else None
        self.is_bool = action.type is string_to_bool
        if self.choices is not None:
            self.expected = "must be one of " + ", ".join(self.choices)
        elif self.is_bool:
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
        elif self.is_bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                try:
                    return kind(value)  # transformers' string_to_bool
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
        raise BadValue(self.expected)

    def from_json(self, value: Any) -> Any:
        """Convert a JSON value: null keeps a None default, lists and objects go where the field allows them."""
        if value is None:
            if self.default is None:
                return None
            raise BadValue(self.expected)
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
            except BadValue as error:
                raise argparse.ArgumentTypeError(f"{error}, got {show(text)}") from None

        return convert


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


def check_choices(obj: Any) -> None:
    """Check the `Literal` fields of a dataclass instance (argparse checks flags; this covers direct use)."""
    for name, allowed, none_ok in _choice_fields(type(obj)):
        value = getattr(obj, name)
        if value not in allowed and not (none_ok and value is None):
            raise BadArgument(f"--{name} must be one of {', '.join(map(str, allowed))}, got {value!r}", name)


def check_at_least(obj: Any, minimum: float, *names: str) -> None:
    """Each named field must be None or >= minimum (lengths, counts)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < minimum:
            raise BadArgument(f"--{name} {at_least_message(minimum, value)}", name)


def int_list(text: str) -> list[int]:
    """A flag's comma-separated positive integers ("1,4,16"); argparse reports the error under the flag."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


@cache
def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer flag of at least `minimum`, worded as `check_at_least` words it."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(at_least_message(minimum, value))
        return value

    return integer


def at_least_message(minimum: float, value: Any) -> str:
    return f"must be at least {minimum}, got {value}"
