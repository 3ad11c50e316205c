"""``sharegpt``: LLaMA-Factory's ``{"conversations": [{"from", "value"}, ...], "system", "tools"}``, roles human /
gpt / system / function_call (``{"name", "arguments"}`` JSON) / observation; ``tools`` may be JSON text."""

from __future__ import annotations

from ptune.data.formats.base import MessageList, Names


class ShareGPT(MessageList):
    name = "sharegpt"
    detect_rank = 1  # before conversations: the same key, told apart by the first entry's role tag
    system_at_top = True
    tools_as_text = True
    defaults = {
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
    }

    def detect(self, row: dict, names: Names) -> bool:
        items = row.get(names["messages"])
        return (
            isinstance(items, list)
            and bool(items)
            and isinstance(items[0], dict)
            and names["role_tag"] in items[0]
        )


FORMAT = ShareGPT()
