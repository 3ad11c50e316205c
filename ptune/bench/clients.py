"""The load `ptune bench --serve` puts on a server, and what it measures of it.

Clients are threads on `http.client` (the benchmark needs no HTTP client library at run time), each sending
streamed greedy chat completions one after the other (`run_clients`); `run_in_process` runs the same closed
loop on a scheduler in this process, without HTTP. Every request gives a `Timing`; `summarize` turns them into
requests/s, tokens/s, time to first token and time per output token after the first (p50/p95).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ptune.io.errors import UserError

PROMPTS = [
    "你好",
    "类型#上衣*材质#牛仔布*颜色#白色*风格#简约",
    "hello there, how are you?",
    "写一首诗",
    "a b c d e f",
]


@dataclass
class Timing:
    """One streamed request: when it was sent, when each piece of text arrived, and the tokens generated."""

    sent: float
    arrivals: list[float]
    tokens: int


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between order statistics; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(timings: list[Timing], wall: float) -> dict[str, float]:
    """requests/s and tokens/s over `wall` seconds; time to first token and time per output token after it
    (ms, p50/p95 over requests; a request's (last arrival - first) / (tokens - 1), as vLLM's TPOT)."""
    first = [(t.arrivals[0] - t.sent) * 1000 for t in timings if t.arrivals]
    per_token = [
        (t.arrivals[-1] - t.arrivals[0]) * 1000 / (t.tokens - 1)
        for t in timings
        if t.arrivals and t.tokens > 1
    ]
    return {
        "requests": len(timings),
        "requests_per_s": len(timings) / wall,
        "tokens_per_s": sum(t.tokens for t in timings) / wall,
        "ttft_p50_ms": percentile(first, 0.5),
        "ttft_p95_ms": percentile(first, 0.95),
        "token_p50_ms": percentile(per_token, 0.5),
        "token_p95_ms": percentile(per_token, 0.95),
    }


def stream_once(host: str, port: int, model: str, prompt: str, max_tokens: int) -> Timing:
    """One streamed greedy chat completion; raises RuntimeError on a non-200 answer."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream_options": {"include_usage": True},
        }
    )
    conn = http.client.HTTPConnection(host, port, timeout=600)
    try:
        sent = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read().decode()[:200]}")
        arrivals, tokens = [], 0
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if any(c["delta"].get("content") for c in chunk["choices"]):
                arrivals.append(time.perf_counter())
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
        return Timing(sent, arrivals, tokens)
    finally:
        conn.close()


def run_clients(
    url: str, models: list[str], clients: int, requests: int, max_tokens: int
) -> dict[str, float]:
    """`clients` threads, each sending `requests` streamed requests in turn; the summary of all of them."""
    parts = urlsplit(url)
    timings: list[Timing] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for k in range(requests):
            try:
                t = stream_once(
                    parts.hostname,
                    parts.port,
                    models[(c + k) % len(models)],
                    PROMPTS[(c + k) % len(PROMPTS)],
                    max_tokens,
                )
            except (OSError, RuntimeError) as e:
                with lock:
                    errors.append(str(e))
                return
            with lock:
                timings.append(t)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise UserError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return summarize(timings, time.perf_counter() - start)


def start_server(
    base: str, prefixes: dict[str, str], extra: list[str], log: Path
) -> tuple[subprocess.Popen, str]:
    """`ptune serve` in a subprocess on a free loopback port: (process, its URL)."""
    args = [sys.executable, "-m", "ptune", "serve", "--model_name_or_path", base, "--port", "0", *extra]
    for name, path in prefixes.items():
        args += ["--prefix", f"{name}={path}"]
    out = open(log, "w+", encoding="utf-8")
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for line in log.read_text(encoding="utf-8").splitlines():
            if line.startswith("ptune serve: http://"):
                return proc, line.split()[2].rstrip("/")
        if proc.poll() is not None:
            raise UserError(
                f"ptune serve exited with {proc.returncode}: {log.read_text(encoding='utf-8')[-500:]}"
            )
        time.sleep(0.2)
    proc.kill()
    raise UserError("ptune serve did not start within 10 minutes")


def served_models(url: str) -> tuple[str, list[str]]:
    """(the base's name, the prefixes' names) from GET /v1/models."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", "/v1/models")
        data = json.loads(conn.getresponse().read())["data"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--url {url}: no ptune serve answers there ({e})") from None
    finally:
        conn.close()
    return data[0]["id"], [m["id"] for m in data[1:]]


def run_in_process(scheduler, tok, models: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    """The same closed loop as `run_clients` without HTTP: `clients` requests in flight on the scheduler
    (stepped here), each finished one replaced by the next until clients x requests are done."""
    from ptune.data.chat_format import encode_messages
    from ptune.infer.generate import GenerationSettings
    from ptune.serve.scheduler import Job

    timings: list[Timing] = []
    sent = [0]

    def submit(c: int) -> None:
        k, timing = sent[0], Timing(time.perf_counter(), [], 0)
        sent[0] += 1
        prompt = encode_messages(tok, [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}])

        def sink(event) -> None:
            if event.kind == "text" or (event.kind == "done" and not timing.arrivals):
                timing.arrivals.append(time.perf_counter())
            if event.kind == "done":
                timing.tokens = event.completion_tokens
                timings.append(timing)
                if sent[0] < clients * requests:
                    submit(c)

        scheduler.submit(
            Job(prompt, models[(c + k) % len(models)], max_tokens, GenerationSettings(), (), sink)
        )

    start = time.perf_counter()
    for c in range(clients):
        submit(c)
    while scheduler.rows or scheduler.waiting:
        scheduler.step()
    return summarize(timings, time.perf_counter() - start)
