"""What a data format is (`Format`), and what the formats share: a list of role-tagged messages (`MessageList`,
read by conversations, messages and sharegpt) and the checks of a string or a tools field.

A format knows its rows only: the key and role names it reads (``defaults``, LLaMA-Factory's dataset_info
vocabulary, overridden by --data_columns), whether a row shows it (`detect`) or can be read as it (`fits`),
and how one row becomes a `Conversation` (`parse`; a UserError naming ``file:line`` and the field).  Reading
files is ptune.data.rows'; encoding a Conversation is ptune.data.splits'.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from ptune.data.conversation import ROLES, Conversation, check_order
from ptune.io.errors import UserError

Names = dict[str, str]


class Format:
    """One data format (a stateless singleton, `FORMAT` in its module, listed in ptune.data.formats)."""

    name: ClassVar[str]
    defaults: ClassVar[Names] = {}  # key and role names; --data_columns overrides them
    # Detection tries the formats in this order: a more specific test before a looser one on the same key.
    detect_rank: ClassVar[int]
    # Whether the first row's keys may choose it when --data_format is not given (False: named by its flags).
    detectable: ClassVar[bool] = True
    # How its conversations are cut to the lengths: one of ptune.data.chat_format.TRUNCATION_POLICIES
    # ("conversation": whole turns dropped from the oldest; ptune.data.splits).
    truncation: ClassVar[str] = "conversation"
    select_hint: ClassVar[str] = ""  # the flags that choose it, for the "cannot tell the format" message

    def chosen_by(self, data_args: Any) -> bool:
        """Whether flags other than --data_format choose this format (before looking at the rows)."""
        return False

    def names(self, data_columns: dict | None) -> Names:
        """The defaults with --data_columns' overrides (already checked by ptune.data.formats)."""
        return {**self.defaults, **(data_columns or {})}

    def reading_names(self, path: Any, data_args: Any, data_columns: dict | None) -> Names:
        """The names a file is read with (prompt_response takes them from its column flags)."""
        return self.names(data_columns)

    def detect(self, row: dict, names: Names) -> bool:
        """Whether the row's keys show this format."""
        raise NotImplementedError

    def fits(self, row: dict, names: Names) -> bool:
        """Whether the row can be read as this format (a file's other rows are checked with it)."""
        return self.detect(row, names)

    def parse(self, row: dict, names: Names, where: str, require_answer: bool) -> Conversation:
        """The row as a Conversation; UserError naming `where` (file:line) and the field."""
        raise NotImplementedError

    def check_columns(self, path: Any, seen: dict, names: Names, require_answer: bool) -> None:
        """After the last row: what the whole file must have (`seen`: every key of every row, in order)."""


def text(value: Any, where: str, name: str, required: bool = True) -> str:
    """A string field; "" for a missing optional one."""
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "nothing" if value is None else type(value).__name__
        raise UserError(f"{where}: {name}: must be a string, got {got}")
    return value


def tools(value: Any, where: str, name: str, allow_text: bool) -> list | None:
    """A list of tool definitions (None: none); `allow_text`: JSON text of one is read too (LLaMA-Factory)."""
    if value is None or value == "" or value == []:
        return None
    if allow_text and isinstance(value, str):  # sharegpt (LLaMA-Factory) keeps tools as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise UserError(f"{where}: {name}: not JSON text of a list of tools") from None
    if not isinstance(value, list):
        raise UserError(f"{where}: {name}: must be a list of tool definitions, got {type(value).__name__}")
    return value


class MessageList(Format):
    """A row holding a list of role-tagged messages under ``names["messages"]``, tools at the top or on the
    system message.  Subclasses set the defaults and what differs: a system prompt at the top of the row,
    tools as JSON text, and how a `function_tag` entry (a tool call) is read."""

    system_at_top: ClassVar[bool] = False  # sharegpt: {"system": "...", "conversations": [...]}
    tools_as_text: ClassVar[bool] = False  # sharegpt: "tools" may be JSON text

    def detect(self, row: dict, names: Names) -> bool:
        return isinstance(row.get(names["messages"]), list)

    def fits(self, row: dict, names: Names) -> bool:
        """The message list, whose first entry (if any) has the format's role tag."""
        items = row.get(names["messages"]) if names.get("messages") else None
        if not isinstance(items, list):
            return False
        return not items or not isinstance(items[0], dict) or names["role_tag"] in items[0]

    def parse(self, row: dict, names: Names, where: str, require_answer: bool) -> Conversation:
        key = names["messages"]
        items = row.get(key)
        if items is None:
            raise UserError(f"{where}: no {key!r} field (a {self.name} file; keys {sorted(row)})")
        if not isinstance(items, list):
            raise UserError(f"{where}: {key}: must be a list of messages, got {type(items).__name__}")
        found = tools(row.get(names.get("tools", "")), where, names.get("tools", ""), self.tools_as_text)
        messages: list[dict] = []
        if self.system_at_top and row.get(names["system"]):
            messages.append({"role": "system", "content": text(row[names["system"]], where, names["system"])})
        origins = [names.get("system", "")] * len(messages)
        for i, item in enumerate(items):
            at = f"{key}[{i}]"
            if not isinstance(item, dict):
                raise UserError(f"{where}: {at}: must be an object, got {type(item).__name__}")
            new, item_tools = self._message(item, names, where, at)
            if item_tools is not None:
                if found is not None:
                    raise UserError(f"{where}: {at}.tools: tools are given twice (also at the top)")
                found = item_tools
            messages.extend(new)
            origins += [at] * len(new)
        check_order(messages, where, key, require_answer, origins)
        return Conversation(tuple(messages), found)

    def _message(self, item: dict, names: Names, where: str, at: str) -> tuple[list[dict], list | None]:
        """One entry of the list as canonical messages (a tool entry may give two) and its tools."""
        role_tag, content_tag = names["role_tag"], names["content_tag"]
        tag = item.get(role_tag)
        roles = {names.get(f"{r}_tag", ""): r for r in ROLES}
        if names.get("function_tag"):
            roles[names["function_tag"]] = "function"
        if tag not in roles:
            expected = ", ".join(t for t in roles if t)
            raise UserError(f"{where}: {at}.{role_tag}: unknown role {tag!r} (expected {expected})")
        role = roles[tag]
        item_tools = None
        if "tools" in item:
            if role != "system":
                raise UserError(f"{where}: {at}.tools: only the system message may define tools")
            item_tools = tools(item["tools"], where, f"{at}.tools", allow_text=False)
        if role == "function":
            return self.function_entry(item, names, where, at), None
        # a system message may be tools alone; any other message without its text is a data error, never ""
        content = text(item.get(content_tag), where, f"{at}.{content_tag}", required=role != "system")
        message = {"role": role, "content": content}
        if item.get("metadata"):
            if role != "assistant":
                raise UserError(
                    f"{where}: {at}.metadata: only assistant messages carry metadata (a tool name)"
                )
            message["metadata"] = text(item["metadata"], where, f"{at}.metadata")
        return [message], item_tools

    def function_entry(self, item: dict, names: Names, where: str, at: str) -> list[dict]:
        """An entry tagged `function_tag`: by default a call as JSON text {"name", "arguments"} (sharegpt's
        function_call; arguments an object or its JSON text) — one assistant message with `tool_call`."""
        content_tag = names["content_tag"]
        content = text(item.get(content_tag), where, f"{at}.{content_tag}")
        try:
            call = json.loads(content)
        except json.JSONDecodeError:
            call = None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise UserError(
                f'{where}: {at}.{content_tag}: a function call must be JSON {{"name", "arguments"}}'
            )
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                raise UserError(f"{where}: {at}.{content_tag}: arguments: not JSON") from None
        return [
            {"role": "assistant", "content": "", "tool_call": {"name": call["name"], "arguments": arguments}}
        ]
