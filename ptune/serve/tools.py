"""Tools in `ptune serve`: a request with tools → the training encoder's prompt; the answer → tool calls.

A request with `tools`, an assistant message with `tool_calls` or a `tool` message is turned into ptune's
`Conversation` (ptune.data.conversations: a call becomes an assistant message with ``tool_call``, a tool result an
``observation``; the tools go on the conversation as the family's data holds them) and its prompt is
`chat_format.conversation_prompt`, the function `ptune predict` and `ptune chat` build a conversation's prompt
with, so the served prompt is the training prompt of the same conversation. `tool_choice`:

- ``auto`` (the default with tools): the model decides; ``none``: the tools are left out of the prompt;
- a named function: the server writes the start of the call (`ptune.infer.tool_calls.call_start_ids`: GLM-4 and
  ChatGLM3 ``name\\n`` after ``<|assistant|>``, a native template its opener up to the name) and the model
  writes the arguments;
- ``required``: with one tool, as naming it; with several, the server writes what every call starts with
  (the ids all the tools' call starts share: a native template's opener, nothing for GLM-4/ChatGLM3, whose
  calls start with the name) and the model goes on; an answer that is still not a call comes back as text.

The answer is read with the family's `call_reader`: a call becomes ``message.tool_calls`` with
``finish_reason: "tool_calls"``; anything else stays ``content``. Streamed, the text is held back while it may
still become a call (`ToolDeltas`) and a call goes out once complete, as OpenAI streams one: a delta with
``index``, ``id``, ``type`` and the name, then the arguments in pieces.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from ptune.data.chat_format import conversation_prompt
from ptune.data.conversations import Conversation
from ptune.infer.tool_calls import Call, call_reader, call_start_ids, family_tools, tool_names
from ptune.io.errors import UserError
from ptune.serve.protocol import ApiError, ChatRequest

ARGUMENT_PIECE = 8  # characters of arguments per streamed delta


@dataclass
class ToolPlan:
    """How one request is prompted and its answer read: `prompt` ids (ending with `forced` ids when the
    server begins a call), `forced` the text of those ids, `reader` the family's call reader (None: tools
    left out, the answer is text)."""

    prompt: list[int]
    forced: str = ""
    reader: object | None = None

    def answer(self, text: str) -> tuple[str | None, list[Call] | None]:
        """(content, calls) of the answer text the model wrote after the prompt."""
        full = self.forced + text
        calls = self.reader.read(full) if self.reader is not None else None
        return (None, calls) if calls else (full, None)


def uses_tools(chat: ChatRequest) -> bool:
    return (
        bool(chat.tools)
        or chat.tool_choice is not None
        or any(m.role == "tool" or m.tool_calls for m in chat.messages)
    )


def conversation_of(chat: ChatRequest, tools: list[dict] | None) -> Conversation:
    """The request's messages as a Conversation (module docstring); ApiError 400 naming the message."""
    messages: list[dict] = []
    called: set[str] = set()
    for i, m in enumerate(chat.messages):
        if m.role in ("system", "developer"):
            if i:
                raise ApiError(
                    400,
                    f"messages.{i}.role: with tools, a system message must come first",
                    param=f"messages.{i}.role",
                )
            messages.append({"role": "system", "content": m.text})
        elif m.role == "tool":
            if m.tool_call_id not in called:
                raise ApiError(
                    400,
                    f"messages.{i}.tool_call_id: {m.tool_call_id!r} is no tool call of an earlier "
                    "assistant message",
                    param=f"messages.{i}.tool_call_id",
                )
            messages.append({"role": "observation", "content": m.text})
        elif m.role == "assistant" and m.tool_calls:
            if m.text:
                messages.append({"role": "assistant", "content": m.text})
            for k, call in enumerate(m.tool_calls):
                arguments = _arguments(
                    call.function.arguments, f"messages.{i}.tool_calls.{k}.function.arguments"
                )
                messages.append(
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_call": {"name": call.function.name, "arguments": arguments},
                    }
                )
                called.add(call.id)
        else:
            messages.append({"role": m.role, "content": m.text})
    return Conversation(tuple(messages), tools)


def _arguments(text: str, where: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"{where}: not JSON ({e.msg})", param=where) from None
    if not isinstance(value, dict):
        raise ApiError(400, f"{where}: must be a JSON object", param=where)
    return value


def plan_request(tok, chat: ChatRequest) -> ToolPlan:
    """The prompt and call reader of a request that uses tools (`uses_tools`); ApiError 400 for what the
    family cannot write (ChatGLM2, a template without tools) or a tool_choice naming no tool."""
    choice = chat.tool_choice
    if choice is not None and not chat.tools:
        raise ApiError(400, "tool_choice: only allowed when tools are given", param="tool_choice")
    names = tool_names(chat.raw_tools)
    if choice is not None and not isinstance(choice, str) and choice.function.name not in names:
        raise ApiError(
            400,
            f"tool_choice: no tool named {choice.function.name!r} in tools (" + ", ".join(names) + ")",
            param="tool_choice",
        )
    offered = chat.raw_tools if choice != "none" else None
    conversation = conversation_of(chat, family_tools(tok, offered))
    try:
        prompt = conversation_prompt(tok, conversation)
        if offered is None:
            return ToolPlan(prompt)
        reader = call_reader(tok, offered)
        starts = _call_starts(tok, conversation, names, choice)
    except UserError as e:
        raise ApiError(400, str(e), param="tools" if offered else "messages") from None
    return ToolPlan(prompt + starts, tok.decode(starts, skip_special_tokens=True), reader)


def _call_starts(tok, conversation: Conversation, names: list[str], choice) -> list[int]:
    """The ids the server writes into the answer: a named function's call start; for `required`, what all
    the tools' call starts share; nothing for auto."""
    if choice is None or choice == "auto":
        return []
    wanted = names if choice == "required" else [choice.function.name]
    starts = [call_start_ids(tok, conversation, name) for name in wanted]
    shared = 0
    while all(shared < len(s) and s[shared] == starts[0][shared] for s in starts):
        shared += 1
    return starts[0][:shared]


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def tool_call_entries(calls: list[Call]) -> list[dict]:
    """`message.tool_calls` of a completion."""
    return [
        {"id": new_call_id(), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def shape_completion(body: dict, plan: ToolPlan, text: str) -> dict:
    """A chat.completion body (`protocol.completion_body`) with the answer read as content or tool calls."""
    content, calls = plan.answer(text)
    choice = body["choices"][0]
    choice["message"]["content"] = content
    if calls:
        choice["message"]["tool_calls"] = tool_call_entries(calls)
        choice["finish_reason"] = "tool_calls"
    return body


class ToolDeltas:
    """The `delta`s of a stream (module docstring): text goes out as it comes unless it may still become a
    call, in which case it is held until it cannot, or until the end, when it is read."""

    def __init__(self, plan: ToolPlan | None):
        self.plan = plan
        self.holding = plan is not None and plan.reader is not None
        self.held = ""
        self.called = False

    def push(self, text: str) -> list[dict]:
        if not self.holding:
            return [{"content": text}] if text else []
        self.held += text
        if self.plan.reader.may_be_call(self.plan.forced + self.held):
            return []
        self.holding = False
        return [{"content": self.plan.forced + self.held}]

    def finish(self) -> list[dict]:
        if not self.holding:
            return []
        content, calls = self.plan.answer(self.held)
        if not calls:
            return [{"content": content}] if content else []
        self.called = True
        deltas = []
        for index, entry in enumerate(tool_call_entries(calls)):
            arguments, entry["function"]["arguments"] = entry["function"]["arguments"], ""
            deltas.append({"tool_calls": [{"index": index, **entry}]})
            for at in range(0, len(arguments), ARGUMENT_PIECE):
                piece = arguments[at : at + ARGUMENT_PIECE]
                deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        return deltas

    def finish_reason(self, reason: str | None) -> str | None:
        return "tool_calls" if self.called else reason
