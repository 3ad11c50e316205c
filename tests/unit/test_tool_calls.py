"""Tools in `ptune serve` without a model: the served prompt is the training encoder's, calls are read back as
each family writes them (and nothing that is not one is), a streamed call is held until complete, and bad tool
requests are one line each."""

from __future__ import annotations

import json

import pytest

from ptune.families.registry import load_tokenizer
from ptune.infer.tool_calls import Call, JsonReader, NameLineReader, call_start_ids, python_call_arguments
from ptune.serve.protocol import ApiError, parse_chat_request
from ptune.serve.tools import ToolDeltas, ToolPlan, plan_request
from tests.tool_models import TOOLS, examples, make_tool_base, result_of
from tools.tiny import make_tiny_checkpoint

FAMILIES = ("glm4", "chatglm3", "llama")
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
PARIS = [
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": result_of("Paris")},
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tool-tokenizers")
    out = {family: make_tool_base(root / family, family) for family in FAMILIES}
    out["chatglm2"] = make_tiny_checkpoint(root / "chatglm2", "chatglm2")
    return out


def request(messages, **extra):
    return parse_chat_request(
        json.dumps({"model": "m", "messages": messages, "tools": TOOLS, **extra}).encode()
    )


def spans(labels: list[int]) -> list[int]:
    """Where each learned run of `labels` starts."""
    return [i for i, label in enumerate(labels) if label != -100 and (i == 0 or labels[i - 1] == -100)]


@pytest.mark.parametrize("family", FAMILIES)
def test_served_prompts_are_the_training_prompts(folders, family):
    tok = load_tokenizer(folders[family])
    trained = examples(folders[family], family)[0]  # the Paris conversation as `ptune train` encodes it
    call_start, answer_start = spans(trained.labels)  # the call, then the answer
    assert plan_request(tok, request(PARIS[:1])).prompt == trained.input_ids[:call_start]
    assert plan_request(tok, request(PARIS)).prompt == trained.input_ids[:answer_start]


@pytest.mark.parametrize(
    "family, start",
    [
        ("glm4", "get_weather\n"),
        ("chatglm3", "get_weather\n"),
        ("llama", '<tool_call>{"name": "get_weather"'),
    ],
)
def test_named_tool_choice_writes_the_call_start_as_trained(folders, family, start):
    tok = load_tokenizer(folders[family])
    trained = examples(folders[family], family)[0]
    call_start = spans(trained.labels)[0]
    named = {"type": "function", "function": {"name": "get_weather"}}
    plan = plan_request(tok, request(PARIS[:1], tool_choice=named))
    assert plan.forced == start
    assert plan.prompt == trained.input_ids[: len(plan.prompt)] and len(plan.prompt) > call_start
    assert plan_request(tok, request(PARIS[:1], tool_choice="required")).prompt == plan.prompt  # one tool
    assert plan_request(tok, request(PARIS[:1], tool_choice="none")).reader is None


def test_chatglm2_and_a_template_without_tools_refuse_tools_with_one_line(folders, tmp_path):
    tok = load_tokenizer(folders["chatglm2"])
    with pytest.raises(ApiError) as e:
        plan_request(tok, request(PARIS[:1]))
    assert (e.value.status, e.value.message) == (
        400,
        "ChatGLM2 has no tool format: tools are for chatglm3 / glm4 models",
    )
    plain = make_tiny_checkpoint(tmp_path / "llama", "llama")  # its chat template knows no tools
    with pytest.raises(ApiError) as e:
        plan_request(load_tokenizer(plain), request(PARIS[:1]))
    assert (e.value.status, e.value.message) == (
        400,
        f"{plain}: the tokenizer's chat template does not write tools",
    )


@pytest.mark.parametrize(
    "messages, extra, message",
    [
        (
            PARIS[:1] + [{"role": "tool", "tool_call_id": "x", "content": "1"}],
            {},
            "messages.1.tool_call_id: 'x' is no tool call of an earlier assistant message",
        ),
        (
            [
                PARIS[0],
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "get_weather", "arguments": "{"}}],
                },
                PARIS[2],
            ],
            {},
            "messages.1.tool_calls.0.function.arguments: not JSON "
            "(Expecting property name enclosed in double quotes)",
        ),
        (
            [
                PARIS[0],
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "get_weather", "arguments": "[1]"}}],
                },
                PARIS[2],
            ],
            {},
            "messages.1.tool_calls.0.function.arguments: must be a JSON object",
        ),
        (
            PARIS[:1] + [{"role": "system", "content": "late"}, PARIS[0]],
            {},
            "messages.1.role: with tools, a system message must come first",
        ),
        (
            PARIS[:1],
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice: no tool named 'nope' in tools (get_weather)",
        ),
    ],
)
def test_bad_tool_requests(folders, messages, extra, message):
    with pytest.raises(ApiError) as e:
        plan_request(load_tokenizer(folders["glm4"]), request(messages, **extra))
    assert (e.value.status, e.value.message) == (400, message)


def test_request_shapes_are_checked():
    with pytest.raises(
        ApiError, match=r"^messages.0.content: must be a string or a list of text parts, got null$"
    ):
        parse_chat_request(json.dumps({"model": "m", "messages": [{"role": "user"}]}).encode())
    with pytest.raises(ApiError, match=r"^tools.0.type: Input should be 'function'$"):
        request(PARIS[:1], tools=[{"type": "python", "function": {"name": "f"}}])
    assert request(PARIS).raw_tools == TOOLS  # kept as sent, for the prompt


def test_glm4_and_chatglm3_calls_are_read_and_nothing_else():
    glm4, chatglm3 = NameLineReader(["get_weather"], False), NameLineReader(["get_weather"], True)
    assert glm4.read('get_weather\n{"city": "Rome"}') == [Call("get_weather", '{"city": "Rome"}')]
    for text in (
        'get_weather\n{"city": ',
        "get_weather",
        'other\n{"city": "Rome"}',
        "It is sunny.",
        'get_weather\n["Rome"]',
    ):
        assert glm4.read(text) is None, text
    code = "```python\ntool_call(city='Rome', days=3, units=None)\n```"
    assert chatglm3.read("get_weather\n" + code) == [
        Call("get_weather", '{"city": "Rome", "days": 3, "units": null}')
    ]
    for code in (
        "tool_call(city=__import__('os').getcwd())",
        "tool_call('Rome')",
        "other(city='Rome')",
        "tool_call(**x)",
    ):
        assert python_call_arguments(code) is None, code  # literals only, nothing is run
    assert glm4.may_be_call("get_w") and glm4.may_be_call("get_weather\n{") and not glm4.may_be_call("It")
    assert not glm4.may_be_call("get_weathe r")


def test_native_calls_are_read_with_the_template_s_wrapping():
    reader = JsonReader(["get_weather", "f"], "<tool_call>", "</tool_call>", "arguments")
    two = (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>\n'
        '<tool_call>{"name": "f", "arguments": "{}"}</tool_call>'
    )
    assert reader.read(two) == [Call("get_weather", '{"city": "Rome"}'), Call("f", "{}")]
    for text in (
        '{"name": "get_weather", "arguments": {}}',
        '<tool_call>{"name": "g", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "f", "arguments": {}}',
        "Sunny.",
    ):
        assert reader.read(text) is None, text
    assert (
        reader.may_be_call("<tool") and reader.may_be_call("<tool_call>{") and not reader.may_be_call("<b>")
    )
    bare = JsonReader(["f"], "", "", "parameters")
    assert bare.read('{"name": "f", "parameters": {"a": 1}}') == [Call("f", '{"a": 1}')]


def test_a_streamed_call_goes_out_whole_name_first_arguments_in_pieces():
    plan = ToolPlan([], "", NameLineReader(["get_weather"], False))
    deltas = ToolDeltas(plan)
    assert [deltas.push(p) for p in ("get_", "weather\n", '{"city": ', '"Rome"}')] == [[], [], [], []]
    first, *rest = deltas.finish()
    (entry,) = first["tool_calls"]
    assert (entry["index"], entry["type"], entry["function"]) == (
        0,
        "function",
        {"name": "get_weather", "arguments": ""},
    )
    assert [d["tool_calls"][0]["function"]["arguments"] for d in rest] == ['{"city":', ' "Rome"}']
    assert deltas.finish_reason("stop") == "tool_calls"
    text = ToolDeltas(plan)
    assert (
        text.push("get") == []
        and text.push(" it") == [{"content": "get it"}]
        and text.push("!") == [{"content": "!"}]
    )
    assert text.finish() == [] and text.finish_reason("stop") == "stop"
    broken = ToolDeltas(
        ToolPlan([], "get_weather\n", plan.reader)
    )  # a named call whose arguments are no JSON
    assert broken.push("{oops") == [] and broken.finish() == [{"content": "get_weather\n{oops"}]


@pytest.mark.parametrize("family", FAMILIES)
def test_call_start_ids_end_at_a_token_border(folders, family):
    tok = load_tokenizer(folders[family])
    from ptune.serve.tools import conversation_of

    conversation = conversation_of(
        request(PARIS[:1]), TOOLS if family != "chatglm3" else [t["function"] for t in TOOLS]
    )
    ids = call_start_ids(tok, conversation, "get_weather")
    assert "get_weather" in tok.decode(ids)


@pytest.mark.parametrize(
    "family, shared", [("glm4", ""), ("chatglm3", ""), ("llama", '<tool_call>{"name": "')]
)
def test_required_with_several_tools_writes_what_their_calls_share(folders, family, shared):
    search = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}
    plan = plan_request(
        load_tokenizer(folders[family]), request(PARIS[:1], tools=[*TOOLS, search], tool_choice="required")
    )
    assert plan.forced == shared
