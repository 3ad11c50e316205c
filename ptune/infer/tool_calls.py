"""Tool calls as each family writes them: read back from the text a model wrote, and begun by the server.

ptune trains on tool conversations (ptune.data.conversations: an assistant message with ``tool_call`` = {name,
arguments}, written by the family: ptune.families); this module goes the other way, for `ptune serve` and
`ptune chat --tools`:

- `call_reader(tok, tools)`: how to read a call out of an answer's text. ChatGLM3 and GLM-4 write the tool's
  name on the first line after ``<|assistant|>`` (the message's metadata), then the call: GLM-4 its arguments
  as JSON, ChatGLM3 ```` ```python\\ntool_call(a=1)\\n``` ```` (read with `ast`, literals only, never run). A
  native model writes what its chat template writes for an OpenAI ``tool_calls`` entry, which is found by
  rendering a probe call through the template: e.g. Qwen's ``<tool_call>\\n{"name": ..., "arguments":
  {...}}\\n</tool_call>`` or Llama's bare ``{"name": ..., "parameters": {...}}``.  An answer is a call only
  when all of it is one (or several, for a template that writes several): a declared tool's name and
  arguments that are a JSON object; anything else is text.
- `call_start_ids(tok, conversation, name)`: the ids the family writes at the start of a call to `name`, up to
  the end of the name (`tool_choice` naming a function: the server writes them, the model the arguments),
  taken from the training encoding of the same conversation followed by a call (so the ids are those the
  model learned).
- `family_tools(tok, tools)`: OpenAI tool definitions as the family's training data holds them (ChatGLM3's
  data and tokenizer take the bare function objects ``{"name", "description", "parameters"}``).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ptune.families.registry import family_of
from ptune.io.errors import UserError

PROBE_NAME = "ptune_probe_tool"
PROBE_ARGUMENT = "ptune_probe_argument"


@dataclass(frozen=True)
class Call:
    """One tool call: the function's name and its arguments as JSON text (OpenAI's `function.arguments`)."""

    name: str
    arguments: str


def tool_names(tools: Sequence[dict] | None) -> list[str]:
    """The names of tool definitions, OpenAI's ``{"type": "function", "function": {"name"}}`` or bare."""
    names = []
    for tool in tools or ():
        function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        if isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


def family_tools(tok: Any, tools: list[dict] | None) -> list[dict] | None:
    """OpenAI tool definitions as the family's training data has them: ChatGLM3's the bare functions
    (`Family.bare_tools`)."""
    if tools is None or not family_of(tok).bare_tools:
        return tools
    return [t["function"] if isinstance(t.get("function"), dict) else t for t in tools]


def json_object(text: str) -> dict | None:
    """`text` as a JSON object, or None."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class NameLineReader:
    """ChatGLM3 / GLM-4 (and native templates in GLM-4's style): ``name\\n`` then the call."""

    def __init__(self, names: Sequence[str], python_call: bool):
        self.names, self.python_call = list(names), python_call

    def may_be_call(self, text: str) -> bool:
        """Whether `text`, the answer so far, can still become a call (its first line a tool's name)."""
        first, newline, _ = text.partition("\n")
        if newline:
            return first in self.names
        return any(name.startswith(first) for name in self.names)

    def read(self, text: str) -> list[Call] | None:
        name, newline, rest = text.strip().partition("\n")
        if not newline or name not in self.names:
            return None
        rest = rest.strip()
        if self.python_call:
            arguments = python_call_arguments(rest)
            return None if arguments is None else [Call(name, json.dumps(arguments, ensure_ascii=False))]
        return None if json_object(rest) is None else [Call(name, rest)]


def python_call_arguments(code: str) -> dict | None:
    """ChatGLM3's ```` ```python\\ntool_call(a=1, b='x')\\n``` ```` as {"a": 1, "b": "x"}: keyword
    arguments whose values are Python literals (`ast.literal_eval`: nothing is run); None otherwise."""
    if code.startswith("```"):
        code = code.partition("\n")[2]
        code = code[: code.rfind("```")] if "```" in code else code
    try:
        tree = ast.parse(code.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError):
        return None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "tool_call"):
        return None
    if tree.args or any(k.arg is None for k in tree.keywords):
        return None
    try:
        return {k.arg: ast.literal_eval(k.value) for k in tree.keywords}
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None


class JsonReader:
    """A native template's calls: `opener` (may be ""), a JSON object with "name" and the arguments under
    `key` ("arguments" or "parameters"), `closer`; one or more in a row."""

    def __init__(self, names: Sequence[str], opener: str, closer: str, key: str):
        self.names, self.opener, self.closer, self.key = list(names), opener, closer, key

    def may_be_call(self, text: str) -> bool:
        text = text.lstrip()
        if self.opener:
            return self.opener.startswith(text) or text.startswith(self.opener)
        return text[:1] in ("", "{")

    def read(self, text: str) -> list[Call] | None:
        calls, rest = [], text.strip()
        while rest:
            if not rest.startswith(self.opener):
                return None
            try:
                value, end = json.JSONDecoder().raw_decode(rest[len(self.opener) :].lstrip())
            except (json.JSONDecodeError, RecursionError):
                return None
            rest = rest[len(self.opener) :].lstrip()[end:].lstrip()
            if self.closer:
                if not rest.startswith(self.closer):
                    return None
                rest = rest[len(self.closer) :].lstrip()
            call = self._call(value)
            if call is None:
                return None
            calls.append(call)
        return calls or None

    def _call(self, value: Any) -> Call | None:
        if not isinstance(value, dict) or value.get("name") not in self.names:
            return None
        arguments = value.get(self.key, {})
        if isinstance(arguments, str):
            arguments = json_object(arguments)
        if not isinstance(arguments, dict):
            return None
        return Call(value["name"], json.dumps(arguments, ensure_ascii=False))


def call_reader(tok: Any, tools: list[dict]) -> NameLineReader | JsonReader:
    """How the tokenizer's family writes a call to one of `tools` (module docstring); UserError when a
    native chat template writes calls in a form ptune cannot read back."""
    names, family = tool_names(tools), family_of(tok)
    if family.call_format in ("name+python", "name+json"):
        return NameLineReader(names, python_call=family.call_format == "name+python")
    if family.call_format != "template":
        raise UserError(f"{family.title} has no tool format: tools are for chatglm3 / glm4 models")
    text = probe_call_text(tok)
    start = text.find('"' + PROBE_NAME + '"')
    if start < 0 and text.startswith(PROBE_NAME + "\n"):
        return NameLineReader(names, python_call=False)  # e.g. a GLM-4 converted to transformers' glm
    for opening in _positions(text[:start], "{")[::-1]:
        try:
            value, end = json.JSONDecoder().raw_decode(text[opening:])
        except json.JSONDecodeError:
            continue
        key = next((k for k in ("arguments", "parameters") if isinstance(value, dict) and k in value), None)
        if value.get("name") == PROBE_NAME and key is not None:
            return JsonReader(names, text[:opening].strip(), text[opening + end :].strip(), key)
    raise UserError(
        f"{_folder(tok)}: ptune cannot read tool calls back in the form this chat template writes "
        f"them: {text[:80]!r}"
    )


def _positions(text: str, char: str) -> list[int]:
    return [i for i, c in enumerate(text) if c == char]


def _folder(tok: Any) -> str:
    return str(getattr(getattr(tok, "hf", None), "name_or_path", "") or "the tokenizer")


def probe_call_text(tok: Any) -> str:
    """What a native chat template writes for an assistant turn that calls PROBE_NAME, as the model's
    answer text (after the generation prompt, up to its first stop id, specials left out)."""
    from ptune.data.conversations import Conversation

    family = family_of(tok)
    tools = [{"type": "function", "function": {"name": PROBE_NAME, "parameters": {"type": "object"}}}]
    call = {
        "role": "assistant",
        "content": "",
        "tool_call": {"name": PROBE_NAME, "arguments": {PROBE_ARGUMENT: 1}},
    }
    question = ({"role": "user", "content": "q"},)
    before = tok.render_chat(family.template_messages(Conversation(question, tools)), True, tools)
    if before == tok.render_chat(family.template_messages(Conversation(question)), True, None):
        raise UserError(f"{_folder(tok)}: the tokenizer's chat template does not write tools")
    after = tok.render_chat(family.template_messages(Conversation((*question, call), tools)), False, tools)
    if not after.startswith(before):
        raise UserError(
            f"{_folder(tok)}: the chat template renders an assistant turn apart from its generation "
            "prompt, so ptune cannot tell how it writes a tool call"
        )
    ids = tok.encode(after[len(before) :])
    stops = set(tok.stop_token_ids)
    ids = ids[: next((i for i, t in enumerate(ids) if t in stops), len(ids))]
    return tok.decode(ids, skip_special_tokens=True).strip()


def call_start_ids(tok: Any, conversation: Any, name: str) -> list[int]:
    """The ids the family writes after `conversation`'s prompt to begin a call to `name`, up to the end of
    the name (and the quote or newline that closes it), cut where the training encoding has a token border."""
    from ptune.data.conversations import Conversation

    family = family_of(tok)
    call = {"role": "assistant", "content": "", "tool_call": {"name": name, "arguments": {PROBE_ARGUMENT: 0}}}
    ids, _ = family.conversation_ids(tok, Conversation((*conversation.messages, call), conversation.tools))
    prompt = family.conversation_prompt(tok, conversation)
    if ids[: len(prompt)] != prompt:
        raise UserError("this chat template tokenizes a call apart from its prompt; name no tool_choice")
    rest = ids[len(prompt) :]
    text = tok.decode(rest, skip_special_tokens=True)
    at = text.find(name)
    end = at + len(name) + (at + len(name) < len(text) and text[at + len(name)] in '"\n')
    k = 0
    while k < len(rest) and text[:end].startswith(tok.decode(rest[: k + 1], skip_special_tokens=True)):
        k += 1
    return rest[:k]
