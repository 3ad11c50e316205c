"""`ptune bench --serve`: concurrent streaming clients against a live `ptune serve` on loopback.

    ptune bench --serve [--model_name_or_path BASE --prefix NAME=CKPT ...] [--concurrency 1,8,32]
                        [--prefixes 1,8] [--requests 4] [--max_tokens 32] [--baseline] [--url URL]

Without --prefix it makes 8 random prefixes for the base in a temporary folder. For every
number of prefixes and of clients, each client sends `--requests` streamed greedy chat completions one after
the other (request k of client c uses prefix (c + k) mod prefixes); the table gives requests/s, generated
tokens/s, time to first token and time per output token after the first (p50/p95 over requests). `--baseline` runs the same against a
second server with `--max_batch 1` (one request at a time) and prints how much batching gains. `--url`
benchmarks a server that is already running instead.

The clients and what they measure: ptune.bench.clients.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ptune.bench.clients import run_clients, run_in_process, served_models, start_server
from ptune.config.argtypes import BadArgument
from ptune.config.fields import base_model_field, device_field, int_list_field, prefixes_field
from ptune.config.parser import Command, parse_command
from ptune.io.errors import UserError


class Progress:
    """Progress lines on stderr (the table goes to stdout): a run takes minutes, and said nothing before.
    `row` counts the measured settings against `total` and says what each gave and how long it took."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def say(self, text: str) -> None:
        print(f"ptune bench --serve: {text}", file=sys.stderr, flush=True)

    def row(self, row: dict, seconds: float) -> None:
        self.done += 1
        self.say(
            f"[{self.done}/{self.total}] {row['server']}, {row['prefixes']} prefix(es), {row['clients']} "
            f"clients: {row['tokens_per_s']:,.0f} tokens/s ({seconds:.1f} s; "
            f"{time.perf_counter() - self.started:.0f} s so far)"
        )


def random_prefix(base: str | Path, out: Path, pre_seq_len: int, seed: int) -> Path:
    """A prefix checkpoint folder for `base` with a random (normal-initialised, seeded) prefix of `pre_seq_len`
    rows, written by ptune's own checkpoint writer as training would leave it: the speed of serving does not
    depend on what a prefix learned (and the tests need prefixes that answer differently)."""
    import torch

    from ptune.families.registry import load_tokenizer
    from ptune.model.load import load_model
    from ptune.train.checkpoint import write_prefix_files

    base = Path(base)
    tok = load_tokenizer(base)
    torch.manual_seed(seed)
    model = load_model(base, pre_seq_len=pre_seq_len, family=tok.family, device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    write_prefix_files(model, out, [base / f for f in tok.files])
    return out


def random_prefixes(base: str, folder: Path, count: int) -> dict[str, str]:
    """`count` random 16-token prefixes for `base` (seeded 0..count-1), written under `folder`; the base is
    loaded once (a 6B one takes a while), each prefix a fresh encoder on it."""
    import torch

    from ptune.families.registry import load_tokenizer
    from ptune.model.load import load_model
    from ptune.model.prefix import PrefixEncoder
    from ptune.train.checkpoint import write_prefix_files

    tok = load_tokenizer(base)
    model = load_model(base, pre_seq_len=16, family=tok.family, device="cpu")
    prefixes = {}
    for i in range(count):
        torch.manual_seed(i)
        model.prefix_encoder = PrefixEncoder(model.prefix_encoder.config)
        out = folder / f"prefix{i}"
        out.mkdir(parents=True, exist_ok=True)
        write_prefix_files(model, out, [Path(base) / f for f in tok.files])
        prefixes[f"prefix{i}"] = str(out)
    return prefixes


def measure_in_process(
    base: str, prefixes: dict[str, str], args: ServeBenchArguments, progress: Progress
) -> list[dict]:
    """`--in_process`: the scheduler and model alone, batched (--max_batch) and one at a time."""
    from ptune.serve.cli import load
    from ptune.serve.engine import Engine
    from ptune.serve.scheduler import Scheduler

    progress.say("in-process: loading the model")
    tok, model, encoders = load(base, prefixes, device=args.device)
    engine, rows = Engine(model, encoders, tok.pad_token_id), []
    warm = Scheduler(engine, tok, tok.stop_token_ids, args.max_batch)
    run_in_process(warm, tok, list(prefixes), min(len(prefixes), args.max_batch), 1, 4)  # warm-up, not timed
    for label, max_batch in (
        (f"in-process ({args.max_batch})", args.max_batch),
        ("in-process, one at a time", 1),
    ):
        for count in args.prefixes:
            for clients in args.concurrency:
                scheduler = Scheduler(
                    engine, tok, tok.stop_token_ids, max_batch, max_queue=clients * args.requests
                )
                start = time.perf_counter()
                summary = run_in_process(
                    scheduler, tok, list(prefixes)[:count], clients, args.requests, args.max_tokens
                )
                rows.append({"server": label, "prefixes": count, "clients": clients, **summary})
                progress.row(rows[-1], time.perf_counter() - start)
    return rows


# ---------------------------------------------------------------------------------------------- the verb
@dataclass
class ServeBenchArguments:
    """`ptune bench --serve`'s arguments."""

    url: str | None = field(
        default=None,
        metadata={"help": "Benchmark this running server (http://127.0.0.1:PORT) instead of starting one."},
    )
    model_name_or_path: str | None = base_model_field(
        "Base model folder (required unless --url; a tiny one: python -m scripts.make_tiny DIR, from a clone)."
    )
    prefix: list[str] = prefixes_field("As for ptune serve.")
    concurrency: list[int] = int_list_field([1, 8, 32], "Clients at once.")
    prefixes: list[int] = int_list_field([1, 8], "Prefixes the requests spread over.")
    requests: int = field(default=4, metadata={"help": "Requests per client."})
    max_tokens: int = field(default=32, metadata={"help": "max_tokens of every request."})
    max_batch: int = field(default=32, metadata={"help": "The batched server's --max_batch."})
    baseline: bool = field(
        default=False, metadata={"help": "Also run a server with --max_batch 1 and compare."}
    )
    device: str | None = device_field("The server's --device.")
    in_process: bool = field(
        default=False,
        metadata={
            "help": "Also run the scheduler in this process, without HTTP (batched and one at a time)."
        },
    )
    json: str | None = field(default=None, metadata={"help": "Also write the rows to this JSON file."})

    def __post_init__(self):
        if self.requests < 1 or self.max_tokens < 1:
            raise BadArgument("--requests and --max_tokens must be at least 1", "requests", "max_tokens")
        if not self.url and not self.model_name_or_path:
            raise BadArgument(
                "--model_name_or_path is required (the base to serve), or --url of a running server",
                "model_name_or_path",
            )
        if self.url and self.in_process:
            raise BadArgument(
                "--in_process loads the model here: give --model_name_or_path, not --url", "in_process"
            )


COMMAND = Command(
    "ptune bench --serve", (ServeBenchArguments,), "Concurrent streaming clients against ptune serve."
)


def measure(
    url: str, server: str, prefixes: list[str], args: ServeBenchArguments, progress: Progress
) -> list[dict]:
    """One row per (number of prefixes, clients) against the server at `url`."""
    rows = []
    for count in args.prefixes:
        if count > len(prefixes):
            raise UserError(f"--prefixes {count}: the server has only {len(prefixes)} prefixes")
        models = prefixes[:count]
        run_clients(url, models, len(models), 1, 4)  # warm-up, not timed
        for clients in args.concurrency:
            start = time.perf_counter()
            summary = run_clients(url, models, clients, args.requests, args.max_tokens)
            rows.append({"server": server, "prefixes": count, "clients": clients, **summary})
            progress.row(rows[-1], time.perf_counter() - start)
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "server",
        "prefixes",
        "clients",
        "requests",
        "req/s",
        "tokens/s",
        "TTFT p50",
        "TTFT p95",
        "token p50",
        "token p95",
    )
    lines = [
        [
            r["server"],
            r["prefixes"],
            r["clients"],
            r["requests"],
            f"{r['requests_per_s']:.1f}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['ttft_p50_ms']:.0f} ms",
            f"{r['ttft_p95_ms']:.0f} ms",
            f"{r['token_p50_ms']:.1f} ms",
            f"{r['token_p95_ms']:.1f} ms",
        ]
        for r in rows
    ]
    cells = [list(head), *[[str(c) for c in line] for line in lines]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def gains(rows: list[dict]) -> list[str]:
    """tokens/s batched over one at a time, for every setting both ran (over HTTP and in-process apart)."""

    def kind(row: dict) -> str:
        return "in-process" if row["server"].startswith("in-process") else "over HTTP"

    baseline = {
        (kind(r), r["prefixes"], r["clients"]): r["tokens_per_s"]
        for r in rows
        if r["server"].endswith("one at a time")
    }
    return [
        f"{kind(r)}, {r['prefixes']} prefix(es), {r['clients']} clients: batched "
        f"{r['tokens_per_s'] / baseline[key]:.1f}x the tokens/s of one at a time"
        for r in rows
        if not r["server"].endswith("one at a time")
        and (key := (kind(r), r["prefixes"], r["clients"])) in baseline
    ]


def measure_own_servers(args: ServeBenchArguments, progress: Progress) -> list[dict]:
    """Without --url: the rows of a batched server (and --baseline's one at a time, --in_process's scheduler)
    started here on --model_name_or_path, with its --prefix checkpoints or random ones in a temporary folder."""
    from ptune.serve.cli import parse_prefixes

    rows = []
    with tempfile.TemporaryDirectory(prefix="ptune-bench-serve-") as tmp:
        base, prefixes = args.model_name_or_path, parse_prefixes(args.prefix)
        if not prefixes:
            progress.say(f"making {max(args.prefixes)} random 16-token prefixes for {base}")
            prefixes = random_prefixes(base, Path(tmp), max(args.prefixes))
        device = ["--device", args.device] if args.device else []
        servers = [(f"batched ({args.max_batch})", ["--max_batch", str(args.max_batch)])]
        if args.baseline:
            servers.append(("one at a time", ["--max_batch", "1"]))
        for label, extra in servers:
            extra += ["--max_queue", "1024", *device]
            progress.say(f"starting the server ({label})")
            proc, url = start_server(base, prefixes, extra, Path(tmp) / "serve.log")
            try:
                rows += measure(url, label, list(prefixes), args, progress)
            finally:
                proc.terminate()
                proc.wait(60)
        if args.in_process:
            rows += measure_in_process(base, prefixes, args, progress)
    return rows


def main(argv: list[str]) -> int:
    """`ptune bench --serve`: start (or reach) the server(s), run the clients, print the table."""
    (args,) = parse_command(COMMAND, argv)
    settings = len(args.prefixes) * len(args.concurrency)
    servers = 1 if args.url else 1 + args.baseline + 2 * args.in_process
    progress = Progress(settings * servers)
    if args.url:
        rows = measure(args.url.rstrip("/"), "as running", served_models(args.url)[1], args, progress)
    else:
        rows = measure_own_servers(args, progress)
    print(table(rows))
    for line in gains(rows):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0
