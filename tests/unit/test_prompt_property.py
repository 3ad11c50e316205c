"""One prompt for every verb, checked on random conversations of every family.

For each family's tiny tokenizer (tools/tiny.py; the tool-writing templates of tests/tool_models.py), 200
conversations drawn with a seeded `random.Random`: 1-6 turns, with or without a system prompt, and where the
family writes tools (ChatGLM3, GLM-4, a native template with tools) tool definitions, calls (some after a
thought) and their observations; texts mix Chinese, ASCII, spaces and newlines so that token borders move.
Each conversation ends with a question (a user message, or an observation after a call) and is prompted
through the code path each verb runs:

- predict: the conversation as a sharegpt row (parse_row), encoded by chat_data's encoder for "predict";
- eval: the same row with an answer, encoded for "eval" (the prompt is what precedes the answer's labels);
- train: that row encoded for "train": its input ids must start with the prompt;
- `ptune chat`: `ChatSession.prompt` (no tools) or `ToolChat.prompt` (`--tools`);
- `ptune serve`: the request body through `serve.app.parse_and_encode`;
- a prompt_response row (THUDM's columns: system-less question and history, no tools) encoded for "eval".

All prompts must be the same ids (for ChatGLM2 too; only its THUDM history column keeps THUDM's whole-text
tokenization, so a prompt_response row with history is left out there).  Then the same with a length limit:
predict and `ptune chat` must drop the same oldest turns.
"""

from __future__ import annotations

import json
import random

import pytest

from ptune.data.chat_data import make_conversation_encoder, make_prompt_response_encoder
from ptune.data.conversations import parse_row
from ptune.families.registry import load_tokenizer
from ptune.infer.chat import ChatSession
from ptune.infer.tool_calls import family_tools
from ptune.infer.tool_chat import ToolChat
from ptune.serve.app import Served, parse_and_encode
from tests.tool_models import make_tool_base
from tools.tiny import make_tiny_checkpoint

DRAWS = 200
BIG = 10**6
# family name -> (tiny checkpoint kind, whether its template writes tools)
KINDS = {
    "chatglm2": ("chatglm2", False),
    "chatglm3": ("chatglm3", True),
    "glm4": ("glm4", True),
    "native": ("llama", False),
    "native-tools": ("llama", True),
}
WORDS = [
    "你好",
    "天气",
    "北京",
    "hello",
    "world",
    " ",
    "  ",
    "\n",
    "\n\n",
    "42",
    "！",
    "?",
    "x",
    "上衣",
    "Tab\t",
]
NAMES = ["get_weather", "lookup", "add"]


@pytest.fixture(scope="module", params=sorted(KINDS))
def family(request, tmp_path_factory):
    """(the tiny tokenizer, whether its chat template writes tools, a seed)."""
    kind, tools = KINDS[request.param]
    folder = tmp_path_factory.mktemp(request.param) / "model"
    folder = make_tool_base(folder, kind) if tools else make_tiny_checkpoint(folder, kind)
    return load_tokenizer(folder), tools, request.param


def text(rng: random.Random) -> str:
    """Some words, never blank (an empty or blank message is dropped or left out by some families)."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(0, 4))]
    return "".join(words) + rng.choice(["a", "好", "7", "word"])


def draw(rng: random.Random, tools: bool) -> dict:
    """A conversation ending with a question: system (or None), OpenAI tools (or None) and `turns`, each a
    list of steps ("user", text) / ("assistant", text) / ("call", name, arguments, observation)."""
    offered = None
    if tools and rng.random() < 0.7:
        names = rng.sample(NAMES, rng.randint(1, len(NAMES)))
        offered = [
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": text(rng),
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
            for name in names
        ]
    turns, n = [], rng.randint(1, 6)
    for k in range(n):
        steps = [("user", text(rng))]
        for _ in range(rng.choice([0, 0, 1, 2]) if offered else 0):
            if rng.random() < 0.3:
                steps.append(("assistant", text(rng)))  # a thought before the call
            name = rng.choice(offered)["function"]["name"]
            steps.append(("call", name, {"city": text(rng), "n": rng.randint(0, 99)}, text(rng)))
        if k < n - 1:  # the last turn ends with its question (a user message, or an observation)
            steps.append(("assistant", text(rng)))
        turns.append(steps)
    return {"system": text(rng) if rng.random() < 0.5 else None, "tools": offered, "turns": turns}


def sharegpt_row(tok, chat: dict, answer: str | None) -> dict:
    items = []
    for steps in chat["turns"]:
        for step in steps:
            if step[0] == "user":
                items.append({"from": "human", "value": step[1]})
            elif step[0] == "assistant":
                items.append({"from": "gpt", "value": step[1]})
            else:
                call = {"name": step[1], "arguments": step[2]}
                items.append({"from": "function_call", "value": json.dumps(call, ensure_ascii=False)})
                items.append({"from": "observation", "value": step[3]})
    if answer is not None:
        items.append({"from": "gpt", "value": answer})
    row = {"conversations": items}
    if chat["system"] is not None:
        row["system"] = chat["system"]
    if chat["tools"]:
        row["tools"] = family_tools(tok, chat["tools"])
    return row


def encoded(tok, row: dict, split: str, max_source: int = BIG) -> dict:
    """The row through chat_data's conversation encoder, as `ptune train/eval/predict` run it."""
    conversation = parse_row(row, "sharegpt", "t.json:1", None, split != "predict")
    batch = {"line": [1], "conversation": [conversation.to_json()]}
    out = make_conversation_encoder(tok, "t.json", max_source, 64, split)(batch)
    return {name: values[0] for name, values in out.items()}


def prompt_of(example: dict) -> list[int]:
    """The ids before the first learned label (eval/predict: the prompt)."""
    n = next(k for k, label in enumerate(example["labels"]) if label != -100)
    return example["input_ids"][:n]


def plain(chat: dict) -> bool:
    """A conversation `ptune chat` without --tools can hold: no tools, questions answered in turn."""
    return not chat["tools"] and all(len(steps) <= 2 for steps in chat["turns"])


def chat_prompt(tok, chat: dict, limit: int = BIG) -> tuple[list[int], int]:
    """(`ptune chat` prompt, turns it dropped) for the conversation: ChatSession, or ToolChat with tools."""
    if plain(chat):
        session = ChatSession(tok, limit, system=chat["system"] or "")
        session.history = [(steps[0][1], steps[1][1]) for steps in chat["turns"][:-1]]
        before = len(session.history)
        ids, _ = session.prompt(chat["turns"][-1][0][1])
        return ids, before - len(session.history)
    tool_chat = ToolChat(tok, chat["tools"] or [], limit, chat["system"] or "")
    for steps in chat["turns"]:
        for step in steps:
            if step[0] == "call":
                call = {"name": step[1], "arguments": step[2]}
                tool_chat.messages.append({"role": "assistant", "content": "", "tool_call": call})
                tool_chat.messages.append({"role": "observation", "content": step[3]})
            else:
                tool_chat.messages.append({"role": step[0], "content": step[1]})
    before = len(tool_chat.conversation().turns())
    ids, _ = tool_chat.prompt()
    return ids, before - len(tool_chat.conversation().turns())


def serve_prompt(tok, chat: dict) -> list[int]:
    """The prompt `ptune serve` builds for the conversation sent as an OpenAI request."""
    messages = [{"role": "system", "content": chat["system"]}] if chat["system"] is not None else []
    calls = 0
    for steps in chat["turns"]:
        for step in steps:
            if step[0] != "call":
                messages.append({"role": step[0], "content": step[1]})
                continue
            calls += 1
            call = {
                "id": f"call_{calls}",
                "type": "function",
                "function": {"name": step[1], "arguments": json.dumps(step[2], ensure_ascii=False)},
            }
            thought = messages.pop()["content"] if messages[-1]["role"] == "assistant" else None
            messages.append({"role": "assistant", "content": thought, "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": f"call_{calls}", "content": step[3]})
    body = {"model": "base", "messages": messages}
    if chat["tools"]:
        body["tools"] = chat["tools"]
    served = Served(base="base", family=tok.family, prefixes={}, tokenizer=tok)
    _, prompt, _ = parse_and_encode(json.dumps(body, ensure_ascii=False).encode(), served)
    return prompt


def prompt_response_prompt(tok, chat: dict) -> list[int]:
    """The prompt of the conversation as a prompt_response row (question, history pairs), eval split."""
    history = [[steps[0][1], steps[1][1]] for steps in chat["turns"][:-1]]
    batch = {"prompt": [chat["turns"][-1][0][1]], "response": ["r"], "history": [history]}
    out = make_prompt_response_encoder(tok, BIG, 64, "", True)(batch)
    return prompt_of({"input_ids": out["input_ids"][0], "labels": out["labels"][0]})


def test_every_verb_prompts_a_conversation_with_the_same_ids(family):
    tok, tools, name = family
    rng = random.Random(f"prompt-{name}")
    kinds = set()
    for _ in range(DRAWS):
        chat = draw(rng, tools)
        answer = text(rng)
        predict = prompt_of(encoded(tok, sharegpt_row(tok, chat, None), "predict"))
        evaluate = prompt_of(encoded(tok, sharegpt_row(tok, chat, answer), "eval"))
        train = encoded(tok, sharegpt_row(tok, chat, answer), "train")
        chat_ids, _ = chat_prompt(tok, chat)
        assert evaluate == predict, chat
        assert chat_ids == predict, chat
        assert serve_prompt(tok, chat) == predict, chat
        assert train["drop"] == "" and train["input_ids"][: len(predict)] == predict, chat
        if plain(chat) and chat["system"] is None and (tok.family != "chatglm2" or len(chat["turns"]) == 1):
            assert prompt_response_prompt(tok, chat) == predict, chat
        kinds.add((len(chat["turns"]), chat["system"] is not None, bool(chat["tools"]), plain(chat)))
    # the draws covered 1..6 turns, with and without a system prompt (and tools, where written)
    assert {k[0] for k in kinds} == set(range(1, 7)) and {k[1] for k in kinds} == {True, False}
    assert {k[2] for k in kinds} == ({True, False} if tools else {False})


def test_predict_and_chat_drop_the_same_oldest_turns(family):
    tok, tools, name = family
    rng = random.Random(f"limit-{name}")
    for _ in range(DRAWS // 4):
        chat = draw(rng, tools)
        whole = chat_prompt(tok, chat)[0]
        shortest = chat_prompt(tok, {**chat, "turns": chat["turns"][-1:]})[0]
        limit = rng.randint(len(shortest), len(whole))
        predict = encoded(tok, sharegpt_row(tok, chat, None), "predict", max_source=limit)
        ids, dropped = chat_prompt(tok, chat, limit)
        assert len(ids) <= limit and (ids, dropped) == (prompt_of(predict), predict["lost_turns"]), chat
