"""Tools through `ptune serve`, driven with the official `openai` client: prefixes trained with `ptune train` to
call get_weather on tiny GLM-4, ChatGLM3 and native Llama bases (tests/tool_models.py; the base alone answers
with text) are asked about the weather, answer with `tool_calls`, get the tool's result and answer; greedy
answers equal `ptune predict --ptuning_checkpoint` on the same conversation, plain and streamed; `tool_choice`
names, requires or leaves out the tool."""

from __future__ import annotations

import json

import openai
import pytest

from ptune.cli import main
from tests.e2e.conftest import TOOL_FAMILIES
from tests.tool_models import GREETING, NO_CALL, TOOLS, answer_of, prompt_rows, result_of

MAX_TOKENS = 64


@pytest.fixture(scope="module")
def clients(tool_servers):
    return {
        family: openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        for family, server in tool_servers.items()
    }


@pytest.fixture(scope="module")
def predicted(tool_bases, tool_prefixes, tmp_path_factory, hf_cache):
    """{family: (the call's text, the final answer)} from `ptune predict --ptuning_checkpoint` (greedy) with the
    family's tool prefix on the Paris conversation cut before the call and before the final answer."""
    folder, answers = tmp_path_factory.mktemp("predict-tools"), {}
    for family, base in tool_bases.items():
        fmt, rows = prompt_rows(family, "Paris")
        test_file, out = folder / f"{family}.json", folder / family
        test_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        argv = [
            "predict",
            "--model_name_or_path",
            str(base),
            "--ptuning_checkpoint",
            str(tool_prefixes[family]),
            "--test_file",
            str(test_file),
            "--data_format",
            fmt,
            "--output_dir",
            str(out),
            "--max_new_tokens",
            str(MAX_TOKENS),
            "--max_source_length",
            "1024",
            "--per_device_eval_batch_size",
            "2",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
        ]
        assert main(argv) == 0
        lines = (out / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()
        answers[family] = tuple(json.loads(line)["predict"] for line in lines)
    return answers


def ask(client, family, messages, stream=False, **extra):
    """(content, tool calls as [(id, name, arguments)], finish_reason, usage) of one greedy completion."""
    kwargs = {"model": family, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0, **extra}
    if not stream:
        done = client.chat.completions.create(**kwargs)
        message = done.choices[0].message
        calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]
        return message.content, calls, done.choices[0].finish_reason, done.usage
    content, calls, reason, usage, pieces = [], {}, None, None, 0
    for chunk in client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kwargs
    ):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            reason = choice.finish_reason or reason
            for delta in choice.delta.tool_calls or []:
                if delta.index not in calls:  # OpenAI's order: the first delta has the id and the name
                    assert delta.id and delta.type == "function" and delta.function.name
                    calls[delta.index] = [delta.id, delta.function.name, ""]
                calls[delta.index][2] += delta.function.arguments or ""
                pieces += 1
    assert not calls or pieces > 2  # the arguments came in pieces after the name
    return "".join(content) or None, [tuple(c) for c in calls.values()], reason, usage


QUESTION = [{"role": "user", "content": "weather in Paris?"}]


@pytest.mark.parametrize("family", TOOL_FAMILIES)
@pytest.mark.parametrize("stream", [False, True])
def test_call_result_answer_equal_ptune_predict(clients, predicted, tool_bases, family, stream):
    from ptune.families.registry import load_tokenizer
    from ptune.infer.tool_calls import Call, call_reader

    client, (call_text, answer_text) = clients[family], predicted[family]
    content, calls, reason, _ = ask(client, family, QUESTION, stream, tools=TOOLS)
    assert (content, reason, len(calls)) == (None, "tool_calls", 1)
    ((call_id, name, arguments),) = calls
    assert call_id.startswith("call_") and (name, json.loads(arguments)) == ("get_weather", {"city": "Paris"})
    reader = call_reader(load_tokenizer(tool_bases[family]), TOOLS)
    assert reader.read(call_text) == [Call(name, arguments)]  # ptune predict wrote this very call
    history = QUESTION + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": result_of("Paris")},
    ]
    content, calls, reason, usage = ask(client, family, history, stream, tools=TOOLS)
    assert (content, calls, reason) == (answer_text, [], "stop")
    assert content == answer_of("Paris")


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_the_base_alone_does_not_call(clients, family):
    """The prefix is what learned to call: the same request to the base answers with text."""
    for city in ("Paris", "Rome"):
        question = [{"role": "user", "content": f"weather in {city}?"}]
        assert ask(clients[family], f"{family}-base", question, tools=TOOLS)[:3] == (NO_CALL, [], "stop")


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_text_stays_content(clients, family):
    hello = [{"role": "user", "content": GREETING[0]}]
    for stream in (False, True):
        assert ask(clients[family], family, hello, stream, tools=TOOLS)[:3] == (GREETING[1], [], "stop")


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_tool_choice(clients, family):
    client, rome = clients[family], [{"role": "user", "content": "weather in Rome?"}]
    _, calls, _, usage = ask(client, family, rome, tools=TOOLS)
    assert [(n, json.loads(a)) for _, n, a in calls] == [("get_weather", {"city": "Rome"})]
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in (named, "required"):
        for stream in (False, True):
            _, forced_calls, reason, forced = ask(
                client, family, rome, stream, tools=TOOLS, tool_choice=choice
            )
            assert ([c[1:] for c in forced_calls], reason) == ([c[1:] for c in calls], "tool_calls")
            # the server wrote the call's start (the name), the model the rest
            assert forced.prompt_tokens > usage.prompt_tokens
            assert (
                forced.prompt_tokens + forced.completion_tokens
                == usage.prompt_tokens + usage.completion_tokens
            )
    content, none_calls, _, without = ask(client, family, rome, tools=TOOLS, tool_choice="none")
    assert none_calls == [] and isinstance(content, str)
    assert without.prompt_tokens == ask(client, family, rome)[3].prompt_tokens  # no tools in the prompt


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice: no tool named 'nope' in tools (get_weather)",
        ),
        ({"tool_choice": "required", "tools": None}, "tool_choice: only allowed when tools are given"),
    ],
)
def test_bad_tool_requests(clients, extra, message):
    kwargs = {"tools": TOOLS, **extra}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with pytest.raises(openai.BadRequestError) as e:
        ask(clients["glm4"], "glm4", QUESTION, **kwargs)
    assert e.value.body["message"] == message
