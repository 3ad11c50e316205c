"""The `Conversation`: the one shape every data format is read into, and what makes one well-formed.

A `Conversation` is family-independent: messages with role system (first only) / user / assistant /
observation, ``content``, optional ``metadata`` and, for a tool call, ``tool_call`` = {name, arguments}; the
tool definitions are kept once, on the conversation.  The data formats (ptune.data.formats, one module each)
read a file's rows into it; encoding (ptune.data.splits, ptune.data.chat_format) turns it into ids, and how a
family writes tools, tool calls and the system prompt is the family's (ptune.families).  Chat and serve build
one too (ptune.infer.tool_chat, ptune.serve.tools).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ptune.io.errors import UserError

ROLES = ("system", "user", "assistant", "observation")


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


def check_order(
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


def empty_answer(conversation: Conversation) -> bool:
    """Whether an assistant message has neither text nor a tool call (a row to drop, as an empty response)."""
    return any(
        m["role"] == "assistant" and not m["content"].strip() and "tool_call" not in m
        for m in conversation.messages
    )
