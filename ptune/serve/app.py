"""The FastAPI app: OpenAI's `/v1/models` and `/v1/chat/completions`, `/health`, and the chat page at `/`.

Requests are turned into prompt ids with the family's chat format (`chat_format.encode_messages`: the family's
`conversation_prompt`, the very function training, `ptune predict` and `ptune chat` build prompts with; a request
with tools: `serve.tools.plan_request`, the same function)
and handed to the scheduler thread; its events come back through an asyncio queue, as one JSON body or as
server-sent events ending in `data: [DONE]`.

Security defaults (README "Serving"): with an API key every path but `/health` needs `Authorization: Bearer
KEY` (or HTTP Basic auth with the key as password, which the page's 401 makes a browser ask for and send);
errors are one line in OpenAI's error object and never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from ptune.data.chat_format import encode_messages
from ptune.infer.generate import GenerationSettings
from ptune.io.errors import UserError
from ptune.serve.protocol import (
    ApiError,
    ChatRequest,
    chunk_body,
    completion_body,
    error_body,
    new_id,
    parse_chat_request,
    sse,
    usage,
)
from ptune.serve.scheduler import Event, Job, Scheduler
from ptune.serve.tools import ToolDeltas, ToolPlan, plan_request, shape_completion, uses_tools

logger = logging.getLogger("ptune.serve")
STATIC = resources.files("ptune.serve") / "static"


@dataclass
class Served:
    """What the server offers: the base model's name, each prefix's name → pre_seq_len, the limits."""

    base: str
    family: str
    prefixes: dict[str, int]
    tokenizer: object
    max_length: int = 2048
    max_new_tokens: int = 512
    max_request_bytes: int = 1 << 17  # a request body past it: 413, refused before it is read whole
    api_key: str | None = None
    allowed_hosts: list[str] | None = None  # Host headers answered (None: any); see serve.cli.allowed_hosts
    created: int = field(default_factory=lambda: int(time.time()))

    def model_list(self) -> list[dict]:
        entries = [
            {
                "id": self.base,
                "object": "model",
                "created": self.created,
                "owned_by": "ptune",
                "family": self.family,
                "pre_seq_len": 0,
            }
        ]
        for name, length in self.prefixes.items():
            entries.append(
                {
                    "id": name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "ptune",
                    "parent": self.base,
                    "family": self.family,
                    "pre_seq_len": length,
                }
            )
        return entries

    def prefix_of(self, model: str) -> str | None:
        """The prefix name a `model` field asks for (None: the base); ApiError 404 for an unknown one."""
        if model == self.base:
            return None
        if model in self.prefixes:
            return model
        names = ", ".join([self.base, *self.prefixes])
        raise ApiError(
            404,
            f"model {model!r} does not exist; this server has: {names}",
            code="model_not_found",
            param="model",
        )


def authorized(header: str | None, key: str) -> bool:
    """`Authorization: Bearer KEY`, or HTTP Basic with KEY as the password (what a browser sends once the
    page asked for it), compared in constant time."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.strip().encode(), key.encode())
    if scheme.lower() == "basic":
        try:
            password = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except ValueError:
            return False
        return hmac.compare_digest(password.encode(), key.encode())
    return False


class ApiKeyMiddleware:
    """401 for every path but /health without the key (a plain ASGI middleware: Starlette's
    BaseHTTPMiddleware would sit between the app and the client's disconnect messages). The page's 401 asks
    the browser for the key (HTTP Basic), which then sends it with the page's own API calls."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or path == "/health":
            return await self.app(scope, receive, send)
        if authorized(Headers(scope=scope).get("authorization"), self.key):
            return await self.app(scope, receive, send)
        error = ApiError(
            401, "missing or wrong API key (send Authorization: Bearer KEY)", code="invalid_api_key"
        )
        challenge = "Bearer" if path.startswith("/v1/") else 'Basic realm="ptune"'
        await error_response(error, {"WWW-Authenticate": challenge})(scope, receive, send)


def error_response(error: ApiError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def create_app(scheduler: Scheduler, served: Served) -> FastAPI:
    """The app around a scheduler that its lifespan starts and stops; the routes are the functions below,
    which find both in `request.app.state`."""

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="ptune serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.served = scheduler, served
    if served.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, key=served.api_key)
    if served.allowed_hosts is not None:  # added last: runs first, before the key is even looked at
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=served.allowed_hosts)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ApiError, api_error)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id}", get_model, methods=["GET"])
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/", page, methods=["GET"])
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method) in OpenAI's error shape."""
    return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc)


async def health(request: Request) -> JSONResponse:
    """Unauthenticated: ok (200) or draining (503, after SIGTERM), with the scheduler's counts."""
    scheduler: Scheduler = request.app.state.scheduler
    status = "draining" if scheduler.draining else "ok"
    return JSONResponse(
        {"status": status, **scheduler.stats()}, status_code=503 if scheduler.draining else 200
    )


async def list_models(request: Request) -> dict:
    return {"object": "list", "data": request.app.state.served.model_list()}


async def get_model(model_id: str, request: Request) -> dict:
    served: Served = request.app.state.served
    served.prefix_of(model_id)  # 404 for an unknown one
    return next(m for m in served.model_list() if m["id"] == model_id)


async def page(request: Request) -> FileResponse:
    return FileResponse(str(STATIC / "index.html"), media_type="text/html")


async def chat_completions(request: Request) -> Response:
    """Check the request, queue it (429 past the queue, 503 while draining), then answer whole or streamed."""
    scheduler: Scheduler = request.app.state.scheduler
    served: Served = request.app.state.served
    try:
        body = await read_body(request, served.max_request_bytes)
    except ClientDisconnect:  # gone before its body was in: nobody to answer, nothing to log
        return Response(status_code=499)
    # Parsing and tokenizing take a while for a long prompt: in a worker thread, so that the event loop
    # goes on answering (and streaming to) every other client meanwhile.
    chat, prompt, plan = await run_in_threadpool(parse_and_encode, body, served)
    job, events = _job(chat, prompt, served)
    try:
        accepted = scheduler.submit(job)
    except RuntimeError:
        raise ApiError(503, "the server is shutting down", code="shutting_down") from None
    if not accepted:
        raise ApiError(
            429, f"too many requests waiting ({scheduler.max_queue}); retry later", code="rate_limit_exceeded"
        )
    if chat.stream:
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        stream = _stream(job, events, chat.model, include_usage, plan)
        return StreamingResponse(
            stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    return await _collect(request, job, events, chat.model, plan)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past `limit` bytes: by its Content-Length before a byte is read, and
    while it streams in (chunked, or a Content-Length that lies), so a huge body is never held whole."""
    length = request.headers.get("content-length", "")
    too_big = ApiError(
        413,
        f"request body is larger than this server's limit of {limit} bytes (--max_request_bytes)",
        code="request_too_large",
    )
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def parse_and_encode(body: bytes, served: Served) -> tuple[ChatRequest, list[int], ToolPlan | None]:
    """The checked request, its prompt ids and (with tools) how its answer is read (run in a worker thread:
    see chat_completions)."""
    chat = parse_chat_request(body)
    served.prefix_of(chat.model)  # 404 before the work of tokenizing
    plan = plan_request(served.tokenizer, chat) if uses_tools(chat) else None
    try:
        if plan:
            return chat, plan.prompt, plan
        return chat, encode_messages(served.tokenizer, [m.as_message() for m in chat.messages]), None
    except UserError as e:
        raise ApiError(400, str(e), param="messages") from None


def _job(chat: ChatRequest, prompt: list[int], served: Served) -> tuple[Job, asyncio.Queue]:
    """The scheduler's request for a checked chat request and its prompt ids, and the queue its events
    arrive on."""
    prefix = served.prefix_of(chat.model)
    max_tokens = answer_budget(len(prompt), chat.requested_tokens, served)
    temperature = 1.0 if chat.temperature is None else chat.temperature  # OpenAI's default
    sampling = GenerationSettings.from_openai(
        temperature, 1.0 if chat.top_p is None else chat.top_p, chat.seed
    )
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def sink(event: Event) -> None:  # called from the scheduler thread
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is gone
            pass

    return Job(prompt, prefix, max_tokens, sampling, chat.stop_list, sink), events


def answer_budget(prompt_tokens: int, wanted: int | None, served: Served) -> int:
    """max_tokens for a prompt: the request's, or else --max_new_tokens cut to the room --max_length leaves;
    ApiError 400 (context_length_exceeded) when the prompt plus it does not fit."""
    room = served.max_length - prompt_tokens
    if wanted is None and room <= 0:
        raise ApiError(
            400,
            f"the prompt ({prompt_tokens} tokens) leaves no room for an answer within this "
            f"server's limit of {served.max_length} tokens (--max_length)",
            code="context_length_exceeded",
            param="messages",
        )
    if wanted is not None and wanted > room:
        raise ApiError(
            400,
            f"the prompt ({prompt_tokens} tokens) plus max_tokens ({wanted}) is more than this "
            f"server's limit of {served.max_length} tokens (--max_length)",
            code="context_length_exceeded",
            param="max_tokens",
        )
    return wanted if wanted is not None else min(served.max_new_tokens, room)


async def _collect(
    request: Request, job: Job, events: asyncio.Queue, model: str, plan: ToolPlan | None = None
) -> Response:
    """Wait for the whole answer. The body is read, so the next ASGI message can only be the client hanging
    up (as Starlette's StreamingResponse listens for it): a watcher then frees the row at once."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancelled.set()
        events.put_nowait(Event("cancelled"))

    watcher = asyncio.create_task(watch())
    pieces = []
    try:
        while True:
            event = await events.get()
            if event.kind == "text":
                pieces.append(event.text)
            elif event.kind == "error":
                return error_response(ApiError(event.status, event.text))
            elif event.kind == "cancelled":
                return Response(status_code=499)  # nobody is listening any more
            else:
                body = completion_body(
                    new_id(),
                    model,
                    "".join(pieces),
                    event.finish_reason,
                    event.prompt_tokens,
                    event.completion_tokens,
                )
                return JSONResponse(shape_completion(body, plan, "".join(pieces)) if plan else body)
    finally:
        watcher.cancel()
        job.cancelled.set()  # no-op for a finished row


async def _stream(
    job: Job, events: asyncio.Queue, model: str, include_usage: bool, plan: ToolPlan | None = None
) -> AsyncIterator[bytes]:
    """chat.completion.chunk events (text, or with tools `ToolDeltas`' content and tool calls); when the
    client disconnects, Starlette cancels this generator and the `finally` frees the row."""
    id_, deltas = new_id(), ToolDeltas(plan)
    try:
        yield sse(chunk_body(id_, model, {"role": "assistant", "content": ""}))
        pending = None
        while True:
            event, pending = pending or await events.get(), None
            if event.kind == "text":
                # Pieces that arrived while the last one was being sent go out as one chunk: a client (or
                # this loop) that falls behind the model catches up instead of lagging ever more.
                text = event.text
                while not events.empty():
                    pending = events.get_nowait()
                    if pending.kind != "text":
                        break
                    text, pending = text + pending.text, None
                for delta in deltas.push(text):
                    yield sse(chunk_body(id_, model, delta))
            elif event.kind == "error":
                yield sse(error_body(event.text, ApiError.TYPES.get(event.status, "server_error")))
                return
            else:
                for delta in deltas.finish():
                    yield sse(chunk_body(id_, model, delta))
                yield sse(chunk_body(id_, model, {}, deltas.finish_reason(event.finish_reason)))
                if include_usage:
                    yield sse(
                        chunk_body(id_, model, {}, usage_=usage(event.prompt_tokens, event.completion_tokens))
                    )
                yield sse("[DONE]")
                return
    finally:
        job.cancelled.set()
