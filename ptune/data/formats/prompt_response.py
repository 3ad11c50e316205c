"""``prompt_response``: THUDM's ChatGLM2 ptuning columns, named by --prompt_column / --response_column /
--history_column, e.g. ``{"content": "类型#裤", "summary": "..."}`` or ``{"prompt": "q2", "response": "a2",
"history": [["q1", "a1"]]}``.

A row is the Conversation history's (user, assistant) pairs, the prompt as the last user message and the
response as the last assistant message ("" for a missing value: the row is then dropped, or in predict has no
reference).  It is encoded with THUDM's lengths (`truncation`: ptune.data.splits.SourceTarget), so
its ids are what THUDM's ptuning gave.  Never detected by itself: its column names come from the flags.
"""

from __future__ import annotations

from typing import Any

from ptune.data.conversation import Conversation
from ptune.data.formats.base import Format, Names
from ptune.families.base import BadHistory, normalize_history
from ptune.io.errors import UserError


class PromptResponse(Format):
    name = "prompt_response"
    detect_rank = 4
    detectable = False
    truncation = "prompt_response"  # THUDM's lengths: source and target cut separately
    defaults = {"prompt": "prompt", "response": "response", "history": "history"}
    select_hint = (
        "--prompt_column/--response_column"  # how a file is given this format, besides --data_format
    )

    def chosen_by(self, data_args: Any) -> bool:
        """THUDM's configs name the columns and no format: --prompt_column chooses this one."""
        return data_args.prompt_column is not None

    def reading_names(self, path: Any, data_args: Any, data_columns: dict | None) -> Names:
        for flag, value in (
            ("--prompt_column", data_args.prompt_column),
            ("--response_column", data_args.response_column),
        ):
            if value is None:
                raise UserError(f"{flag} is required: the name of the column in {path} that holds it")
        return {
            "prompt": data_args.prompt_column,
            "response": data_args.response_column,
            "history": data_args.history_column or "",
        }

    def detect(self, row: dict, names: Names) -> bool:
        return "prompt" in row or "content" in row  # THUDM's datasets: chat (prompt) and ADGEN (content)

    def fits(self, row: dict, names: Names) -> bool:
        return True  # any row: its columns are checked one by one

    def parse(self, row: dict, names: Names, where: str, require_answer: bool) -> Conversation:
        prompt = _text(row.get(names["prompt"]), where, names["prompt"])
        response = _text(row.get(names["response"]), where, names["response"])
        history = _history(row.get(names["history"]), where) if names["history"] else []
        messages = [
            {"role": role, "content": content}
            for pair in history
            for role, content in zip(("user", "assistant"), pair, strict=True)
        ]
        messages += [
            {"role": "user", "content": prompt or ""},
            {"role": "assistant", "content": response or ""},
        ]
        return Conversation(tuple(messages))

    def check_columns(self, path: Any, seen: dict, names: Names, require_answer: bool) -> None:
        """A configured column that no row has is an error after the last row."""
        wanted = {"--prompt_column": names["prompt"]}
        if require_answer:
            wanted["--response_column"] = names["response"]
        if names["history"]:
            wanted["--history_column"] = names["history"]
        for flag, name in wanted.items():
            if name not in seen:
                raise UserError(f"{path}: no column {name!r} ({flag}); the file has {list(seen)}")


def _history(value, where: str) -> list[list[str]]:
    try:
        return [list(t) for t in normalize_history(value)]
    except BadHistory:
        raise UserError(f"{where}: history must be a list of [question, answer] string pairs") from None


def _text(value, where: str, column: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: column {column!r} must be a string, got {type(value).__name__}")
    return value


FORMAT = PromptResponse()
