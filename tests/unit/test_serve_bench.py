"""`ptune bench --serve`'s arithmetic on hand-made timings: percentiles, the summary, the batching gain."""

from __future__ import annotations

import math

import pytest

from ptune.bench.clients import Timing, percentile, summarize
from ptune.bench.serve import gains, table


def test_percentile_interpolates_between_order_statistics():
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    assert percentile([7.0], 0.95) == 7.0
    assert math.isnan(percentile([], 0.5))


def test_summarize():
    timings = [Timing(0.0, [0.1, 0.2, 0.4], 3), Timing(1.0, [1.3, 1.4], 2)]
    s = summarize(timings, wall=2.0)
    assert s["requests"] == 2 and s["requests_per_s"] == 1.0 and s["tokens_per_s"] == 2.5
    assert s["ttft_p50_ms"] == pytest.approx(200.0)  # first pieces after 100 and 300 ms
    assert s["token_p50_ms"] == pytest.approx(125.0)  # per request: 300 ms / 2 tokens, 100 ms / 1 token


def test_gains_and_table():
    rows = [
        {
            "server": "batched (32)",
            "prefixes": 8,
            "clients": 32,
            "requests": 128,
            "requests_per_s": 40.0,
            "tokens_per_s": 1200.0,
            "ttft_p50_ms": 30,
            "ttft_p95_ms": 50,
            "token_p50_ms": 8,
            "token_p95_ms": 15,
        },
        {
            "server": "one at a time",
            "prefixes": 8,
            "clients": 32,
            "requests": 128,
            "requests_per_s": 8.0,
            "tokens_per_s": 240.0,
            "ttft_p50_ms": 900,
            "ttft_p95_ms": 1500,
            "token_p50_ms": 4,
            "token_p95_ms": 6,
        },
    ]
    assert gains(rows) == ["over HTTP, 8 prefix(es), 32 clients: batched 5.0x the tokens/s of one at a time"]
    lines = table(rows).splitlines()
    assert lines[0].split() == [
        "server",
        "prefixes",
        "clients",
        "requests",
        "req/s",
        "tokens/s",
        "TTFT",
        "p50",
        "TTFT",
        "p95",
        "token",
        "p50",
        "token",
        "p95",
    ]
    assert lines[2].split() == [
        "batched",
        "(32)",
        "8",
        "32",
        "128",
        "40.0",
        "1,200",
        "30",
        "ms",
        "50",
        "ms",
        "8.0",
        "ms",
        "15.0",
        "ms",
    ]
