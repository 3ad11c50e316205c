"""Tiny models that call a tool, for the tool tests of `ptune serve` and `ptune chat --tools`.

One tool (get_weather) and three conversations (two weather questions answered with a call, its result and
an answer; one greeting answered with text), written in each family's own data format: GLM-4's `messages`,
ChatGLM3's `conversations` (THUDM's `tool` entries, the tools as bare functions), and sharegpt
(`function_call`) for a native Llama whose chat template writes tools and calls Qwen-style
(``<tool_call>{"name", "arguments"}</tool_call>``).

The tests serve and predict with a *prefix* that learned to call, trained with the real `ptune train`, the
way the project's demo works (tools/tiny.make_demo_base): a prefix on a tiny random base barely moves the
logits (measured: 60 steps at pre_seq_len 8, lr 5e-2 took the loss from 7.61 to 7.54 only), so `teach` first
trains the *base's* weights (all of them) on the conversations with a cue in front (CUE's tokens before the
first one), and on the weather questions without the cue answered with plain text (NO_CALL). The base thus
calls only when cued; the prefix, trained on the cue-less conversations (`rows`), must learn to do what the cue
did (tests/e2e/conftest.TOOL_PREFIX_TRAINING: 100-300 steps). `teach` runs until every learned token has a
probability over MARGIN (teacher forced; an argmax alone left near ties, 0.50 against 0.50, that another CPU's
rounding could flip; gradient clipping keeps ChatGLM3 from diverging at that margin) and writes the weights back
in the family's format (float32 shards, so no rounding undoes it). Measured on one thread: teaching 90 / 150 /
70 steps (3 / 8 / 2 s of CPU for GLM-4 / ChatGLM3 / Llama), the prefixes 4 / 4 / 6 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tools.tiny import make_tiny_checkpoint, write_sharded

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
WEATHER = {"Paris": 20, "Rome": 25}
GREETING = ("hello", "Hi there.")
NO_CALL = "I cannot tell."  # the taught base's answer to a weather question without the cue
CUE = "[tools]"
MARGIN = 0.9  # the least probability `teach` leaves on a learned token


def answer_of(city: str) -> str:
    return f"It is {WEATHER[city]} degrees in {city}."


def result_of(city: str) -> str:
    return json.dumps({"temp": WEATHER[city]})


# GLM-4's chat template as far as these conversations need it: the real one's structure (tools on the system
# message: "# 可用工具", "## name", the function as indented JSON; a call's name as metadata), without its
# long preamble, so that the examples are short.
GLM4_TOOLS_TEMPLATE = (
    "[gMASK]<sop>{% for item in messages %}{% if item['tools'] is defined %}<|system|>\n# 可用工具"
    "{% for tool in item['tools'] %}\n\n## {{ tool['function']['name'] }}\n\n"
    "{{ tool['function'] | tojson(indent=4) }}"
    "{% endfor %}{% endif %}{% if item['content'] %}<|{{ item['role'] }}|>{{ item['metadata'] }}\n"
    "{{ item['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# A native template in Qwen's style with the tiny Llama's role tokens.
NATIVE_TOOLS_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|system|>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "{{ eos_token }}{% endif %}{% for m in messages %}{% if m['role'] == 'tool' %}<|user|>\n"
    "<tool_response>{{ m['content'] }}"
    "</tool_response>{{ eos_token }}{% elif m['role'] == 'assistant' and m['tool_calls'] %}<|assistant|>\n"
    "{% for c in m['tool_calls'] %}<tool_call>{{ {'name': c['function']['name'], 'arguments': "
    "c['function']['arguments']} | tojson }}</tool_call>{% endfor %}{{ eos_token }}{% else %}"
    "<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def rows(family: str) -> tuple[str, list[dict]]:
    """(--data_format, rows) of the three conversations in the family's data format."""
    if family == "glm4":
        system = {"role": "system", "content": "", "tools": TOOLS}
        out = [
            {
                "messages": [
                    system,
                    {"role": "user", "content": f"weather in {city}?"},
                    {"role": "assistant", "metadata": "get_weather", "content": json.dumps({"city": city})},
                    {"role": "observation", "content": result_of(city)},
                    {"role": "assistant", "content": answer_of(city)},
                ]
            }
            for city in WEATHER
        ]
        out.append(
            {
                "messages": [
                    system,
                    {"role": "user", "content": GREETING[0]},
                    {"role": "assistant", "content": GREETING[1]},
                ]
            }
        )
        return "messages", out
    if family == "chatglm3":
        tools = [t["function"] for t in TOOLS]
        out = [
            {
                "tools": tools,
                "conversations": [
                    {"role": "user", "content": f"weather in {city}?"},
                    {
                        "role": "tool",
                        "name": "get_weather",
                        "parameters": {"city": city},
                        "observation": result_of(city),
                    },
                    {"role": "assistant", "content": answer_of(city)},
                ],
            }
            for city in WEATHER
        ]
        out.append(
            {
                "tools": tools,
                "conversations": [
                    {"role": "user", "content": GREETING[0]},
                    {"role": "assistant", "content": GREETING[1]},
                ],
            }
        )
        return "conversations", out
    tools = json.dumps(TOOLS)
    call = {"name": "get_weather", "arguments": {}}
    out = [
        {
            "tools": tools,
            "conversations": [
                {"from": "human", "value": f"weather in {city}?"},
                {"from": "function_call", "value": json.dumps({**call, "arguments": {"city": city}})},
                {"from": "observation", "value": result_of(city)},
                {"from": "gpt", "value": answer_of(city)},
            ],
        }
        for city in WEATHER
    ]
    out.append(
        {
            "tools": tools,
            "conversations": [{"from": "human", "value": GREETING[0]}, {"from": "gpt", "value": GREETING[1]}],
        }
    )
    return "sharegpt", out


def prompt_rows(family: str, city: str) -> tuple[str, list[dict]]:
    """(--data_format, rows) of the weather conversation about `city` cut before the call and before the
    final answer: what `ptune predict` answers with the call and with the answer."""
    fmt, data = rows(family)
    row = data[list(WEATHER).index(city)]
    key = "messages" if fmt == "messages" else "conversations"
    cuts = {"glm4": (2, 4), "chatglm3": (1, 2), "llama": (1, 3)}[family]
    return fmt, [{**row, key: row[key][:cut]} for cut in cuts]


def write_rows(path: Path, family: str) -> tuple[str, Path]:
    fmt, data = rows(family)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")
    return fmt, path


def make_tool_base(folder: Path, family: str) -> Path:
    """A tiny checkpoint of `family` ("glm4", "chatglm3" or "llama") whose chat template writes tools."""
    folder = make_tiny_checkpoint(folder, family)
    if family == "glm4":
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        config["chat_template"] = GLM4_TOOLS_TEMPLATE
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if family == "llama":
        (folder / "chat_template.jinja").write_text(NATIVE_TOOLS_TEMPLATE, encoding="utf-8")
    return folder


def plain_rows(family: str) -> tuple[str, list[dict]]:
    """(--data_format, rows) of the two weather questions answered with NO_CALL (text, no call)."""
    fmt, data = rows(family)
    key, asked = ("messages", 2) if fmt == "messages" else ("conversations", 1)
    answer = (
        {"from": "gpt", "value": NO_CALL} if fmt == "sharegpt" else {"role": "assistant", "content": NO_CALL}
    )
    return fmt, [{**row, key: [*row[key][:asked], answer]} for row in data[: len(WEATHER)]]


def examples(folder: Path, family: str, data: tuple[str, list[dict]] | None = None) -> list:
    """The training encoder's examples (`ptune.data.truncation.encode_conversation`) of `data` (default: the
    family's `rows`, what the prefix is trained on)."""
    from ptune.data.formats import parse_row
    from ptune.data.truncation import encode_conversation
    from ptune.families.registry import load_tokenizer

    tok = load_tokenizer(folder)
    fmt, data = data or rows(family)
    return [
        encode_conversation(tok, parse_row(r, fmt, f"row {i}", None, True), 4096) for i, r in enumerate(data)
    ]


def base_examples(folder: Path, family: str) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) the base is taught: every conversation of `rows` with CUE's tokens in front (not
    learned), and the weather questions of `plain_rows` without the cue."""
    from ptune.families.registry import load_tokenizer

    tok = load_tokenizer(folder)
    cue = [i for i in tok.encode(CUE) if i != getattr(tok, "bos_token_id", None)]
    cued = [(cue + e.input_ids, [-100] * len(cue) + e.labels) for e in examples(folder, family)]
    plain = [(e.input_ids, e.labels) for e in examples(folder, family, plain_rows(family))]
    return cued + plain


def teach(folder: Path, family: str, max_steps: int = 1000, seed: int = 0, lr: float = 3e-3) -> int:
    """Train every weight of the model in `folder` on `base_examples` until each learned token has a
    probability over MARGIN (teacher forced), so that no other CPU's rounding changes a greedy answer; write it
    back in place; returns the steps taken (AssertionError when `max_steps` did not do)."""
    from ptune.model.load import answer_loss, load_model

    torch.manual_seed(seed)
    model = load_model(folder, dtype="float32", device="cpu").base
    model.requires_grad_(True).train()
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    batch = base_examples(folder, family)
    width = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in batch])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
    learned = labels[:, 1:] != -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for step in range(1, max_steps + 1):
        hidden = decoder(input_ids=ids).last_hidden_state
        loss = answer_loss(head, hidden, labels)
        if step % 10 == 0 and loss.item() < 0.05:
            chances = head(hidden[:, :-1][learned]).softmax(-1).gather(1, labels[:, 1:][learned][:, None])
            if chances.min().item() > MARGIN:
                _save(model.eval(), folder, family)
                return step
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    raise AssertionError(f"{family}: not learned in {max_steps} steps (loss {loss.item():.3f})")


def _save(model, folder: Path, family: str) -> None:
    if family == "llama":
        model.save_pretrained(folder)
        return
    from ptune.io.files import read_json
    from tools.tiny import to_chatglm_state_dict

    cfg = read_json(folder / "config.json")
    state = to_chatglm_state_dict({k: v.detach() for k, v in model.state_dict().items()})
    for old in list(folder.glob("pytorch_model*")) + list(folder.glob("model-*.safetensors")):
        old.unlink()
    write_sharded(folder, state, cfg["num_layers"], family == "glm4", torch.float32)
