"""Chat formats and example encoding, against hand-written ids.

Most tests use fake tokenizers whose `encode` maps each character to its code point ("a" -> 97, "\\n" -> 10),
with the real checkpoints' special ids, so every expected id list can be written down by hand.  One test
runs the real ChatGLM3 layout on the tiny SentencePiece model (pieces checked by hand).
GLM-4's real tokenizer is covered in test_tokenizer.py (it is slow to build, so it is built once there).
"""

from dataclasses import dataclass, field

import pytest

from ptune.data.chat_format import (
    chat_messages,
    decode_response,
    encode_example,
    encode_prompt,
    encode_split_example,
    prompt_ids,
    target_ids,
    with_source_prefix,
)
from ptune.data.conversation import Conversation
from ptune.families.base import normalize_history
from ptune.families.chatglm2 import ChatGLMTokenizer, chatglm2_prompt_text
from ptune.io.errors import UserError
from tools.tiny_tokenizers import train_tiny_sentencepiece

G2, S2 = 64790, 64792  # chatglm2/3 [gMASK], sop
U3, A3 = 64795, 64796  # chatglm3 <|user|>, <|assistant|>
G4, S4, U4, A4, EOS4 = 151331, 151333, 151336, 151337, 151329  # glm4


def chars(text: str) -> list[int]:
    return [ord(c) for c in text]


@dataclass
class FakeTok:
    family: str
    special_ids: dict[str, int]
    eos_token_id: int
    stop_token_ids: list[int] = field(default_factory=list)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return ([1] if add_special_tokens else []) + chars(text)  # 1 = a bos, for the native fallback

    def decode(self, ids, skip_special_tokens=True) -> str:
        return "".join(chr(i) for i in ids if i < 0x110000)


CHATGLM2 = FakeTok("chatglm2", {"[gMASK]": G2, "sop": S2}, 2, [2])
CHATGLM3 = FakeTok(
    "chatglm3", {"[gMASK]": G2, "sop": S2, "<|user|>": U3, "<|assistant|>": A3}, 2, [2, U3, 64797]
)
GLM4 = FakeTok(
    "glm4", {"[gMASK]": G4, "<sop>": S4, "<|user|>": U4, "<|assistant|>": A4}, EOS4, [EOS4, U4, 151338]
)


@dataclass
class FakeNative(FakeTok):
    has_chat_template: bool = True

    def render_chat(self, messages, add_generation_prompt=True, tools=None) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


NATIVE = FakeNative("native", {}, 9)


# ---------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------


def test_chatglm2_prompt_text():
    assert chatglm2_prompt_text("hi") == "[Round 1]\n\n问：hi\n\n答："
    assert chatglm2_prompt_text("q3", [("q1", "r1"), ("q2", "r2")], "P:") == (
        "P:[Round 1]\n\n问：q1\n\n答：r1\n\n[Round 2]\n\n问：q2\n\n答：r2\n\n[Round 3]\n\n问：q3\n\n答："
    )


def test_chatglm2_prompt_ids():
    assert prompt_ids(CHATGLM2, "hi") == [G2, S2] + chars("[Round 1]\n\n问：hi\n\n答：")
    assert prompt_ids(CHATGLM2, "hi", [["a", "b"]], "P") == [G2, S2] + chars(
        "P[Round 1]\n\n问：a\n\n答：b\n\n[Round 2]\n\n问：hi\n\n答："
    )


def test_chatglm3_prompt_ids():
    assert prompt_ids(CHATGLM3, "hi") == [G2, S2, U3, 10, 104, 105, A3]
    assert prompt_ids(CHATGLM3, "hi", [["a", "b"]], "P") == [
        G2,
        S2,
        U3,
        10,
        97,
        A3,
        10,
        98,
        U3,
        10,
        80,
        104,
        105,
        A3,
    ]


def test_glm4_prompt_ids():
    assert prompt_ids(GLM4, "hi") == [G4, S4, U4, 10, 104, 105, A4]
    assert prompt_ids(GLM4, "hi", [["a", "b"]], "P") == [
        G4,
        S4,
        U4,
        10,
        97,
        A4,
        10,
        98,
        U4,
        10,
        80,
        104,
        105,
        A4,
    ]
    # GLM-4's template leaves out messages with empty content.
    assert prompt_ids(GLM4, "hi", [["", "b"]]) == [G4, S4, A4, 10, 98, U4, 10, 104, 105, A4]


def test_native_prompt_ids():
    assert prompt_ids(NATIVE, "hi", [["a", "b"]], "P") == chars("<user>a<assistant>b<user>Phi<assistant>")
    assert chat_messages("hi", [("a", "b")]) == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "hi"},
    ]
    plain = FakeNative("native", {}, 9, has_chat_template=False)
    assert prompt_ids(plain, "hi", [["a", "b"]]) == [1] + chars("a\nb\nhi\n")


def test_chatglm3_on_tiny_sentencepiece(tmp_path):
    model = tmp_path / "tokenizer.model"
    train_tiny_sentencepiece(model)
    tok = ChatGLMTokenizer(model, "chatglm3")
    ids, labels = encode_example(tok, "你好", "你好！", [["再加5呢？", "你好"]], 64, 64)
    # [gMASK] sop <|user|> ▁ <0x0A> ▁再加 5 呢 ？ <|assistant|> ▁ <0x0A> ▁你好 <|user|> ▁ <0x0A> ▁你好
    # <|assistant|> | ▁ <0x0A> ▁你好 ！ </s>
    prompt = [1001, 1003, 1006, 480, 13, 430, 626, 667, 586, 1007, 480, 13, 456, 1006, 480, 13, 456, 1007]
    answer = [480, 13, 456, 681, 2]
    assert [tok.sp.id_to_piece(i) for i in answer[:-1]] == ["▁", "<0x0A>", "▁你好", "！"]
    assert ids == prompt + answer
    assert labels == [-100] * len(prompt) + answer
    assert decode_response(tok, answer + [1006, 456]) == "你好！"


# ---------------------------------------------------------------------------------------------------------
# Targets and examples
# ---------------------------------------------------------------------------------------------------------


def test_target_ids_per_family_and_truncation():
    assert target_ids(CHATGLM2, "ok", 8) == [111, 107, 2]
    assert target_ids(CHATGLM3, "ok", 8) == [10, 111, 107, 2]  # the "\n" after <|assistant|> is learned
    assert target_ids(GLM4, "ok", 8) == [10, 111, 107, EOS4]
    assert target_ids(NATIVE, "ok", 8) == [111, 107, 9]
    # Cut to max_target_length, then eos: max_target_length + 1 ids.
    assert target_ids(CHATGLM2, "abcdef", 3) == [97, 98, 99, 2]
    assert target_ids(CHATGLM3, "abcdef", 3) == [10, 97, 98, 2]
    assert target_ids(GLM4, "abcdef", 1) == [10, EOS4]


def test_encode_example_labels():
    ids, labels = encode_example(CHATGLM3, "hi", "ok", None, 64, 64)
    assert ids == [G2, S2, U3, 10, 104, 105, A3, 10, 111, 107, 2]
    assert labels == [-100] * 7 + [10, 111, 107, 2]
    ids, labels = encode_example(CHATGLM2, "q", "abcdef", [], 64, 2, source_prefix="P")
    prompt = [G2, S2] + chars("P[Round 1]\n\n问：q\n\n答：")
    assert ids == prompt + [97, 98, 2]
    assert labels == [-100] * len(prompt) + [97, 98, 2]


def test_a_conversation_under_the_prompt_response_policy():
    # THUDM's columns as a Conversation (what a prompt_response row becomes), encoded as encode_example does.
    conversation = Conversation(
        ({"role": "user", "content": "q"}, {"role": "assistant", "content": "abcdef"})
    )
    prefixed = with_source_prefix(CHATGLM2, conversation, "P")  # ChatGLM2: in front of it all, as system text
    assert prefixed.messages[0] == {"role": "system", "content": "P"}
    encoded = encode_split_example(CHATGLM2, prefixed, "eval", 64, 2, "prompt_response")
    prompt = [G2, S2] + chars("P[Round 1]\n\n问：q\n\n答：")
    assert (encoded.input_ids, encoded.labels) == (prompt + [97, 98, 2], [-100] * len(prompt) + [97, 98, 2])
    assert with_source_prefix(CHATGLM3, conversation, "P").messages[0]["content"] == "Pq"  # the question's
    with pytest.raises(ValueError, match="truncation policy must be one of conversation, prompt_response"):
        encode_split_example(CHATGLM2, conversation, "eval", 64, 2, "thudm")


# ---------------------------------------------------------------------------------------------------------
# Prompt truncation: oldest history first, then the question (never the template's closing part)
# ---------------------------------------------------------------------------------------------------------

HISTORY = [["a", "b"], ["c", "d"]]
FULL3 = [G2, S2, U3, 10, 97, A3, 10, 98, U3, 10, 99, A3, 10, 100, U3, 10, 101, A3]  # 18 ids


def test_history_dropped_oldest_first():
    assert prompt_ids(CHATGLM3, "e", HISTORY) == FULL3
    assert encode_prompt(CHATGLM3, "e", HISTORY, 18) == FULL3
    no_oldest = [G2, S2, U3, 10, 99, A3, 10, 100, U3, 10, 101, A3]
    assert encode_prompt(CHATGLM3, "e", HISTORY, 17) == no_oldest
    assert encode_prompt(CHATGLM3, "e", HISTORY, 12) == no_oldest
    assert encode_prompt(CHATGLM3, "e", HISTORY, 11) == [G2, S2, U3, 10, 101, A3]
    # ChatGLM2 re-numbers the rounds of what is left.
    kept = [G2, S2] + chars("[Round 1]\n\n问：c\n\n答：d\n\n[Round 2]\n\n问：e\n\n答：")  # 2 + 21 + 18 ids
    assert encode_prompt(CHATGLM2, "e", HISTORY, 41) == kept
    assert encode_prompt(CHATGLM2, "e", HISTORY, 40) == [G2, S2] + chars("[Round 1]\n\n问：e\n\n答：")


def test_question_cut_keeps_closing_tokens():
    # chatglm3: [gMASK] sop <|user|> \n + question tokens cut + <|assistant|>
    assert encode_prompt(CHATGLM3, "abcdef", HISTORY, 8) == [G2, S2, U3, 10, 97, 98, 99, A3]
    # glm4: [gMASK] <sop> <|user|> + encode("\n" + question) cut + <|assistant|>
    assert encode_prompt(GLM4, "abcdef", HISTORY, 8) == [G4, S4, U4, 10, 97, 98, 99, A4]
    # chatglm2: 2 + 13 ("[Round 1]\n\n问：") + k + 4 ("\n\n答：") ids, so 22 leaves k = 3 characters.
    assert encode_prompt(CHATGLM2, "abcdefgh", HISTORY, 22) == [G2, S2] + chars(
        "[Round 1]\n\n问：abc\n\n答："
    )
    # native: the generation prompt stays.
    assert encode_prompt(NATIVE, "abcdef", None, 19) == chars("<user>ab<assistant>")  # 6 + k + 11
    # The source prefix is at the left, so it stays; the question's end goes.
    assert encode_prompt(CHATGLM3, "abcdef", None, 8, source_prefix="P") == [G2, S2, U3, 10, 80, 97, 98, A3]


def test_encode_example_with_both_cuts():
    ids, labels = encode_example(CHATGLM3, "abcdef", "xyz", HISTORY, 8, 2)
    assert ids == [G2, S2, U3, 10, 97, 98, 99, A3, 10, 120, 2]
    assert labels == [-100] * 8 + [10, 120, 2]


def test_max_source_length_too_small():
    with pytest.raises(UserError, match="--max_source_length 4 is too small: .* take 5 tokens"):
        encode_prompt(CHATGLM3, "abcdef", None, 4)
    with pytest.raises(UserError, match="--max_source_length 10 is too small: .* take 19 tokens"):
        encode_prompt(CHATGLM2, "abcdef", None, 10)


# ---------------------------------------------------------------------------------------------------------
# History validation and response decoding
# ---------------------------------------------------------------------------------------------------------


def test_normalize_history():
    assert normalize_history(None) == []
    assert normalize_history([["q", "r"], ("q2", "r2")]) == [("q", "r"), ("q2", "r2")]
    with pytest.raises(UserError, match="history turn 2 is not a .question, answer. pair"):
        normalize_history([["q", "r"], ["only one"]])
    with pytest.raises(UserError, match="history must be a list"):
        normalize_history("q")


def test_decode_response_stops_at_stop_ids():
    assert decode_response(GLM4, [10, 111, 107, U4, 120]) == "ok"
    assert decode_response(CHATGLM2, chars("  ok ") + [2] + chars("more")) == "ok"
    assert decode_response(CHATGLM2, chars("no stop")) == "no stop"
