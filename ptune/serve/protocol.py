"""The OpenAI chat-completions shapes ptune serves: the request, checked (pydantic), and the bodies sent back.

Fields honoured: model, messages (system/developer/user/assistant/tool; content a string or text parts; an
assistant's tool_calls, a tool message's tool_call_id), max_tokens (or max_completion_tokens), temperature
(0 = greedy; OpenAI's default 1), top_p, stop (a string or up to 4), stream, stream_options.include_usage,
seed, n (only 1), tools and tool_choice (ptune/serve/tools.py). Other OpenAI fields are accepted and
ignored, as OpenAI-compatible servers do, except those whose meaning ptune cannot give (n > 1, logprobs),
which are refused. Every refusal is an `ApiError`: a status and one line.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ptune.families.base import Message
from ptune.infer.generate import MIN_TEMPERATURE


class ApiError(Exception):
    """An answer other than 200: HTTP status, one-line message, OpenAI's error `type`, `code` and `param`."""

    TYPES = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        503: "server_error",
        500: "server_error",
    }

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        return error_body(
            self.message, self.TYPES.get(self.status, "invalid_request_error"), self.code, self.param
        )


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Strict(BaseModel):
    # Strict: "5" is not an integer and 1 is not a string, as OpenAI's API answers; unknown fields ignored.
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1)


class Tool(_Strict):
    """An OpenAI function tool; checked here, put into the prompt as the client wrote it (`raw_tools`)."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    tool_calls: list[ToolCall] | None = None  # before content: its validator looks at them
    tool_call_id: str | None = None
    content: str | list[TextPart] | None = Field(None, validate_default=True)  # missing: checked as null

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v, info: ValidationInfo):
        # Said here: pydantic's own message for the union would name its first branch ("content.str: Input
        # should be a valid string") and hide what is wrong.
        if v is None and info.data.get("role") == "assistant" and info.data.get("tool_calls"):
            return v  # an assistant message that only calls tools
        if v is None:
            raise PydanticCustomError("content", "must be a string or a list of text parts, got null")
        for part in v if isinstance(v, list) else ():
            if isinstance(part, dict) and part.get("type", "text") != "text":
                raise PydanticCustomError(
                    "content",
                    "only text parts are supported, got a part of type {kind}",
                    {"kind": repr(part["type"])},
                )
        return v

    def as_message(self) -> Message:
        """The family-level message: developer is OpenAI's new name for system; text parts joined."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text}

    @property
    def text(self) -> str:
        """The content as one string (text parts joined; "" for an assistant message with only tool calls)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch.Generator.manual_seed takes
    n: int | None = Field(None, ge=1, le=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    logprobs: bool | None = None
    _raw_tools: list[dict] | None = PrivateAttr(None)  # the tool definitions exactly as the client sent them

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop strings")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v):
        # Below MIN_TEMPERATURE (ptune.infer.generate) the logits divided by it may overflow: never let it reach the model.
        if v is not None and 0 < v < MIN_TEMPERATURE:
            raise PydanticCustomError(
                "temperature",
                "must be 0 (greedy) or at least {low}, got {v}",
                {"low": MIN_TEMPERATURE, "v": v},
            )
        return v

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def raw_tools(self) -> list[dict] | None:
        return self._raw_tools

    @property
    def requested_tokens(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens


def parse_chat_request(body: bytes) -> ChatRequest:
    """The request body as a ChatRequest; ApiError 400 with one line (where and what) otherwise."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ApiError(
            400, f"request body is not valid JSON (line {e.lineno} column {e.colno}: {e.msg})"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        request = ChatRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, f"{where}: {first['msg']}", param=where) from None
    if request.logprobs:
        raise ApiError(400, "logprobs are not supported by ptune serve", param="logprobs")
    if request.messages[-1].role not in ("user", "tool"):
        raise ApiError(
            400,
            "the last message must be the user's or a tool result (ptune generates the "
            "assistant's answer to it)",
            param="messages",
        )
    request._raw_tools = data.get("tools") or None
    return request


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def completion_body(
    id_: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict:
    """A whole chat.completion."""
    return {
        "id": id_,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk_body(
    id_: str, model: str, delta: dict, finish_reason: str | None = None, usage_: dict | None = None
) -> dict:
    """One chat.completion.chunk of a stream (`choices` empty for the closing usage chunk)."""
    choices = [] if usage_ is not None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    body = {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: dict | str) -> bytes:
    """One server-sent event. Written by hand: it is one line (json.dumps never writes a newline) and a
    blank line, and the stream must end with OpenAI's literal `data: [DONE]`, which a JSON encoder would quote."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
