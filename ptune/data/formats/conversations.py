"""``conversations``: ChatGLM3's finetune_demo, ``{"conversations": [{"role", "content"}, ...], "tools": [...]}``.

Roles system / user / assistant / observation, and THUDM's ``tool`` entry (``name``, ``parameters``,
``observation``: a tool call and its result in one entry); ``tools`` at the top or on the system message.
"""

from __future__ import annotations

import json

from ptune.data.formats.base import MessageList, Names, text
from ptune.io.errors import UserError


class Conversations(MessageList):
    name = "conversations"
    detect_rank = 2  # after sharegpt, whose rows have the same key
    defaults = {
        "messages": "conversations",
        "tools": "tools",
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "observation",
        "function_tag": "tool",
        "system_tag": "system",
    }

    def function_entry(self, item: dict, names: Names, where: str, at: str) -> list[dict]:
        """THUDM's ChatGLM3 `tool` entry: the call (name, parameters) and its observation, two messages."""
        name = text(item.get("name"), where, f"{at}.name")
        parameters = item.get("parameters", {})
        if not isinstance(parameters, dict):
            raise UserError(f"{where}: {at}.parameters: must be an object of argument values")
        result = item.get("observation")
        result = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
        call = {"role": "assistant", "content": "", "tool_call": {"name": name, "arguments": parameters}}
        return [call, {"role": "observation", "content": result}]


FORMAT = Conversations()
