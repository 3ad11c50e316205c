"""A live `ptune serve` shared by the API and chat-page tests: a tiny ChatGLM3 base and four prefixes of
different lengths (random, so that each answers differently), on a free loopback port."""

from __future__ import annotations

import pytest

from ptune.tiny import make_tiny_checkpoint
from tests.serving import Server, make_prefix

SERVE_PREFIXES = {"p2": 2, "p4": 4, "p8": 8, "p16": 16}  # name: pre_seq_len (seed = pre_seq_len)


@pytest.fixture(scope="session")
def serve_models(tmp_path_factory):
    """(base folder, {prefix name: checkpoint folder})."""
    root = tmp_path_factory.mktemp("serve")
    base = make_tiny_checkpoint(root / "tiny-chatglm3", "chatglm3")
    prefixes = {name: make_prefix(base, root / name, n, seed=n) for name, n in SERVE_PREFIXES.items()}
    return base, prefixes


@pytest.fixture(scope="session")
def server(serve_models, tmp_path_factory):
    """The running server (`.port`, `.url`); stopped with SIGTERM at the end of the session."""
    base, prefixes = serve_models
    args = ["--model_name_or_path", str(base), "--max_batch", "16", "--max_queue", "64"]
    for name, path in prefixes.items():
        args += ["--prefix", f"{name}={path}"]
    running = Server(args, tmp_path_factory.mktemp("serve-log") / "serve.log")
    yield running
    assert running.stop() == 0, running.output()
