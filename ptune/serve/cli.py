"""`ptune serve`: load one base model and its prefixes, then serve them on uvicorn until SIGTERM / Ctrl-C.

    ptune serve --model_name_or_path BASE --prefix NAME=CHECKPOINT [--prefix NAME2=CHECKPOINT2 ...]
                [--host 127.0.0.1] [--port 8000] [--api_key KEY] [--max_batch 16] [--quantization_bit 4|8]

On SIGTERM (or Ctrl-C) the server stops listening, answers 503 to requests on open connections, finishes the
requests it has accepted (at most --shutdown_timeout seconds, then fails them: an open stream ends with an error
event), and exits with code 0.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from ptune.config.argtypes import BadArgument, check_at_least, check_choices
from ptune.config.fields import (
    ChatFormat,
    Dtype,
    base_model_field,
    chat_format_field,
    check_quantization_bit,
    device_field,
    dtype_field,
    prefixes_field,
    quantization_bit_field,
)
from ptune.config.parser import Command, parse_command
from ptune.io.errors import UserError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
# The default body limit: a prompt that fits --max_length tokens is far smaller than 64 bytes a token, even
# JSON-escaped (a CJK character is 6 bytes as \uXXXX, a token rarely more than 3 of them). A bigger body cannot
# fit and is refused unread: tokenizing it first (a single C call that holds the GIL) would stall every stream.
BYTES_PER_TOKEN, MIN_REQUEST_BYTES = 64, 65536
API_KEY = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: what a Bearer header carries as sent


@dataclass
class ServeArguments:
    """`ptune serve`'s arguments; checked when made (one-line BadArgument naming the flag)."""

    model_name_or_path: str | None = base_model_field(
        "Base model folder (default: the base the first --prefix names)."
    )
    prefix: list[str] = prefixes_field()
    name: str | None = field(
        default=None, metadata={"help": "The base model's name in the API (default: its folder's name)."}
    )
    host: str = field(
        default="127.0.0.1", metadata={"help": "Address to listen on (127.0.0.1: this machine only)."}
    )
    port: int = field(default=8000, metadata={"help": "Port (0: any free port)."})
    allowed_host: list[str] = field(
        default_factory=list,
        metadata={
            "append": True,
            "metavar": "NAME",
            "help": "On a loopback --host, a Host header to accept besides 127.0.0.1, localhost and [::1] "
            "(repeatable; a reverse proxy's name; '*': any).",
        },
    )
    api_key: str | None = field(
        default=None,
        metadata={
            "help": "Require 'Authorization: Bearer KEY' on every path but /health (default: $PTUNE_API_KEY)."
        },
    )
    max_batch: int = field(default=16, metadata={"help": "Most requests generated together."})
    max_queue: int = field(
        default=64, metadata={"help": "Most requests waiting for a free row; past it: 429."}
    )
    max_length: int = field(
        default=2048, metadata={"help": "Most prompt + max_tokens tokens per request; past it: 400."}
    )
    max_new_tokens: int = field(default=512, metadata={"help": "max_tokens of a request that gives none."})
    max_request_bytes: int | None = field(
        default=None,
        metadata={
            "help": "Largest request body; past it: 413, refused before it is read whole (default: "
            f"{BYTES_PER_TOKEN} bytes per --max_length token, at least {MIN_REQUEST_BYTES})."
        },
    )
    quantization_bit: int | None = quantization_bit_field()
    chat_format: ChatFormat | None = chat_format_field()
    dtype: Dtype = dtype_field()
    device: str | None = device_field()
    shutdown_timeout: float = field(
        default=30.0,
        metadata={"help": "Seconds SIGTERM waits for accepted requests before failing them."},
    )

    def __post_init__(self):
        check_choices(self)
        check_quantization_bit(self)
        if self.api_key is None:  # read here, not as the flag's default: --help must not print the key
            self.api_key = os.environ.get("PTUNE_API_KEY")
        if self.max_request_bytes is None:
            self.max_request_bytes = max(BYTES_PER_TOKEN * self.max_length, MIN_REQUEST_BYTES)
        check_at_least(self, 1, "max_batch", "max_queue", "max_length", "max_new_tokens", "max_request_bytes")
        if not 0 <= self.shutdown_timeout < float("inf"):
            raise BadArgument(
                f"--shutdown_timeout must be a number of seconds of at least 0, got {self.shutdown_timeout}",
                "shutdown_timeout",
            )
        if not 0 <= self.port <= 65535:
            raise BadArgument(f"--port {self.port}: not a port number", "port")
        if self.api_key is not None and not self.api_key.strip():
            raise BadArgument("--api_key is empty", "api_key")
        if self.api_key is not None and not API_KEY.match(self.api_key):
            # Starlette reads header bytes as latin-1 and the openai client refuses to send anything but ASCII,
            # so such a key could never be given: say so at start rather than answer 401 forever (the key itself
            # is not echoed).
            raise BadArgument(
                "--api_key must be printable ASCII without spaces (an HTTP header carries no other)",
                "api_key",
            )


COMMAND = Command(
    "ptune serve",
    (ServeArguments,),
    "Serve a base model and its P-Tuning v2 prefixes over an OpenAI-compatible HTTP API (and a chat page at /).",
)


def parse_prefixes(values: list[str]) -> dict[str, str]:
    """--prefix NAME=CHECKPOINT values → {name: checkpoint}; names unique, made of letters, digits, ._:-."""
    prefixes: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not path:
            raise UserError(f"--prefix {value}: expected NAME=CHECKPOINT")
        if not NAME.match(name):
            raise UserError(f"--prefix {value}: the name must be letters, digits and ._:- (at most 64)")
        if name in prefixes:
            raise UserError(f"--prefix {name} is given twice")
        if not Path(path).exists():
            raise UserError(f"--prefix {value}: {path} not found")
        prefixes[name] = path
    return prefixes


def load(
    base: str,
    prefixes: dict[str, str],
    *,
    chat_format: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    quantization_bit: int | None = None,
):
    """(tokenizer, model without prefix, {name: PrefixEncoder}); every prefix checked against the base and
    read with its position convention as `ptune predict` reads it (`ptune.model.prefix.load_prefix`)."""
    from ptune.families.registry import load_tokenizer
    from ptune.model.devices import device_named
    from ptune.model.load import load_model
    from ptune.model.prefix import load_prefix

    tok = load_tokenizer(base, chat_format)
    model = load_model(
        base, dtype=dtype, device=device_named(device), quantization_bit=quantization_bit, family=tok.family
    )
    encoders = {}
    for name, path in prefixes.items():
        encoder = load_prefix(path, model.base, model.source, dropout=0.0)
        encoders[name] = encoder.to(model.device).eval()
    return tok, model, encoders


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that --port 0 can report the port it got."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def build(args: ServeArguments):
    """(scheduler, what is served, "family, device") from checked arguments: the models loaded."""
    from ptune.config.parse import base_from_checkpoint
    from ptune.families.registry import family_of
    from ptune.serve.app import Served
    from ptune.serve.engine import Engine
    from ptune.serve.scheduler import Scheduler

    prefixes = parse_prefixes(args.prefix)
    if args.model_name_or_path is None:
        args.model_name_or_path = base_from_checkpoint("serve", next(iter(prefixes.values()), None))
    base = args.name or Path(args.model_name_or_path).resolve().name
    if base in prefixes:
        raise UserError(
            f"--prefix {base}: the base model is served under that name; pick another (or --name)"
        )
    tok, model, encoders = load(
        args.model_name_or_path,
        prefixes,
        chat_format=args.chat_format,
        dtype=args.dtype,
        device=args.device,
        quantization_bit=args.quantization_bit,
    )
    scheduler = Scheduler(
        Engine(model, encoders, tok.pad_token_id), tok, tok.stop_token_ids, args.max_batch, args.max_queue
    )
    served = Served(
        base,
        family_of(tok).name,
        {n: e.config.pre_seq_len for n, e in encoders.items()},
        tok,
        args.max_length,
        args.max_new_tokens,
        args.max_request_bytes,
        args.api_key,
    )
    return scheduler, served, f"{tok.family}, {model.device}"


def is_loopback(host: str) -> bool:
    """Whether `host` (a --host value or the bound address) is this machine only."""
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, extra: list[str]) -> list[str] | None:
    """The Host headers a server listening on `host` answers; None: any.

    Bound to a loopback address, only this machine's own names: a web page the user visits could otherwise
    reach the server through DNS rebinding (its name resolving to 127.0.0.1) and read the answers. Listening on
    another address, any name clients use is fine (and an --api_key is what guards it)."""
    if not is_loopback(host) or "*" in extra:
        return None
    return ["127.0.0.1", "localhost", "[::1]", *(name.lower() for name in extra)]


def main(argv: list[str]) -> int:
    """`ptune serve`: load, bind, serve until SIGTERM or Ctrl-C; 0 after a clean stop."""
    from ptune.serve.app import create_app

    (args,) = parse_command(COMMAND, argv)
    sock = bind(args.host, args.port)  # before loading: a busy port is said at once, not after minutes
    try:
        scheduler, served, what = build(args)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    if args.api_key is None and not is_loopback(host):
        print(
            f"ptune serve: warning: listening on {host} without --api_key: anyone who reaches it can use it",
            file=sys.stderr,
        )
    served.allowed_hosts = allowed_hosts(host, args.allowed_host)
    # uvicorn cancels what is still running when its graceful timeout ends, which would cut open streams: the
    # scheduler fails them first (at --shutdown_timeout), and uvicorn waits a little longer for those answers.
    config = uvicorn.Config(
        create_app(scheduler, served),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=args.shutdown_timeout + 5,
    )
    server = DrainingServer(config, scheduler, args.shutdown_timeout)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    print(
        f"ptune serve: {url} serving {', '.join([served.base, *served.prefixes])} ({what}); "
        "SIGTERM or Ctrl-C stops",
        flush=True,
    )
    server.run(sockets=[sock])
    stats = scheduler.stats()
    if server.received:
        print(
            f"ptune serve: stopped by {signal.Signals(server.received[0]).name}: {stats['finished']} requests "
            f"answered, {stats['failed']} failed",
            flush=True,
        )
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn's Server, plus: the first SIGTERM/SIGINT makes the scheduler refuse new requests (503) while
    uvicorn stops listening and waits for the accepted ones; and the signal is not raised again after the
    graceful stop (uvicorn re-raises it so that the process dies of it; ptune exits 0 after a clean stop).
    `shutdown_timeout` seconds after the first signal, the scheduler fails what is left (503; an open stream
    gets an error event and ends), before uvicorn's own, later, timeout would cut the connections."""

    def __init__(self, config: uvicorn.Config, scheduler, shutdown_timeout: float = 30.0):
        super().__init__(config)
        self.scheduler = scheduler
        self.received: list[int] = []
        reason = f"the server is shutting down (--shutdown_timeout {shutdown_timeout:g} s ran out)"
        self.deadline = threading.Timer(shutdown_timeout, scheduler.stop, kwargs={"reason": reason})
        self.deadline.daemon = True

    def handle_exit(self, sig, frame):
        self.scheduler.drain()
        if not self.deadline.is_alive() and not self.deadline.finished.is_set():
            self.deadline.start()
        super().handle_exit(sig, frame)

    async def _serve(self, sockets=None):
        await super()._serve(sockets)
        self.deadline.cancel()
        self.received = list(self._captured_signals)
        self._captured_signals.clear()
