"""`ptune chat --tools FILE.json`: a terminal chat in which the model may call tools; the user gives results.

The tools file is a JSON list of OpenAI function tools (``{"type": "function", "function": {"name",
"description", "parameters"}}``), taken as `ptune serve` takes a request's `tools`: the conversation is
ptune's `Conversation` with those tools (ChatGLM3: the bare functions, as its data holds them) and every
prompt is `family.conversation_prompt`, the training encoder's. An answer that is a call
(`ptune.infer.tool_calls.call_reader`) is shown as ``get_weather({"city": "Paris"})`` and the user is asked for
its result, which becomes an observation; then the model answers again. Older turns are dropped, oldest
first, when the conversation no longer fits in --max_length - --max_new_tokens.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from ptune.data.chat_format import conversation_prompt
from ptune.data.conversation import Conversation
from ptune.data.truncation import fit_prompt
from ptune.infer.tool_calls import Call, call_reader, family_tools
from ptune.io.errors import UserError
from ptune.io.files import json_error, read_text


def read_tools(path: str) -> list[dict]:
    """The tools file: a JSON list of function tools, each with a name; else UserError naming the file."""
    try:
        text = read_text(path)
    except UserError as e:  # "PATH: file not found", "PATH:LINE:COLUMN: not UTF-8 ...", as for every file
        raise UserError(f"--tools {e}") from None
    try:
        tools = json.loads(text)
    except json.JSONDecodeError as e:
        raise json_error(f"--tools {path}", text, e) from None
    if not isinstance(tools, list) or not tools:
        raise UserError(
            f'--tools {path}: must be a JSON list of tools, [{{"type": "function", "function": {{...}}}}]'
        )
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            raise UserError(f"--tools {path}: tool {i} has no function name ({json.dumps(tool)[:60]})")
    return tools


@dataclass
class ToolChat:
    """A chat with tools: the messages (as in a `Conversation`), the family's tools, the length budget."""

    tokenizer: Any
    tools: list[dict]
    max_source_length: int
    system: str = ""
    messages: list[dict] = field(default_factory=list)
    told_about_dropping: bool = False

    def __post_init__(self):
        self.reader = call_reader(self.tokenizer, self.tools)

    def clear(self) -> None:
        self.messages, self.told_about_dropping = [], False

    def conversation(self) -> Conversation:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return Conversation(tuple(head + self.messages), family_tools(self.tokenizer, self.tools))

    def prompt(self) -> tuple[list[int], list[str]]:
        """The prompt for the next answer and notes for the user; the oldest turns go when it is too long
        (for good: `messages` keeps what is left), and a last turn too long alone is an error."""
        conversation, notes = self.conversation(), []
        turns = conversation.turns()
        fitted = fit_prompt(self.tokenizer, conversation, self.max_source_length)
        lost = fitted.lost if fitted is not None else len(turns) - 1
        if lost:
            self.messages = [m for turn in turns[lost:] for m in turn]
            if not self.told_about_dropping:
                notes.append(
                    "(the conversation no longer fits in --max_length - --max_new_tokens = "
                    f"{self.max_source_length} tokens: the oldest turns are forgotten from now on)"
                )
                self.told_about_dropping = True
        if fitted is None:
            size = len(conversation_prompt(self.tokenizer, self.conversation()))
            raise UserError(f"the prompt ({size} tokens) is longer than --max_length - --max_new_tokens")
        return fitted.ids, notes

    def add_calls(self, calls: list[Call]) -> None:
        for call in calls:
            arguments = json.loads(call.arguments)
            self.messages.append(
                {"role": "assistant", "content": "", "tool_call": {"name": call.name, "arguments": arguments}}
            )


def tool_turn(model, chat: ToolChat, query: str, settings, name: str, read_line, write) -> None:
    """One question: the model answers; while it calls tools, each call is shown and its result asked for."""
    chat.messages.append({"role": "user", "content": query})
    while True:
        try:
            ids, notes = chat.prompt()
        except UserError as e:
            write(f"({e})\n")
            chat.messages.pop()
            return
        for note in notes:
            write(note + "\n")
        write(f"\n{name}: ")
        text, stopped = _answer(model, chat, ids, settings, write)
        calls = None if stopped else chat.reader.read(text)
        if not calls:
            chat.messages.append({"role": "assistant", "content": text})
            return
        chat.add_calls(calls)
        for call in calls:
            write(f"{call.name}({call.arguments})\n")
        for call in calls:
            write(f"result of {call.name}: ")
            result = read_line()
            if result is None:
                return
            if not sys.stdin.isatty():
                write(result + "\n")
            chat.messages.append({"role": "observation", "content": result})


def _answer(model, chat: ToolChat, ids: list[int], settings, write) -> tuple[str, bool]:
    """Generate and print one answer: (its text, whether Ctrl-C stopped it). Text that may still become a
    call is held until it cannot, and a call is not printed as text (the caller shows it)."""
    from ptune.data.chat_format import decode_response
    from ptune.infer.generate import stream_generate
    from ptune.infer.text_stream import stream_answer

    tok = chat.tokenizer
    held, holding = "", True

    def show(piece: str) -> None:
        nonlocal held, holding
        if holding:
            held += piece
            if not chat.reader.may_be_call(held):
                write(held)
                holding = False
        else:
            write(piece)

    # Ctrl-C stops the answer, as in `ptune chat`; what was written stays
    pieces = stream_generate(model, ids, tok.stop_token_ids, settings)
    tokens, stream, stopped = stream_answer(tok, pieces, show)
    text = decode_response(tok, tokens)
    call = not stopped and chat.reader.read(text)
    if holding and not call:
        write(text)
    if not holding:
        write(stream.flush())
    if not call:
        write(" (stopped)\n" if stopped else "\n")
    return text, stopped
