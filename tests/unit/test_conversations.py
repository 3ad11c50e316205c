"""Data formats (ptune.data.formats): detection, each format read into one Conversation, bad rows named by file:line
and field, and the registry."""

from types import SimpleNamespace

import pytest

from ptune.data.conversation import Conversation
from ptune.data.formats import check_same_format, parse_row, row_format
from ptune.io.errors import UserError


def test_detection_from_keys():
    assert row_format({"conversations": [{"role": "user", "content": "q"}]}) == "conversations"
    assert row_format({"conversations": [{"from": "human", "value": "q"}]}) == "sharegpt"
    assert row_format({"messages": []}) == "messages"
    assert row_format({"instruction": "i", "input": "", "output": "o"}) == "alpaca"
    assert row_format({"prompt": "p", "response": "r"}) == "prompt_response"
    assert row_format({"dialog": [{"role": "user"}]}, {"messages": "dialog"}) == "messages"
    assert row_format({"text": "x"}) is None


def test_alpaca_with_system_and_history():
    row = {"instruction": "i", "input": "x", "output": "o", "system": "s", "history": [["q1", "a1"]]}
    assert parse_row(row, "alpaca", "f:1", None, True) == Conversation(
        (
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "i\nx"},
            {"role": "assistant", "content": "o"},
        )
    )


def test_sharegpt_roles_system_tools_and_function_calls():
    row = {
        "system": "s",
        "tools": '[{"name": "f"}]',
        "conversations": [
            {"from": "human", "value": "q"},
            {"from": "function_call", "value": '{"name": "f", "arguments": "{\\"x\\": 1}"}'},
            {"from": "observation", "value": "7"},
            {"from": "gpt", "value": "a"},
        ],
    }
    assert parse_row(row, "sharegpt", "f:1", None, True) == Conversation(
        (
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_call": {"name": "f", "arguments": {"x": 1}}},
            {"role": "observation", "content": "7"},
            {"role": "assistant", "content": "a"},
        ),
        [{"name": "f"}],
    )


def test_messages_with_mapped_names():
    columns = {"messages": "dialog", "role_tag": "speaker", "content_tag": "text", "assistant_tag": "bot"}
    row = {"dialog": [{"speaker": "user", "text": "q"}, {"speaker": "bot", "text": "a", "metadata": "f"}]}
    assert parse_row(row, "messages", "f:1", columns, True).messages == (
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "metadata": "f"},
    )


def test_turns_start_at_user_messages():
    row = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "metadata": "f"},
            {"role": "observation", "content": "o"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "r"},
        ]
    }
    conversation = parse_row(row, "messages", "f:1", None, True)
    assert [[m["content"] for m in t] for t in conversation.turns()] == [["q", "a", "o", "b"], ["r"]]
    assert not conversation.ends_with_answer()


U = {"role": "user", "content": "q"}
A = {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(
    "row,fmt,message",
    [
        (
            {"conversations": [U, {"role": "bot", "content": "a"}]},
            "conversations",
            "f.json:3: conversations[1].role: unknown role 'bot' (expected system, user, assistant, observation, tool)",
        ),
        ({"messages": [U]}, "messages", "f.json:3: messages: no assistant message (nothing to learn)"),
        ({"messages": [], "tools": []}, "messages", "f.json:3: messages: empty conversation"),
        (
            {"conversations": [U, A], "tools": {"name": "f"}},
            "conversations",
            "f.json:3: tools: must be a list of tool definitions, got dict",
        ),
        (
            {"messages": [{"role": "system", "content": "s", "tools": "f"}, U, A]},
            "messages",
            "f.json:3: messages[0].tools: must be a list of tool definitions, got str",
        ),
        (
            {"messages": [U, {"role": "assistant", "content": 5}]},
            "messages",
            "f.json:3: messages[1].content: must be a string, got int",
        ),
        (
            {"messages": [A, U]},
            "messages",
            "f.json:3: messages: the first message after the system prompt must be a user message",
        ),
        (
            {"messages": [U, A, {"role": "system", "content": "s"}]},
            "messages",
            "f.json:3: messages[2].role: a system message must come first",
        ),
        (
            {"messages": [{"role": "system", "content": "s"}, U, {"role": "system", "content": "t"}, A]},
            "messages",
            "f.json:3: messages[2].role: a second system message (one, first, is allowed)",
        ),
        (
            {
                "system": "s",
                "conversations": [{"from": "system", "value": "t"}, {"from": "human", "value": "q"}],
            },
            "sharegpt",
            "f.json:3: conversations[0].role: a second system message (one, first, is allowed)",
        ),
        (
            {
                "conversations": [
                    U,
                    {"role": "tool", "name": "f", "observation": "7"},
                    A,
                    {"role": "system", "content": "s"},
                ]
            },
            "conversations",
            "f.json:3: conversations[3].role: a system message must come first",
        ),
        (
            {"conversations": "q"},
            "conversations",
            "f.json:3: conversations: must be a list of messages, got str",
        ),
        ({"prompt": "q"}, "messages", "f.json:3: no 'messages' field (a messages file; keys ['prompt'])"),
        ({"instruction": "i"}, "alpaca", "f.json:3: output: must be a string, got nothing"),
        (
            {"conversations": [{"role": "user"}, A]},
            "conversations",
            "f.json:3: conversations[0].content: must be a string, got nothing",
        ),
        (
            {"messages": [U, {"role": "assistant", "content": None}]},
            "messages",
            "f.json:3: messages[1].content: must be a string, got nothing",
        ),
        # sequences that would train a wrong habit (issue 16)
        (
            {"messages": [U, {"role": "assistant", "metadata": "f", "content": "{}"}, A]},
            "messages",
            "f.json:3: messages[2]: an assistant message after the tool call 'f': a call must be followed by its observation",
        ),
        (
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "function_call", "value": '{"name": "g"}'},
                    {"from": "human", "value": "r"},
                    {"from": "gpt", "value": "a"},
                ]
            },
            "sharegpt",
            "f.json:3: conversations[2]: a user message after the tool call 'g': a call must be followed by its observation",
        ),
        (
            {"messages": [U, A, {"role": "observation", "content": "7"}, A]},
            "messages",
            "f.json:3: messages[2]: an observation without a tool call before it (an assistant message with metadata, a tool entry)",
        ),
        (
            {
                "conversations": [
                    U,
                    {"role": "tool", "name": "f", "observation": "7"},
                    {"role": "observation", "content": "8"},
                    A,
                ]
            },
            "conversations",
            "f.json:3: conversations[2]: an observation without a tool call before it (an assistant message with metadata, a tool entry)",
        ),
        (
            {"messages": [U, U, A]},
            "messages",
            "f.json:3: messages[1]: two user messages in a row (a user message must be answered first)",
        ),
        (
            {"messages": [U, A, A]},
            "messages",
            "f.json:3: messages[2]: two assistant messages in a row (only a tool call may follow an assistant message)",
        ),
    ],
)
def test_bad_rows_name_line_and_field(row, fmt, message):
    with pytest.raises(UserError) as error:
        parse_row(row, fmt, "f.json:3", None, True)
    assert str(error.value) == message


def test_mixed_formats_are_refused():
    with pytest.raises(UserError) as error:
        check_same_format("conversations", {"messages": [U, A]}, "f.json:2", None)
    assert (
        str(error.value)
        == "f.json:2: a messages row in a conversations file (mixed formats; keys ['messages'])"
    )
    check_same_format("conversations", {"conversations": [U, A]}, "f.json:2", None)  # the same format: fine


def test_a_system_message_may_hold_only_tools():
    row = {"messages": [{"role": "system", "tools": [{"name": "f"}]}, U, A]}
    assert parse_row(row, "messages", "f:1", None, True) == Conversation(
        ({"role": "system", "content": ""}, U, A), [{"name": "f"}]
    )


def test_a_row_of_the_given_format_is_not_called_mixed():
    # --data_columns gives conversations and messages one key: the file's format is the one asked for
    columns = {"messages": "dialog"}
    check_same_format("conversations", {"dialog": [U, A]}, "f.json:2", columns)
    assert parse_row({"dialog": [U, A]}, "conversations", "f:2", columns, True).messages == (U, A)
    both = {"conversations": [{"from": "human", "value": "q", **U}, {"from": "gpt", "value": "a", **A}]}
    check_same_format("conversations", both, "f.json:2", None)  # both role tags: read as asked
    check_same_format("sharegpt", both, "f.json:2", None)
    with pytest.raises(UserError) as error:  # a sharegpt row in a conversations file is still refused
        check_same_format(
            "conversations", {"conversations": [{"from": "human", "value": "q"}]}, "f.json:2", None
        )
    assert str(error.value) == (
        "f.json:2: a sharegpt row in a conversations file (mixed formats; keys ['conversations'])"
    )


def test_a_thought_then_a_tool_call_is_fine():
    # ChatGLM3's finetune_demo: an assistant message (its thought) followed by a `tool` entry
    row = {"conversations": [U, A, {"role": "tool", "name": "f", "parameters": {}, "observation": "7"}, A]}
    assert [m["role"] for m in parse_row(row, "conversations", "f:1", None, True).messages] == [
        "user",
        "assistant",
        "assistant",
        "observation",
        "assistant",
    ]


def test_the_registry_holds_every_format_module_once_in_the_flags_order():
    import pkgutil

    import ptune.data.formats as formats

    modules = {m.name for m in pkgutil.iter_modules(formats.__path__)} - {"base"}
    assert formats.FORMATS == ("prompt_response", "conversations", "messages", "alpaca", "sharegpt")
    assert modules == set(formats.FORMATS)
    for name in formats.FORMATS:
        module = __import__(f"ptune.data.formats.{name}", fromlist=["FORMAT"])
        assert formats.get(name) is module.FORMAT and module.FORMAT.name == name
    # each names a truncation policy that chat_format cuts by and ptune.data.splits counts by
    from ptune.data.chat_format import TRUNCATION_POLICIES
    from ptune.data.splits import POLICIES

    assert set(POLICIES) == set(TRUNCATION_POLICIES)
    assert {f.truncation for f in formats.REGISTRY.values()} <= set(TRUNCATION_POLICIES)


def test_no_format_name_is_compared_outside_its_module():
    """A data format's knowledge is its module's: no `fmt == "sharegpt"` chains elsewhere in ptune."""
    import re
    from pathlib import Path

    import ptune
    from ptune.data.formats import FORMATS

    names = "|".join(FORMATS)
    fmt = r"\b(fmt|format|data_format)\b"  # a format (not a truncation policy's name, chat_format's)
    compared = re.compile(rf"""{fmt}\s*(==|!=)\s*["']({names})["']|["']({names})["']\s*(==|!=)\s*{fmt}""")
    root = Path(ptune.__file__).parent
    found = [
        f"{path.relative_to(root)}:{i}"
        for path in root.rglob("*.py")
        if "formats" not in path.relative_to(root).parts
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if compared.search(line)
    ]
    assert found == []


def test_a_prompt_response_row_is_a_conversation():
    from ptune.data.formats import get

    names = get("prompt_response").reading_names(
        "f.json", SimpleNamespace(prompt_column="q", response_column="a", history_column="h"), None
    )
    row = {"q": "q2", "a": "a2", "h": [["q1", "a1"]]}
    assert get("prompt_response").parse(row, names, "f:1", True) == Conversation(
        (
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"},
        )
    )
    # a missing value is "" (the row is dropped, or in predict has no reference)
    assert parse_row({"prompt": "q"}, "prompt_response", "f:1", None, False).messages == (
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": ""},
    )


@pytest.mark.parametrize(
    "value,message",
    [
        (
            {"dialog": "messages"},
            "--data_columns: unknown key 'dialog' (one of assistant_tag, content_tag, function_tag, history, "
            "messages, observation_tag, prompt, query, response, role_tag, system, system_tag, tools, user_tag)",
        ),
        ('{"messages": 5}', "--data_columns: messages must be a string, got 5"),
        ("[1]", '--data_columns: must be a JSON object, e.g. \'{"messages": "dialog"}\''),
        ("{x", "--data_columns: not a JSON object (Expecting property name enclosed in double quotes)"),
    ],
)
def test_data_columns_are_checked(value, message):
    from ptune.data.formats import parse_data_columns

    with pytest.raises(UserError) as error:
        parse_data_columns(value)
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ("q", "f:1: history: must be a list of [question, answer] pairs"),
        ([["q", "a"], ["q2"]], "f:1: history[1]: must be a [question, answer] pair of strings"),
        ([["q", 3]], "f:1: history[0]: must be a [question, answer] pair of strings"),
    ],
)
def test_alpaca_history_pairs_are_checked_by_the_one_history_check(history, message):
    row = {"instruction": "i", "output": "o", "history": history}
    with pytest.raises(UserError) as error:
        parse_row(row, "alpaca", "f:1", None, True)
    assert str(error.value) == message
