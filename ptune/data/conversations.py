"""Chat data formats: which one a file is, and each row checked and turned into one `Conversation`.

Formats (``--data_format``; detected from the first row's keys when not given and no --prompt_column is set):

- ``prompt_response``: THUDM's columns (prompt / response / history), read by ptune.data.rows as before.
- ``conversations``: ChatGLM3's finetune_demo, ``{"conversations": [{"role", "content"}, ...], "tools": [...]}``;
  roles system / user / assistant / observation, and THUDM's ``tool`` (``name``, ``parameters``,
  ``observation``: a tool call and its result in one entry); ``tools`` at the top or on the system message.
- ``messages``: GLM-4's finetune_demo, ``{"messages": [...]}``, roles system / user / assistant / observation,
  ``tools`` on the system message (or at the top); ``metadata`` on an assistant message names a called tool.
- ``alpaca``: ``instruction`` / ``input`` / ``output`` (+ optional ``system``, ``history`` [[q, a], ...]).
- ``sharegpt``: ``{"conversations": [{"from", "value"}, ...], "system", "tools"}``, roles human / gpt / system /
  function_call (``{"name", "arguments"}`` JSON) / observation.

Key and role names can be renamed with ``--data_columns`` (LLaMA-Factory's dataset_info names: messages,
system, tools, prompt, query, response, history, role_tag, content_tag, user_tag, assistant_tag,
observation_tag, function_tag, system_tag).

A `Conversation` is family-independent: messages with role system (first only) / user / assistant /
observation, ``content``, optional ``metadata`` and, for a tool call, ``tool_call`` = {name, arguments}; the
tool definitions are kept once, on the conversation.  How a family writes tools, tool calls and the system
prompt is the family's (ptune.families).  Every error names ``file:line`` and the field, e.g.
``data.json:3: conversations[2].role: unknown role 'bot'``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ptune.families.base import BadHistory, normalize_history
from ptune.io.errors import UserError

FORMATS = ("prompt_response", "conversations", "messages", "alpaca", "sharegpt")
CONVERSATION_FORMATS = FORMATS[1:]
ROLES = ("system", "user", "assistant", "observation")

# Per format: the default names of the keys and role tags (LLaMA-Factory's dataset_info vocabulary).
_DEFAULTS: dict[str, dict[str, str]] = {
    "conversations": {
        "messages": "conversations",
        "tools": "tools",
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "observation",
        "function_tag": "tool",
        "system_tag": "system",
    },
    "messages": {
        "messages": "messages",
        "tools": "tools",
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "observation",
        "function_tag": "",
        "system_tag": "system",
    },
    "sharegpt": {
        "messages": "conversations",
        "system": "system",
        "tools": "tools",
        "role_tag": "from",
        "content_tag": "value",
        "user_tag": "human",
        "assistant_tag": "gpt",
        "observation_tag": "observation",
        "function_tag": "function_call",
        "system_tag": "system",
    },
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
        "tools": "tools",
    },
}
MAPPING_KEYS = tuple(sorted({k for d in _DEFAULTS.values() for k in d}))


@dataclass(frozen=True)
class Conversation:
    """One chat: `messages` (dicts: role, content, optional metadata / tool_call) and the tool definitions."""

    messages: tuple[dict[str, Any], ...]
    tools: list | None = None

    def to_json(self) -> str:
        return json.dumps({"messages": list(self.messages), "tools": self.tools}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Conversation:
        data = json.loads(text)
        return cls(tuple(data["messages"]), data["tools"])

    @property
    def system(self) -> list[dict[str, Any]]:
        """The leading system message as a list (empty when there is none)."""
        return list(self.messages[:1]) if self.messages and self.messages[0]["role"] == "system" else []

    def turns(self) -> list[list[dict[str, Any]]]:
        """The messages after the system prompt, split into turns: each starts at a user message."""
        turns: list[list[dict[str, Any]]] = []
        for message in self.messages[len(self.system) :]:
            if message["role"] == "user" or not turns:
                turns.append([])
            turns[-1].append(message)
        return turns

    def with_turns(self, turns: Sequence[Sequence[dict[str, Any]]]) -> Conversation:
        """The same system prompt and tools with other turns (truncation)."""
        return Conversation(tuple(self.system + [m for t in turns for m in t]), self.tools)

    def ends_with_answer(self) -> bool:
        return bool(self.messages) and self.messages[-1]["role"] == "assistant"


@dataclass(frozen=True)
class Mapping:
    """Key and role names of one format, defaults overridden by --data_columns."""

    format: str
    names: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, fmt: str, data_columns: dict | None) -> Mapping:
        names = dict(_DEFAULTS.get(fmt, {}))
        for key, value in (data_columns or {}).items():
            if key not in MAPPING_KEYS:
                raise UserError(f"--data_columns: unknown key {key!r} (one of {', '.join(MAPPING_KEYS)})")
            if not isinstance(value, str):
                raise UserError(f"--data_columns: {key} must be a string, got {json.dumps(value)}")
            names[key] = value
        return cls(fmt, names)

    def __getitem__(self, key: str) -> str:
        return self.names.get(key, "")


def parse_data_columns(value: dict | str | None) -> dict | None:
    """--data_columns as given: a JSON object (from a config) or its text (from a flag)."""
    if value is None or isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise UserError(f"--data_columns: not a JSON object ({e.msg})") from None
    if not isinstance(parsed, dict):
        raise UserError('--data_columns: must be a JSON object, e.g. \'{"messages": "dialog"}\'')
    return parsed


def row_format(row: dict, data_columns: dict | None = None) -> str | None:
    """The format a row's keys show (None: none of them)."""
    for fmt in ("messages", "conversations"):
        key = Mapping.of(fmt, data_columns)["messages"]
        if isinstance(row.get(key), list):
            first = row[key][0] if row[key] else None
            sharegpt = Mapping.of("sharegpt", data_columns)
            if fmt == "conversations" and isinstance(first, dict) and sharegpt["role_tag"] in first:
                return "sharegpt" if key == sharegpt["messages"] else fmt
            return fmt
    alpaca = Mapping.of("alpaca", data_columns)
    if alpaca["prompt"] in row and alpaca["response"] in row:
        return "alpaca"
    if "prompt" in row or "content" in row:
        return "prompt_response"
    return None


def check_same_format(fmt: str, row: dict, where: str, data_columns: dict | None) -> None:
    """A row of another format than the file's first is an error naming both. A row that can be read as
    `fmt` is fine even when detection would say otherwise (--data_columns can give messages and
    conversations the same key; a message may carry both role tags)."""
    if _fits(row, fmt, data_columns):
        return
    found = row_format(row, data_columns)
    if found is not None and found != fmt and fmt != "prompt_response":
        raise UserError(f"{where}: a {found} row in a {fmt} file (mixed formats; keys {sorted(row)})")


def _fits(row: dict, fmt: str, data_columns: dict | None) -> bool:
    """Whether a row has `fmt`'s keys: its message list (whose first entry has the format's role tag) or,
    for alpaca, the prompt and response keys."""
    names = Mapping.of(fmt, data_columns)
    if fmt == "alpaca":
        return names["prompt"] in row and names["response"] in row
    items = row.get(names["messages"]) if names["messages"] else None
    if not isinstance(items, list):
        return False
    return not items or not isinstance(items[0], dict) or names["role_tag"] in items[0]


def _text(value: Any, where: str, name: str, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "nothing" if value is None else type(value).__name__
        raise UserError(f"{where}: {name}: must be a string, got {got}")
    return value


def _tools(value: Any, where: str, name: str, allow_text: bool) -> list | None:
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


def _check_order(
    messages: list[dict], where: str, key: str, require_answer: bool, origins: list[str] | None = None
) -> None:
    """System only first; the first message after it a user one; an assistant message somewhere.
    `origins`: the field each message came from (a file's entry can give two messages, or none of them)."""
    if not messages:
        raise UserError(f"{where}: {key}: empty conversation")
    for i, m in enumerate(messages):
        if m["role"] == "system" and i > 0:
            at = origins[i] if origins else f"{key}[{i}]"
            if messages[0]["role"] == "system":
                raise UserError(f"{where}: {at}.role: a second system message (one, first, is allowed)")
            raise UserError(f"{where}: {at}.role: a system message must come first")
    rest = messages[1:] if messages[0]["role"] == "system" else messages
    if not rest or rest[0]["role"] != "user":
        raise UserError(f"{where}: {key}: the first message after the system prompt must be a user message")
    if require_answer and not any(m["role"] == "assistant" for m in rest):
        raise UserError(f"{where}: {key}: no assistant message (nothing to learn)")
    start = len(messages) - len(rest)
    for i in range(start + 1, len(messages)):
        problem = _sequence_problem(messages[i - 1], messages[i])
        if problem:
            at = origins[i] if origins else f"{key}[{i}]"
            raise UserError(f"{where}: {at}: {problem}")


def is_tool_call(message: dict) -> bool:
    """A tool call: an assistant message with `tool_call` or with `metadata` (the tool's name)."""
    return message["role"] == "assistant" and ("tool_call" in message or bool(message.get("metadata")))


def _sequence_problem(before: dict, message: dict) -> str | None:
    """What is wrong with `message` following `before` (None: nothing). Each would train a wrong habit: a
    call followed by anything but its result learns to end a call with the next role token; two user or two
    assistant messages in a row learn one speaker's text as the other's continuation. An assistant message
    may be followed by a tool call (ChatGLM3's thought, then the call)."""
    if is_tool_call(before) and message["role"] != "observation":
        name = before.get("metadata") or before["tool_call"]["name"]
        a = "an" if message["role"] in ("assistant", "observation") else "a"
        return f"{a} {message['role']} message after the tool call {name!r}: a call must be followed by its observation"
    if message["role"] == "observation" and not is_tool_call(before):
        return (
            "an observation without a tool call before it (an assistant message with metadata, a tool entry)"
        )
    if message["role"] == before["role"] == "user":
        return "two user messages in a row (a user message must be answered first)"
    if message["role"] == before["role"] == "assistant" and not is_tool_call(message):
        return "two assistant messages in a row (only a tool call may follow an assistant message)"
    return None


def parse_row(
    row: dict, fmt: str, where: str, data_columns: dict | None, require_answer: bool
) -> Conversation:
    """One row of a conversation format as a Conversation; UserError naming `where` (file:line) and field."""
    names = Mapping.of(fmt, data_columns)
    if fmt == "alpaca":
        return _alpaca(row, names, where, require_answer)
    key = names["messages"]
    items = row.get(key)
    if items is None:
        raise UserError(f"{where}: no {key!r} field (a {fmt} file; keys {sorted(row)})")
    if not isinstance(items, list):
        raise UserError(f"{where}: {key}: must be a list of messages, got {type(items).__name__}")
    tools = _tools(row.get(names["tools"]), where, names["tools"], allow_text=fmt == "sharegpt")
    messages: list[dict] = []
    if fmt == "sharegpt" and row.get(names["system"]):
        messages.append({"role": "system", "content": _text(row[names["system"]], where, names["system"])})
    origins = [names["system"]] * len(messages)
    for i, item in enumerate(items):
        at = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise UserError(f"{where}: {at}: must be an object, got {type(item).__name__}")
        new, item_tools = _message(item, names, where, at)
        if item_tools is not None:
            if tools is not None:
                raise UserError(f"{where}: {at}.tools: tools are given twice (also at the top)")
            tools = item_tools
        messages.extend(new)
        origins += [at] * len(new)
    _check_order(messages, where, key, require_answer, origins)
    return Conversation(tuple(messages), tools)


def _message(item: dict, names: Mapping, where: str, at: str) -> tuple[list[dict], list | None]:
    """One entry of a message list as canonical messages (THUDM's `tool` entry gives two) and its tools."""
    role_tag, content_tag = names["role_tag"], names["content_tag"]
    tag = item.get(role_tag)
    roles = {names[f"{r}_tag"]: r for r in ROLES}
    if names["function_tag"]:
        roles[names["function_tag"]] = "function"
    if tag not in roles:
        expected = ", ".join(t for t in roles if t)
        raise UserError(f"{where}: {at}.{role_tag}: unknown role {tag!r} (expected {expected})")
    role = roles[tag]
    tools = None
    if "tools" in item:
        if role != "system":
            raise UserError(f"{where}: {at}.tools: only the system message may define tools")
        tools = _tools(item["tools"], where, f"{at}.tools", allow_text=False)
    if role == "function" and names.format == "conversations":  # THUDM's ChatGLM3 `tool` entry
        name = _text(item.get("name"), where, f"{at}.name")
        parameters = item.get("parameters", {})
        if not isinstance(parameters, dict):
            raise UserError(f"{where}: {at}.parameters: must be an object of argument values")
        result = item.get("observation")
        result = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
        call = {"role": "assistant", "content": "", "tool_call": {"name": name, "arguments": parameters}}
        return [call, {"role": "observation", "content": result}], None
    # a system message may be tools alone; any other message without its text is a data error, never ""
    content = _text(item.get(content_tag), where, f"{at}.{content_tag}", required=role != "system")
    if role == "function":  # sharegpt: {"name": ..., "arguments": {...}} as JSON text
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
        ], None
    message = {"role": role, "content": content}
    if item.get("metadata"):
        if role != "assistant":
            raise UserError(f"{where}: {at}.metadata: only assistant messages carry metadata (a tool name)")
        message["metadata"] = _text(item["metadata"], where, f"{at}.metadata")
    return [message], tools


def _alpaca(row: dict, names: Mapping, where: str, require_answer: bool) -> Conversation:
    """instruction (+ "\\n" + input when there is one) is the question, output the answer (LLaMA-Factory)."""
    messages: list[dict] = []
    if row.get(names["system"]):
        messages.append({"role": "system", "content": _text(row[names["system"]], where, names["system"])})
    try:
        history = normalize_history(row.get(names["history"]) or [])
    except BadHistory as e:
        if e.turn is None:
            raise UserError(
                f"{where}: {names['history']}: must be a list of [question, answer] pairs"
            ) from None
        raise UserError(
            f"{where}: {names['history']}[{e.turn}]: must be a [question, answer] pair of strings"
        ) from None
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    instruction = _text(row.get(names["prompt"]), where, names["prompt"])
    query = _text(row.get(names["query"]), where, names["query"], required=False)
    messages.append({"role": "user", "content": f"{instruction}\n{query}" if query else instruction})
    output = _text(row.get(names["response"]), where, names["response"], required=require_answer)
    if output or require_answer:
        messages.append({"role": "assistant", "content": output})
    tools = _tools(row.get(names["tools"]), where, names["tools"], allow_text=True)
    return Conversation(tuple(messages), tools)


def empty_answer(conversation: Conversation) -> bool:
    """Whether an assistant message has neither text nor a tool call (a row to drop, as an empty response)."""
    return any(
        m["role"] == "assistant" and not m["content"].strip() and "tool_call" not in m
        for m in conversation.messages
    )
