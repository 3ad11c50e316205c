"""Data formats: detection, each format read into one Conversation, and bad rows named by file:line and field."""

import pytest

from ptune.data.conversations import Conversation, check_same_format, parse_row, row_format
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
