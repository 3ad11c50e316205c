"""``messages``: GLM-4's finetune_demo, ``{"messages": [...]}``, roles system / user / assistant / observation,
``tools`` on the system message (or at the top); ``metadata`` on an assistant message names a called tool."""

from __future__ import annotations

from ptune.data.formats.base import MessageList


class Messages(MessageList):
    name = "messages"
    detect_rank = 0
    defaults = {
        "messages": "messages",
        "tools": "tools",
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "observation",
        "function_tag": "",
        "system_tag": "system",
    }


FORMAT = Messages()
