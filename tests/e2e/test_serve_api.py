"""`ptune serve` driven with the official `openai` client on a free loopback port: models, plain and streamed
completions for the base and every prefix, greedy answers equal to `ptune predict`'s, 64 concurrent requests
over 4 prefixes, and every bad request answered with its status while the server keeps serving."""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from ptune.cli import main
from tests.e2e.conftest import SERVE_PREFIXES
from tests.serving import call, chat_body, reference_answers

PROMPTS = ["你好", "hello there, how are you doing today?", "类型#上衣*材质#牛仔布*颜色#白色", "a b c d"]
MODELS = ["tiny-chatglm3", *SERVE_PREFIXES]
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def predicted(serve_models, tmp_path_factory, hf_cache):
    """{model: {prompt: answer}} from `ptune predict` (greedy) for the base and every prefix."""
    base, prefixes = serve_models
    folder = tmp_path_factory.mktemp("predict")
    test_file = folder / "test.json"
    test_file.write_text("".join(json.dumps({"q": p, "a": "-"}, ensure_ascii=False) + "\n" for p in PROMPTS))
    answers = {}
    for model in MODELS:
        out = folder / model
        argv = [
            "predict",
            "--model_name_or_path",
            str(base),
            "--test_file",
            str(test_file),
            "--output_dir",
            str(out),
            "--prompt_column",
            "q",
            "--response_column",
            "a",
            "--max_new_tokens",
            str(MAX_TOKENS),
            "--per_device_eval_batch_size",
            "4",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
        ]
        if model in prefixes:
            argv += ["--ptuning_checkpoint", str(prefixes[model])]
        assert main(argv) == 0
        rows = [json.loads(line) for line in (out / "generated_predictions.txt").read_text().splitlines()]
        answers[model] = dict(zip(PROMPTS, [r["predict"] for r in rows], strict=True))
    return answers


def ask(client, model, prompt, stream=False, **extra):
    """(content, finish_reason, usage) of one greedy chat completion."""
    kwargs = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        **extra,
    }
    if not stream:
        done = client.chat.completions.create(**kwargs)
        return done.choices[0].message.content, done.choices[0].finish_reason, done.usage
    pieces, reason, usage = [], None, None
    for chunk in client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kwargs
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reason = choice.finish_reason or reason
    return "".join(pieces), reason, usage


def test_models_lists_the_base_and_every_prefix(client):
    listed = client.models.list().data
    assert [m.id for m in listed] == MODELS
    assert [m.model_extra["pre_seq_len"] for m in listed] == [0, 2, 4, 8, 16]
    assert client.models.retrieve("p8").id == "p8"


def test_greedy_answers_equal_ptune_predict(client, predicted, serve_models):
    from ptune.data.chat_format import encode_messages
    from ptune.families.registry import load_tokenizer

    tok = load_tokenizer(serve_models[0])
    assert len({predicted[m][PROMPTS[1]] for m in MODELS}) == len(MODELS)  # each prefix answers differently
    for model in MODELS:
        for prompt in PROMPTS:
            prompt_tokens = len(encode_messages(tok, [{"role": "user", "content": prompt}]))
            for stream in (False, True):
                text, reason, usage = ask(client, model, prompt, stream)
                assert text == predicted[model][prompt], (model, prompt, stream)
                assert reason == "length"  # random weights never say eos in 6 tokens
                assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens, MAX_TOKENS)


def test_64_concurrent_requests_over_4_prefixes(client, serve_models, server):
    base, prefixes = serve_models
    expected = {name: reference_answers(base, path, PROMPTS, MAX_TOKENS) for name, path in prefixes.items()}
    jobs = [(name, PROMPTS[i % 4], i % 3 == 0) for i, name in enumerate(list(prefixes) * 16)]
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda job: ask(client, *job), jobs))
    assert len(answers) == 64
    for (name, prompt, _), (text, reason, _) in zip(jobs, answers, strict=True):
        assert (text, reason) == (expected[name][prompt][0], "length"), (name, prompt)
    status, health, _ = call(server.port, "GET", "/health")
    assert status == 200 and health["failed"] == 0 and health["running"] == 0 and health["waiting"] == 0


def test_system_message_and_stop_string(client, predicted):
    answer = predicted["p4"][PROMPTS[0]]
    stop = answer[3:5]
    text, reason, _ = ask(client, "p4", PROMPTS[0], stop=[stop])
    assert (text, reason) == (answer[: answer.index(stop)].rstrip(), "stop")
    with_system = client.chat.completions.create(
        model="p4",
        messages=[{"role": "system", "content": "你是一个助手"}, {"role": "user", "content": PROMPTS[0]}],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    assert with_system.usage.prompt_tokens > ask(client, "p4", PROMPTS[0])[2].prompt_tokens


BAD = [  # (body, status, message)
    (
        b'{"model": "p2", "messages": [',
        400,
        "request body is not valid JSON (line 1 column 30: Expecting value)",
    ),
    (
        chat_body("nope", "hi"),
        404,
        "model 'nope' does not exist; this server has: tiny-chatglm3, p2, p4, p8, p16",
    ),
    (chat_body("p2", "hi", max_tokens="5"), 400, "max_tokens: Input should be a valid integer"),
    ({"model": "p2", "messages": "hi"}, 400, "messages: Input should be a valid list"),
    (chat_body("p2", "hi", temperature="hot"), 400, "temperature: Input should be a valid number"),
    (
        chat_body("p2", "hi", max_tokens=5000),
        400,
        "the prompt (9 tokens) plus max_tokens (5000) is more than this "
        "server's limit of 2048 tokens (--max_length)",
    ),
    (
        {
            "model": "p2",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        },
        400,
        "messages.0.content: only text parts are supported, got a part of type 'image_url'",
    ),
    (
        {"model": "p2", "messages": [{"role": "user", "content": None}]},
        400,
        "messages.0.content: must be a string or a list of text parts, got null",
    ),
    (
        chat_body("p2", "hi", temperature=1e-300),
        400,
        "temperature: must be 0 (greedy) or at least 0.01, got 1e-300",
    ),
    (
        b'{"model": "p2", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        400,
        "temperature: Input should be a finite number",
    ),
    (chat_body("p2", "hi", top_p=float("inf")), 400, "top_p: Input should be a finite number"),
    (
        chat_body("p2", "hi", seed=1180591620717411303424),
        400,
        "seed: Input should be less than or equal to 18446744073709551615",
    ),
    (
        {"model": "p2", "messages": [{"role": "user", "content": "hi " * 700}]},
        400,
        "the prompt (2107 tokens) "
        "leaves no room for an answer within this server's limit of 2048 tokens (--max_length)",
    ),
]


@pytest.mark.parametrize("body, status, message", BAD)
def test_bad_requests_get_their_status_and_the_server_keeps_serving(server, client, body, status, message):
    got, data, _ = call(server.port, "POST", "/v1/chat/completions", body)
    assert (got, data["error"]["message"]) == (status, message)
    assert set(data["error"]) == {"message", "type", "param", "code"}
    assert ask(client, "p2", "hi")[1] == "length"  # still serving


def test_openai_client_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        ask(client, "missing", "hi")
    assert e.value.status_code == 404 and e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="p2", messages=[{"role": "user", "content": "x"}], max_tokens=9999
        )
    assert e.value.code == "context_length_exceeded"


def test_bench_serve_against_the_running_server(server, capsys):
    argv = [
        "bench",
        "--serve",
        "--url",
        server.url,
        "--concurrency",
        "1,3",
        "--prefixes",
        "1,4",
        "--requests",
        "2",
        "--max_tokens",
        "4",
    ]
    assert main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[:5] for row in rows] == [
        ["as", "running", "1", "1", "2"],
        ["as", "running", "1", "3", "6"],
        ["as", "running", "4", "1", "2"],
        ["as", "running", "4", "3", "6"],
    ]


def test_bench_serve_starts_its_own_servers_with_random_prefixes(serve_models, capsys):
    """Without --url: a batched server and (--baseline) a one-at-a-time one on the given base, with random
    prefixes made for the run when no --prefix is given; with no base at all, one line and exit 2."""
    base, _ = serve_models
    argv = [
        "bench",
        "--serve",
        "--model_name_or_path",
        str(base),
        "--concurrency",
        "2",
        "--prefixes",
        "2",
        "--requests",
        "1",
        "--max_tokens",
        "2",
        "--baseline",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    rows = [line.split() for line in out if line.startswith(("batched", "one at a time"))]
    progress = [
        line.split(" tokens/s")[0] for line in captured.err.splitlines() if line.startswith("ptune bench")
    ]
    assert [line.rsplit(": ", 1)[0] if "[" in line else line for line in progress] == [
        f"ptune bench --serve: making 2 random 16-token prefixes for {base}",
        "ptune bench --serve: starting the server (batched (32))",
        "ptune bench --serve: [1/2] batched (32), 2 prefix(es), 2 clients",
        "ptune bench --serve: starting the server (one at a time)",
        "ptune bench --serve: [2/2] one at a time, 2 prefix(es), 2 clients",
    ]
    # prefixes, clients, requests (2 clients x 1), then rates and four "N ms" latencies
    assert [row[-13:-10] for row in rows] == [["2", "2", "2"], ["2", "2", "2"]]
    assert [row[0] for row in rows] == ["batched", "one"]
    assert main(["bench", "--serve"]) == 2
    assert capsys.readouterr().err == (
        "ptune bench: error: --model_name_or_path is required (the base to serve), or --url of a running server\n"
    )


def test_bad_serve_flags_are_one_line_and_exit_2(serve_models, capsys, tmp_path):
    import shutil
    import socket

    from safetensors.torch import load_file, save_file

    base, prefixes = serve_models
    diverged = shutil.copytree(
        prefixes["p2"], tmp_path / "diverged"
    )  # a prefix holding a NaN: refused at start
    state = load_file(diverged / "model.safetensors")
    next(iter(state.values()))[0, 0] = float("nan")
    save_file(state, diverged / "model.safetensors")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    model = ["--model_name_or_path", str(base), "--port", "0"]  # a later --port wins
    cases = [
        (["--prefix", "p2"], "--prefix p2: expected NAME=CHECKPOINT"),
        (["--prefix", "a b=x"], "--prefix a b=x: the name must be letters, digits and ._:- (at most 64)"),
        (["--prefix", "a=/nonexistent/ckpt"], "--prefix a=/nonexistent/ckpt: /nonexistent/ckpt not found"),
        (["--prefix", f"a={prefixes['p2']}", "--prefix", f"a={prefixes['p4']}"], "--prefix a is given twice"),
        (
            ["--prefix", f"tiny-chatglm3={prefixes['p2']}"],
            "--prefix tiny-chatglm3: the base model is served under that name; pick another (or --name)",
        ),
        (["--max_batch", "0"], "--max_batch must be at least 1, got 0"),
        (["--max_request_bytes", "0"], "--max_request_bytes must be at least 1, got 0"),
        (
            ["--shutdown_timeout", "-1"],
            "--shutdown_timeout must be a number of seconds of at least 0, got -1.0",
        ),
        (
            ["--prefix", f"d={diverged}"],
            f"{diverged}: the prefix tensor embedding.weight holds 1 non-finite values "
            "(NaN or inf); the run that wrote it diverged, so it cannot be used (an earlier checkpoint may be sound)",
        ),
        (
            ["--api_key", "clé"],
            "--api_key must be printable ASCII without spaces (an HTTP header carries no other)",
        ),
        (
            ["--api_key", " sk-1"],
            "--api_key must be printable ASCII without spaces (an HTTP header carries no other)",
        ),
        (
            ["--port", str(port)],
            f"--host 127.0.0.1 --port {port}: cannot listen there (Address already in use)",
        ),
    ]
    try:
        for flags, message in cases:
            assert main(["serve", *model, *flags]) == 2, flags
            assert capsys.readouterr().err == f"ptune serve: error: {message}\n"
    finally:
        busy.close()


def test_a_loopback_server_answers_only_its_own_host_names(server):
    """DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 sends `Host: evil.example`; a
    server bound to loopback answers only 127.0.0.1, localhost and [::1] (with any port)."""
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example"):
        status, text, _ = call(server.port, "GET", "/v1/models", headers={"Host": host})
        assert (status, text) == (400, "Invalid host header"), host
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "LOCALHOST", f"[::1]:{server.port}"):
        assert call(server.port, "GET", "/v1/models", headers={"Host": host})[0] == 200, host


def test_allowed_hosts_by_address():
    from ptune.serve.cli import allowed_hosts

    assert allowed_hosts("127.0.0.1", []) == ["127.0.0.1", "localhost", "[::1]"]
    assert allowed_hosts("::1", ["MyProxy"]) == ["127.0.0.1", "localhost", "[::1]", "myproxy"]
    assert allowed_hosts("127.0.0.1", ["*"]) is None
    assert allowed_hosts("0.0.0.0", []) is None and allowed_hosts("192.168.1.5", []) is None


def test_sampling_values_that_would_break_a_step_never_cut_the_other_streams(client, server):
    """While 8 clients stream, requests whose temperature (1e-300: the logits overflow) or seed (past what
    torch takes) made the batch's step raise are refused with 400 before they enter the batch, and every
    stream ends in full (a finish_reason and usage, which only come before `[DONE]`). Before: 500s, and the
    running streams were cut."""
    bad = [{"temperature": 1e-300}, {"temperature": 1.0, "seed": 1180591620717411303424}]

    def stream(i: int):
        return ask(client, MODELS[i % len(MODELS)], PROMPTS[i % len(PROMPTS)], stream=True, max_tokens=40)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(stream, i) for i in range(8)]
        refused = [
            call(server.port, "POST", "/v1/chat/completions", chat_body("p2", "hi", 40, **extra))[0]
            for extra in bad * 3
        ]
        answers = [f.result() for f in futures]
    assert refused == [400] * 6
    assert all(reason in ("stop", "length") and usage.completion_tokens > 0 for _, reason, usage in answers)


def test_a_request_body_past_the_limit_is_refused_before_it_is_read(server):
    """413 by Content-Length, and for a chunked body (no length) once it streams past --max_request_bytes
    (default: 64 bytes per --max_length token, 131072 at --max_length 2048); the server keeps serving. A body
    under it is read and tokenized: 30,000 words are refused for their tokens, not their bytes."""
    big = json.dumps(chat_body("p2", "hi " * 400_000)).encode()
    status, data, _ = call(server.port, "POST", "/v1/chat/completions", big)
    message = "request body is larger than this server's limit of 131072 bytes (--max_request_bytes)"
    assert (status, data["error"]["message"], data["error"]["code"]) == (413, message, "request_too_large")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=chunks,
            encode_chunked=True,
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())["error"]["message"]) == (413, message)
    finally:
        conn.close()
    assert call(server.port, "POST", "/v1/chat/completions", chat_body("p2", "hi"))[0] == 200
    status, data, _ = call(server.port, "POST", "/v1/chat/completions", chat_body("p2", "hi " * 30_000))
    assert (status, data["error"]["code"]) == (400, "context_length_exceeded")
