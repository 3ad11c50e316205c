"""Conversations encoded per family, against hand-written ids.

The fake tokenizers map each character to its code point ("a" -> 97, "\\n" -> 10) and use the real
checkpoints' special ids, so every expected id is written down from the family's format: ChatGLM3's
build_single_message pieces, GLM-4's chat template (the real one, ptune/assets/glm4_chat_template.jinja,
rendered by transformers' jinja machinery), a native template, ChatGLM2's [Round n] text.  Expected ids are
written as segments (ids, learned) so that the learned spans can be read off them.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ptune.data.formats import parse_row
from ptune.data.truncation import encode_conversation, encode_last_answer, end_as_in_full
from ptune.io.errors import UserError

GLM4_TEMPLATE = (Path(__file__).parents[2] / "ptune" / "assets" / "glm4_chat_template.jinja").read_text(
    "utf-8"
)
# chatglm2/3: [gMASK], sop, <|system|>, <|user|>, <|assistant|>, <|observation|>; eos </s> = 2
G, SOP, SYS, U, A, OBS, EOS = 64790, 64792, 64794, 64795, 64796, 64797, 2
# glm4: [gMASK], <sop>, <|system|>, <|user|>, <|assistant|>, <|observation|>, <|endoftext|>
G4, SOP4, SYS4, U4, A4, O4, EOS4 = 151331, 151333, 151335, 151336, 151337, 151338, 151329
T = True
F = False


def chars(text: str) -> list[int]:
    return [ord(c) for c in text]


@dataclass
class FakeTok:
    """Characters as ids; specials written in a text (GLM-4's rendered template) are their ids."""

    family: str
    special_ids: dict[str, int]
    eos_token_id: int
    stop_token_ids: list[int] = field(default_factory=list)
    chat_template: str | None = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if not self.special_ids:
            return chars(text)
        pattern = "(" + "|".join(re.escape(s) for s in sorted(self.special_ids, key=len, reverse=True)) + ")"
        ids: list[int] = []
        for part in re.split(pattern, text):
            ids += [self.special_ids[part]] if part in self.special_ids else chars(part)
        return ids

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def render_chat(self, messages, add_generation_prompt=False, tools=None) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        text, _ = render_jinja_template(
            [list(messages)],
            tools=tools,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            bos_token="<s>",
            eos_token="</s>",
        )
        return text[0]


CHATGLM3 = FakeTok(
    "chatglm3",
    {"[gMASK]": G, "sop": SOP, "<|system|>": SYS, "<|user|>": U, "<|assistant|>": A, "<|observation|>": OBS},
    EOS,
)
GLM4 = FakeTok(
    "glm4",
    {
        "<|endoftext|>": EOS4,
        "[gMASK]": G4,
        "<sop>": SOP4,
        "<|system|>": SYS4,
        "<|user|>": U4,
        "<|assistant|>": A4,
        "<|observation|>": O4,
    },
    EOS4,
    chat_template=GLM4_TEMPLATE,
)
CHATGLM2 = FakeTok("chatglm2", {"[gMASK]": G, "sop": SOP}, EOS)
# A template in the style of Qwen's: tools in the system turn, tool calls as JSON, <|im_end|> ends a turn.
NATIVE_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['tool_calls'] %}{{ m['tool_calls'][0]['function'] | tojson }}{% else %}{{ m['content'] }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IM_END = 9
NATIVE = FakeTok("native", {"<|im_end|>": IM_END}, IM_END, [IM_END], chat_template=NATIVE_TEMPLATE)

# A system prompt, tools, a tool call with its observation, and three assistant turns (ChatGLM3's format).
ROW = {
    "tools": [{"name": "f"}],
    "conversations": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "q"},
        {"role": "tool", "name": "f", "parameters": {"x": 1}, "observation": "7"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "r"},
        {"role": "assistant", "content": "b"},
    ],
}
CONVERSATION = parse_row(ROW, "conversations", "t.json:1", None, True)


def assemble(segments):
    """(ids, labels) of hand-written (ids, learned) segments."""
    ids = [i for seg, _ in segments for i in seg]
    labels = [i if learned else -100 for seg, learned in segments for i in seg]
    return ids, labels


def spans(labels):
    """The learned runs of a label list."""
    runs, run = [], []
    for label in labels + [-100]:
        if label != -100:
            run.append(label)
        elif run:
            runs.append(run)
            run = []
    return runs


CHATGLM3_TOOLS = 'S\n[\n    {\n        "name": "f"\n    }\n]'  # json.dumps(tools, indent=4) after "\n"
CHATGLM3_EXPECTED = [
    ([G, SOP], F),
    ([SYS] + chars("\n") + chars(CHATGLM3_TOOLS), F),
    ([U] + chars("\n") + chars("q"), F),
    ([A], F),
    (chars("f\n") + chars("```python\ntool_call(x=1)\n```"), T),  # metadata = the tool's name
    ([OBS], T),  # the end marker of the tool call
    (chars("\n") + chars("7"), F),
    ([A], F),
    (chars("\n") + chars("a"), T),
    ([U], T),
    (chars("\n") + chars("r"), F),
    ([A], F),
    (chars("\n") + chars("b"), T),
    ([EOS], T),
]


def test_chatglm3_conversation_is_thudm_process_batch():
    encoded = encode_conversation(CHATGLM3, CONVERSATION, 1000)
    assert (encoded.input_ids, encoded.labels) == assemble(CHATGLM3_EXPECTED)
    assert len(spans(encoded.labels)) == 3  # one example, three learned spans (the tool call's is one)
    assert (encoded.lost_turns, encoded.cut, encoded.dropped) == (0, 0, "")


GLM4_SYSTEM = (
    "\n你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，你的任务是针对用户的问题和要求"
    "提供适当的答复和支持。\n\n# 可用工具"
    "\n## f\n\n"  # trim_blocks drops the newline right after {% if tool['type'] == 'function' %}
    '{\n    "name": "f"\n}'  # tool['function'] | tojson(indent=4)
    "\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
)


def glm4_row():
    """GLM-4's messages format: tools (OpenAI style) on the system message, the tool call as metadata."""
    tools = [{"type": "function", "function": {"name": "f"}}]
    return {
        "messages": [
            {"role": "system", "content": "S", "tools": tools},
            {"role": "user", "content": "q"},
            {"role": "assistant", "metadata": "f", "content": '{"x": 1}'},
            {"role": "observation", "content": "7"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "r"},
            {"role": "assistant", "content": "b"},
        ]
    }


GLM4_EXPECTED = [
    ([G4, SOP4], F),
    ([SYS4] + chars(GLM4_SYSTEM) + [SYS4] + chars("\nS"), F),
    ([U4] + chars("\nq"), F),
    ([A4], F),
    (chars('f\n{"x": 1}'), T),
    ([O4], T),
    (chars("\n7"), F),
    ([A4], F),
    (chars("\na"), T),
    ([U4], T),
    (chars("\nr"), F),
    ([A4], F),
    (chars("\nb"), T),
    ([U4], T),  # THUDM's finetune.py ends with <|user|>
]


def test_glm4_conversation_is_thudm_finetune_with_the_real_template():
    conversation = parse_row(glm4_row(), "messages", "t.json:1", None, True)
    encoded = encode_conversation(GLM4, conversation, 1000)
    assert (encoded.input_ids, encoded.labels) == assemble(GLM4_EXPECTED)
    assert len(spans(encoded.labels)) == 3


def test_glm4_tool_call_from_chatglm3_style_entry_is_json():
    # THUDM's ChatGLM3 `tool` entry on GLM-4: metadata = name, content = the arguments as JSON.
    ids, _ = assemble(GLM4_EXPECTED)
    row = glm4_row()
    row["messages"][2:4] = [{"role": "tool", "name": "f", "parameters": {"x": 1}, "observation": "7"}]
    row["conversations"] = row.pop("messages")
    row["tools"] = row["conversations"][0].pop("tools")
    conversation = parse_row(row, "conversations", "t.json:1", None, True)
    assert encode_conversation(GLM4, conversation, 1000).input_ids == ids


def test_glm4_template_without_tools_is_refused():
    tok = FakeTok(
        "glm4",
        GLM4.special_ids,
        EOS4,
        chat_template="[gMASK]<sop>{% for m in messages %}"
        "<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}",
    )
    conversation = parse_row(glm4_row(), "messages", "t.json:1", None, True)
    with pytest.raises(UserError, match="does not write tool definitions"):
        encode_conversation(tok, conversation, 1000)


NATIVE_EXPECTED = [
    (chars('<|im_start|>system\nTools: [{"name": "f"}]') + [IM_END] + chars("\n"), F),
    (chars("<|im_start|>system\nS") + [IM_END] + chars("\n"), F),
    (chars("<|im_start|>user\nq") + [IM_END] + chars("\n"), F),
    (chars("<|im_start|>assistant\n"), F),
    (chars('{"name": "f", "arguments": {"x": 1}}') + [IM_END], T),
    (chars("\n"), F),  # after the stop id: not learned
    (chars("<|im_start|>tool\n7") + [IM_END] + chars("\n"), F),
    (chars("<|im_start|>assistant\n"), F),
    (chars("a") + [IM_END], T),
    (chars("\n"), F),
    (chars("<|im_start|>user\nr") + [IM_END] + chars("\n"), F),
    (chars("<|im_start|>assistant\n"), F),
    (chars("b") + [IM_END], T),
    (chars("\n"), F),
]


def test_native_conversation_through_its_chat_template():
    encoded = encode_conversation(NATIVE, CONVERSATION, 1000)
    assert (encoded.input_ids, encoded.labels) == assemble(NATIVE_EXPECTED)
    assert len(spans(encoded.labels)) == 3


def test_native_template_that_ignores_tools_is_refused():
    tok = FakeTok(
        "native", {}, IM_END, [IM_END], chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(UserError, match="does not write tools"):
        encode_conversation(tok, CONVERSATION, 1000)


def test_chatglm2_rounds_and_refusals():
    row = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "r"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "s"},
            {"role": "assistant", "content": "c"},
        ]
    }
    encoded = encode_conversation(CHATGLM2, parse_row(row, "messages", "t:1", None, True), 1000)
    assert (encoded.input_ids, encoded.labels) == assemble(
        [
            ([G, SOP] + chars("S[Round 1]\n\n问：q\n\n答："), F),
            (chars("a"), T),
            (chars("\n\n[Round 2]\n\n问：r\n\n答："), F),
            (chars("b"), T),
            (chars("\n\n[Round 3]\n\n问：s\n\n答："), F),
            (chars("c") + [EOS], T),
        ]
    )
    with pytest.raises(UserError, match="ChatGLM2 has no tool format"):
        encode_conversation(CHATGLM2, CONVERSATION, 1000)


def test_truncation_drops_oldest_turns_keeps_system_and_counts():
    # Without the first turn (q, tool call, 7, a): system, then r / b; the <|user|> opening r is no longer
    # an answer's end marker.
    expected = assemble(CHATGLM3_EXPECTED[:2] + [([U], F)] + CHATGLM3_EXPECTED[10:])
    encoded = encode_conversation(CHATGLM3, CONVERSATION, len(expected[0]))
    assert (encoded.input_ids, encoded.labels) == expected
    assert (encoded.lost_turns, encoded.cut) == (1, 0)
    # One id less: not even the last turn fits; its first answer is the whole of it, so the row is dropped.
    dropped = encode_conversation(CHATGLM3, CONVERSATION, len(expected[0]) - 1)
    assert dropped.input_ids == [] and dropped.dropped.startswith("longer than")


def test_a_too_long_last_turn_is_cut_after_an_answer():
    one_turn = parse_row({"conversations": ROW["conversations"][:4]}, "conversations", "t:1", None, True)
    expected = assemble(
        [
            ([G, SOP], F),
            ([SYS] + chars("\nS"), F),
            ([U] + chars("\nq"), F),
            ([A], F),
            (chars("f\n```python\ntool_call(x=1)\n```"), T),
            ([OBS], T),
        ]
    )
    encoded = encode_conversation(CHATGLM3, one_turn, len(expected[0]))
    assert (encoded.input_ids, encoded.labels) == expected
    assert (encoded.lost_turns, encoded.cut) == (0, 2)  # observation and answer cut
    # the call ends with <|observation|> as in the whole conversation (not </s>: "stop after a tool call")


def test_a_cut_ends_with_the_id_the_whole_conversation_learns_there():
    # pure: ids cut after an answer end with an end id (9); the whole conversation has 7 there, learned
    assert end_as_in_full([1, 2, 9], [F, T, T], [1, 2, 7, 3, 4], [F, T, T, T, F]) == ([1, 2, 7], [F, T, T])
    # the whole one differs before the end, or does not learn that position: the cut stays as it is
    assert end_as_in_full([1, 5, 9], [F, T, T], [1, 2, 7, 3], [F, T, T, T]) == ([1, 5, 9], [F, T, T])
    assert end_as_in_full([1, 2, 9], [F, T, T], [1, 2, 7, 3], [F, T, F, T]) == ([1, 2, 9], [F, T, T])
    assert end_as_in_full([1, 2, 9], [F, T, T], [1, 2, 9], [F, T, T]) == ([1, 2, 9], [F, T, T])


def test_eval_example_is_the_last_answer():
    encoded = encode_last_answer(CHATGLM3, CONVERSATION, max_source=1000, max_target=1000)
    ids, _ = assemble(CHATGLM3_EXPECTED)
    answer = chars("\n") + chars("b") + [EOS]
    assert encoded.input_ids == ids
    assert encoded.labels == [-100] * (len(ids) - len(answer)) + answer
    # max_target 1: the answer cut to one id, then the end marker; the prompt cut by whole turns.
    prompt = assemble(CHATGLM3_EXPECTED[:2] + [([U] + chars("\nr"), F), ([A], F)])[0]
    short = encode_last_answer(CHATGLM3, CONVERSATION, max_source=len(prompt), max_target=1)
    assert short.input_ids == prompt + chars("\n") + [EOS]
    assert short.labels == [-100] * len(prompt) + chars("\n") + [EOS]
    assert short.lost_turns == 1


def test_predict_without_a_final_answer_asks_for_one():
    row = {"conversations": ROW["conversations"][:5]}  # ends with the user's "r"
    conversation = parse_row(row, "conversations", "t:1", None, False)
    encoded = encode_last_answer(CHATGLM3, conversation, 1000, 1000)
    prompt = (
        [G, SOP, SYS] + chars("\nS") + [U] + chars("\nq") + [A] + chars("f\n```python\ntool_call(x=1)\n```")
    )
    prompt += [OBS] + chars("\n7") + [A] + chars("\na") + [U] + chars("\nr") + [A]
    assert encoded.input_ids == prompt + chars("\n") + [EOS]
    assert encoded.labels == [-100] * len(prompt) + chars("\n") + [EOS]


def test_chat_system_prompt_comes_first():
    from ptune.infer.chat import ChatSession

    session = ChatSession(CHATGLM3, max_source_length=100, system="S")
    session.history = [("q", "a")]
    ids, notes = session.prompt("r")
    expected = (
        [G, SOP, SYS] + chars("\nS") + [U] + chars("\nq") + [A] + chars("\na") + [U] + chars("\nr") + [A]
    )
    assert (ids, notes) == (expected, [])
    # Too long for the history: the system prompt stays, the oldest turn goes.
    session = ChatSession(CHATGLM3, max_source_length=len(expected) - 1, system="S")
    session.history = [("q", "a")]
    ids, _ = session.prompt("r")
    assert ids == [G, SOP, SYS] + chars("\nS") + [U] + chars("\nr") + [A]


@dataclass
class CountingTok(FakeTok):
    """FakeTok counting its encode calls."""

    calls: int = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        self.calls += 1
        return super().encode(text, add_special_tokens)


def long_conversation(turns: int):
    messages = [{"role": "system", "content": "S"}]
    for k in range(turns):
        messages += [{"role": "user", "content": f"q{k:03}"}, {"role": "assistant", "content": f"a{k:03}"}]
    return parse_row({"messages": messages}, "messages", "t:1", None, True)


@pytest.mark.parametrize("family", ["chatglm3", "glm4"])
def test_truncating_a_long_conversation_encodes_each_message_once(family):
    # Issue 16: every dropped turn re-encoded the rest (10,000 turns: 169 s). Now each message is encoded
    # once (ChatGLM3: its opening and its content, 2 calls; GLM-4: its rendered template, 1 call) and the
    # cut is chosen on lengths, for training and for eval alike.
    base = CHATGLM3 if family == "chatglm3" else GLM4
    per_message = 2 if family == "chatglm3" else 1
    tok = CountingTok(base.family, base.special_ids, base.eos_token_id, chat_template=base.chat_template)
    conversation = long_conversation(300)
    last_two = long_conversation(2)  # the system prompt, then turns like the last two (same lengths)
    max_length = len(encode_conversation(base, last_two, 10**6).input_ids)
    encoded = encode_conversation(tok, conversation, max_length)
    assert (encoded.lost_turns, len(encoded.input_ids)) == (298, max_length)
    assert tok.calls == per_message * len(conversation.messages)
    tok.calls = 0
    evaluate = encode_last_answer(tok, conversation, max_source=max_length, max_target=10)
    end = EOS if family == "chatglm3" else U4
    assert (evaluate.lost_turns, evaluate.labels[-6:]) == (298, [*chars("\na299"), end])
    assert tok.calls == per_message * len(conversation.messages)


@pytest.mark.parametrize("family", ["chatglm2", "native"])
def test_truncating_a_long_conversation_encodes_it_a_logarithmic_number_of_times(family):
    # ChatGLM2 (its [Round N] renumbering) and native templates give a message ids that depend on the rest,
    # so each candidate is encoded whole; the fewest turns to drop are found by bisection (dropping a turn
    # never lengthens a conversation): O(log n) candidates, mostly short ones, where the old scan encoded one
    # per dropped turn.
    base = CHATGLM2 if family == "chatglm2" else NATIVE
    tok = CountingTok(base.family, base.special_ids, base.eos_token_id, chat_template=base.chat_template)
    conversation, last_two = long_conversation(300), long_conversation(2)
    max_length = len(encode_conversation(base, last_two, 10**6).input_ids)
    encode_conversation(tok, conversation, 10**6)  # one whole encoding, to count its calls
    whole, tok.calls = tok.calls, 0
    encoded = encode_conversation(tok, conversation, max_length)
    assert (encoded.lost_turns, len(encoded.input_ids)) == (298, max_length)
    # Bisection probes keep about half the turns, then a quarter, ...: all of them together about one whole
    # encoding, plus the ids kept (the old scan: about 150 whole encodings).
    assert tok.calls <= 2 * whole
    tok.calls = 0
    assert encode_last_answer(tok, conversation, max_source=max_length, max_target=10).lost_turns == 298
    assert tok.calls <= 2 * whole


def test_a_training_row_ending_with_a_tool_call_is_refused_with_its_line():
    # It would learn </s> (ChatGLM3) or <|user|> (GLM-4) as the end of a call; eval/predict keep it (the call
    # is the reference answer).
    from ptune.data.formats import get
    from ptune.data.splits import make_encoder, truncation

    row = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "metadata": "f", "content": "{}"},
        ]
    }
    batch = {"line": [7], "conversation": [parse_row(row, "messages", "t.json:7", None, True).to_json()]}
    with pytest.raises(UserError) as error:
        make_encoder(CHATGLM3, "t.json", truncation(get("messages"), "train", 100, 100))(batch)
    assert str(error.value) == (
        "t.json:7: the last message is a tool call without its observation: training would learn to end a "
        "call with the end of the conversation"
    )
    encoded = make_encoder(CHATGLM3, "t.json", truncation(get("messages"), "eval", 100, 100))(batch)
    assert encoded["labels"][0][-3:] == [*chars("{}"), EOS] and encoded["drop"] == [""]


def test_glm4_tools_lose_their_null_keys_as_thudm_finetune():
    # datasets fills keys a row lacks with null; THUDM's process_message drops null properties, so the model
    # trains on the tools as inference writes them. Nulls go at every depth.
    clean = [
        {"type": "function", "function": {"name": "f", "parameters": {"properties": {"x": {"type": "int"}}}}}
    ]
    nulls = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": None,
                "parameters": {"properties": {"x": {"type": "int", "enum": None}, "unit": None}},
            },
        }
    ]
    row = glm4_row()
    row["messages"][0]["tools"] = nulls
    encoded = encode_conversation(GLM4, parse_row(row, "messages", "t:1", None, True), 10**6)
    tools_text = '{\n    "name": "f",\n    "parameters": {\n        "properties": {\n            "x": {\n'
    tools_text += '                "type": "int"\n            }\n        }\n    }\n}'
    system = GLM4_SYSTEM.replace('{\n    "name": "f"\n}', tools_text)
    expected = [([G4, SOP4], F), ([SYS4] + chars(system) + [SYS4] + chars("\nS"), F)] + GLM4_EXPECTED[2:]
    assert (encoded.input_ids, encoded.labels) == assemble(expected)
    row["messages"][0]["tools"] = clean
    assert encode_conversation(GLM4, parse_row(row, "messages", "t:1", None, True), 10**6) == encoded
