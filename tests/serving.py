"""Test support for `ptune serve`: a real server process on a free loopback port, raw HTTP calls, and the
answers the server must give (computed with `ptune.infer.generate`). Random prefixes: `ptune.bench.serve.random_prefix`."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def reference_answers(base: Path, checkpoint: Path | None, prompts: list[str], max_new_tokens: int):
    """{prompt: (answer text, generated ids)} from `ptune.infer.generate.generate`, each prompt alone (batch of
    one): what a greedy server must answer whatever else it is generating."""
    from ptune.data.chat_format import decode_response, prompt_ids
    from ptune.families.registry import load_tokenizer
    from ptune.infer.generate import GenerationSettings, generate
    from ptune.model.load import load_model

    tok = load_tokenizer(base)
    model = load_model(base, ptuning_checkpoint=checkpoint, family=tok.family)
    answers = {}
    for prompt in prompts:
        ids = prompt_ids(tok, prompt)
        out = generate(
            model,
            torch.tensor([ids]),
            torch.ones(1, len(ids), dtype=torch.long),
            tok.stop_token_ids,
            tok.pad_token_id,
            GenerationSettings(max_new_tokens=max_new_tokens),
        )[0].tolist()
        answers[prompt] = (decode_response(tok, out), out)
    return answers


class Server:
    """`python -m ptune serve ARGS --port 0` in a subprocess; `port` once it listens."""

    def __init__(self, args: list[str], log: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        env.pop("PTUNE_API_KEY", None)
        self.log = log
        self.stdout = open(log, "w+", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ptune", "serve", *args, "--port", "0"],
            stdout=self.stdout,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        self.port = self._wait_for_port()

    def _wait_for_port(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(encoding="utf-8")
            for line in text.splitlines():
                if line.startswith("ptune serve: http://127.0.0.1:"):
                    return int(line.split("127.0.0.1:")[1].split("/")[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"ptune serve exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        raise RuntimeError(f"ptune serve did not start:\n{self.log.read_text(encoding='utf-8')}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stdout.close()
        return self.proc.returncode


def call(port: int, method: str, path: str, body: bytes | str | dict | None = None, headers=None):
    """One raw HTTP request: (status, parsed JSON body or text, response headers)."""
    if isinstance(body, dict):
        body = json.dumps(body)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        data = response.read().decode()
        try:
            data = json.loads(data)
        except json.JSONDecodeError:
            pass
        return response.status, data, dict(response.getheaders())
    finally:
        conn.close()


def chat_body(model: str, prompt: str, max_tokens: int = 6, **extra) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }
