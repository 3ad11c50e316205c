"""ptune serve's batching, text and request checks as pure functions, on hand-written tensors, ids and bodies."""

from __future__ import annotations

import json

import pytest
import torch

from ptune.infer.text_stream import TextStream, find_stop, settled_length
from ptune.serve.batch import (
    BatchCache,
    admit_count,
    keep_rows,
    left_pad,
    merge,
    prefix_block,
    prompt_block,
)
from ptune.serve.protocol import ApiError, parse_chat_request


def kv(values: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's (keys, values) [1, 1, T, 1] holding `values` (keys) and their negatives (values)."""
    t = torch.tensor(values).reshape(1, 1, -1, 1)
    return t, -t


def test_left_pad_puts_zeros_in_front():
    assert left_pad(torch.tensor([[1, 2]]), 4, 1).tolist() == [[0, 0, 1, 2]]
    assert left_pad(torch.tensor([[1, 2]]), 2, 1).tolist() == [[1, 2]]


def test_merge_left_pads_the_shorter_batch():
    a = BatchCache([kv([1.0, 2.0, 3.0])], torch.tensor([[1, 1, 1]]))
    b = BatchCache([kv([7.0])], torch.tensor([[1]]))
    both = merge(a, b)
    assert both.mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert both.layers[0][0].flatten().tolist() == [1.0, 2.0, 3.0, 0.0, 0.0, 7.0]
    assert both.layers[0][1].flatten().tolist() == [-1.0, -2.0, -3.0, 0.0, 0.0, -7.0]
    assert merge(None, b) is b


def test_keep_rows_drops_rows_and_leading_padding():
    cache = BatchCache(
        [(torch.arange(12.0).reshape(3, 1, 4, 1), torch.zeros(3, 1, 4, 1))],
        torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]]),
    )
    kept = keep_rows(cache, [1, 2])
    assert kept.mask.tolist() == [[0, 1, 1], [1, 1, 1]]  # the first column was padding in both
    assert kept.layers[0][0].flatten().tolist() == [5.0, 6.0, 7.0, 9.0, 10.0, 11.0]
    assert keep_rows(cache, []) is None


def test_prefix_block_gives_each_row_its_own_prefix_or_none():
    two = [kv([1.0, 2.0])]  # a prefix of 2 slots (one layer)
    three = [kv([5.0, 6.0, 7.0])]
    block = prefix_block([two, None, three])
    assert block.mask.tolist() == [[0, 1, 1], [0, 0, 0], [1, 1, 1]]
    assert block.layers[0][0][:, 0, :, 0].tolist() == [[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [5.0, 6.0, 7.0]]
    assert prefix_block([None, None]) is None


def test_prompt_block_left_pads_with_positions_from_each_first_token():
    ids, mask, positions = prompt_block([[5, 6, 7], [9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]


@pytest.mark.parametrize(
    "running, lengths, expected",
    [
        (0, [10, 10, 10], 3),  # free rows for all
        (14, [10, 10, 10], 2),  # max_batch 16: two rows free
        (16, [10], 0),  # full
        (0, [60, 50, 10], 1),  # 100-token prefill budget: the second would pass it
        (0, [500], 1),  # one long prompt is admitted anyway
        (0, [], 0),
    ],
)
def test_admit_count(running, lengths, expected):
    assert admit_count(running, lengths, max_batch=16, max_prefill_tokens=100) == expected


# ------------------------------------------------------------------------------------------ text
class CharTokenizer:
    """ids are code points; 0 is a special token; decode drops it."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i != 0)


def pieces(tokens: list[int], stops=()) -> tuple[list[str], str, bool]:
    answer = TextStream(CharTokenizer(), stop_ids=[0], stops=stops)
    out = [answer.push(t) for t in tokens] + [answer.finish()]
    return out, answer.text, answer.stopped


def test_find_stop_and_settled_length():
    assert find_stop("abcSTOPd", ["STOP", "cS"]) == 2
    assert find_stop("abc", ["x"]) is None
    assert settled_length("hello ST", ["STOP"]) == 5  # " ST" may begin "STOP"; trailing space held
    assert settled_length("hello\ufffd", []) == 5
    assert settled_length("hello", ["STOP"]) == 5


def test_answer_text_holds_back_whitespace_and_a_possible_stop():
    out, text, stopped = pieces([ord(c) for c in "\nab c"])
    assert out == ["", "a", "b", "", " c", ""] and text == "ab c" and not stopped
    out, text, stopped = pieces([ord(c) for c in "ab END!"], stops=["END"])
    assert out == ["a", "b", "", "", "", "", "", ""]
    assert text == "ab" and stopped


def test_answer_text_stop_id_adds_nothing():
    out, text, _ = pieces([ord("a"), 0, ord("b")])
    assert out == ["a", "", "b", ""] and text == "ab"


# ------------------------------------------------------------------------------------------ requests
def error_of(body) -> tuple[int, str]:
    with pytest.raises(ApiError) as e:
        parse_chat_request(body if isinstance(body, bytes) else json.dumps(body).encode())
    return e.value.status, e.value.message


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "body, message",
    [
        (
            b'{"model": "a",',
            "request body is not valid JSON (line 1 column 15: Expecting property name enclosed "
            "in double quotes)",
        ),
        (b"[1]", "request body must be a JSON object, got list"),
        ({"messages": USER}, "model: Field required"),
        (
            {"model": "a", "messages": []},
            "messages: List should have at least 1 item after validation, not 0",
        ),
        ({"model": "a", "messages": USER, "max_tokens": "5"}, "max_tokens: Input should be a valid integer"),
        (
            {"model": "a", "messages": USER, "max_tokens": 0},
            "max_tokens: Input should be greater than or equal to 1",
        ),
        (
            {"model": "a", "messages": USER, "temperature": 3},
            "temperature: Input should be less than or equal to 2",
        ),
        (
            {"model": "a", "messages": [{"role": "robot", "content": "x"}]},
            "messages.0.role: Input should be 'system', 'developer', 'user', 'assistant' or 'tool'",
        ),
        ({"model": "a", "messages": USER, "n": 2}, "n: Input should be less than or equal to 1"),
        (
            {"model": "a", "messages": USER, "stop": ["a", "b", "c", "d", "e"]},
            "stop: Value error, at most 4 stop strings",
        ),
        (
            {"model": "a", "messages": USER + [{"role": "assistant", "content": "x"}]},
            "the last message must be the user's or a tool result (ptune generates the assistant's answer to it)",
        ),
        (
            {"model": "a", "messages": USER, "tools": [{"type": "function"}]},
            "tools.0.function: Field required",
        ),
    ],
)
def test_bad_requests_are_400_with_one_line(body, message):
    assert error_of(body) == (400, message)


def test_request_fields():
    chat = parse_chat_request(
        json.dumps(
            {
                "model": "p",
                "messages": [
                    {"role": "developer", "content": "be brief"},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    },
                ],
                "max_completion_tokens": 7,
                "stop": "x",
                "frequency_penalty": 0.5,  # accepted and ignored, as OpenAI-compatible servers do
            }
        ).encode()
    )
    assert [m.as_message() for m in chat.messages] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]
    assert (chat.requested_tokens, chat.stop_list, chat.stream) == (7, ["x"], False)
