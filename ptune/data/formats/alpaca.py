"""``alpaca``: ``instruction`` / ``input`` / ``output`` (+ optional ``system``, ``history`` [[q, a], ...], ``tools``);
the question is instruction (+ "\\n" + input when there is one), the answer output (LLaMA-Factory)."""

from __future__ import annotations

from ptune.data.conversation import Conversation
from ptune.data.formats.base import Format, Names, text, tools
from ptune.families.base import BadHistory, normalize_history
from ptune.io.errors import UserError


class Alpaca(Format):
    name = "alpaca"
    detect_rank = 3
    defaults = {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
        "tools": "tools",
    }

    def detect(self, row: dict, names: Names) -> bool:
        return names["prompt"] in row and names["response"] in row

    def parse(self, row: dict, names: Names, where: str, require_answer: bool) -> Conversation:
        messages: list[dict] = []
        if row.get(names["system"]):
            messages.append({"role": "system", "content": text(row[names["system"]], where, names["system"])})
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
        instruction = text(row.get(names["prompt"]), where, names["prompt"])
        query = text(row.get(names["query"]), where, names["query"], required=False)
        messages.append({"role": "user", "content": f"{instruction}\n{query}" if query else instruction})
        output = text(row.get(names["response"]), where, names["response"], required=require_answer)
        if output or require_answer:
            messages.append({"role": "assistant", "content": output})
        found = tools(row.get(names["tools"]), where, names["tools"], allow_text=True)
        return Conversation(tuple(messages), found)


FORMAT = Alpaca()
