"""Every data format trains, evaluates, predicts and chats on the tiny model of every family, offline.

One training run per family on data/demo/chat_conversations.json (ChatGLM3's format; chatglm3 and glm4 also
get a row with tools and a tool call), evaluated while training on the same conversations in another format,
then `ptune eval` and `ptune predict` on two more formats and `ptune chat --system`.  Few steps, 8 rows.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ptune.cli import main
from tools.tiny import make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo" / "chat_conversations.json"
GLM4_TEMPLATE = REPO / "ptune" / "assets" / "glm4_chat_template.jinja"
# (validation format, test format) per family: every format is read by eval and predict somewhere.
FORMATS = {
    "chatglm2": ("messages", "alpaca"),
    "chatglm3": ("sharegpt", "messages"),
    "glm4": ("alpaca", "sharegpt"),
    "llama": ("messages", "conversations"),
}
TOOL_ROW = {
    "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
    "conversations": [
        {"role": "system", "content": "你会用工具算加法。"},
        {"role": "user", "content": "3加4等于几？"},
        {"role": "tool", "name": "add", "parameters": {"a": 3, "b": 4}, "observation": {"sum": 7}},
        {"role": "assistant", "content": "3加4等于7。"},
    ],
}


def demo_rows() -> list[list[dict]]:
    return [json.loads(line)["conversations"] for line in DEMO.read_text(encoding="utf-8").splitlines()]


def as_format(messages: list[dict], fmt: str) -> dict:
    """One demo conversation written in `fmt`."""
    if fmt == "conversations":
        return {"conversations": messages}
    if fmt == "messages":
        return {"messages": messages}
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    if fmt == "sharegpt":
        tags = {"user": "human", "assistant": "gpt"}
        row = {"conversations": [{"from": tags[m["role"]], "value": m["content"]} for m in rest]}
        return {**row, "system": system[0]} if system else row
    pairs = [[rest[i]["content"], rest[i + 1]["content"]] for i in range(0, len(rest) - 2, 2)]
    row = {"instruction": rest[-2]["content"], "input": "", "output": rest[-1]["content"], "history": pairs}
    return {**row, "system": system[0]} if system else row


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny models of every family; the GLM-4 one with GLM-4-9B-chat's chat template (tools included)."""
    root = tmp_path_factory.mktemp("models")
    folders = {family: make_tiny_checkpoint(root / family, family) for family in FORMATS}
    config_file = folders["glm4"] / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["chat_template"] = GLM4_TEMPLATE.read_text(encoding="utf-8")
    config_file.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return folders


COMMON = [
    "--max_source_length",
    "256",
    "--max_target_length",
    "16",
    "--report_to",
    "none",
    "--use_cpu",
    "true",
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "8",
]


@pytest.mark.parametrize("family", list(FORMATS))
def test_every_format_end_to_end(family, models, tmp_path, hf_cache, monkeypatch, capsys):
    model = str(models[family])
    val_format, test_format = FORMATS[family]
    rows = demo_rows()
    train_rows = [{"conversations": r} for r in rows]
    if family in ("chatglm3", "glm4"):
        train_rows.append(TOOL_ROW)
    train = write(tmp_path / "train.json", train_rows)
    val = write(tmp_path / "val.json", [as_format(r, val_format) for r in rows])
    test = write(tmp_path / "test.json", [as_format(r, test_format) for r in rows])
    out = tmp_path / "run"
    argv = [
        "train",
        "--model_name_or_path",
        model,
        "--train_file",
        str(train),
        "--validation_file",
        str(val),
        "--output_dir",
        str(out),
        "--pre_seq_len",
        "4",
        "--max_steps",
        "2",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--learning_rate",
        "0.01",
        *COMMON,
    ]
    assert main(argv) == 0
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_samples"] == len(train_rows)  # one example per conversation
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("eval_loss" in entry for entry in history)  # evaluated while training, on `val_format`

    evaluated = tmp_path / "eval"
    same = ["--model_name_or_path", model, "--ptuning_checkpoint", str(out), *COMMON]
    assert main(["eval", "--validation_file", str(val), "--output_dir", str(evaluated), *same]) == 0
    assert json.loads((evaluated / "eval_results.json").read_text())["eval_samples"] == len(rows)

    predicted = tmp_path / "predict"
    argv = [
        "predict",
        "--test_file",
        str(test),
        "--output_dir",
        str(predicted),
        "--max_new_tokens",
        "4",
        *same,
    ]
    assert main(argv) == 0
    lines = (predicted / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(rows)  # one prediction per conversation: its last answer

    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("4加4等于几？\nexit\n"))
    argv = [
        "chat",
        "--model_name_or_path",
        model,
        "--ptuning_checkpoint",
        str(out),
        "--system",
        "你是一个会算术的小助手。",
        "--max_new_tokens",
        "4",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert "4加4等于几？" in capsys.readouterr().out


U = {"role": "user", "content": "q"}
A = {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(
    "second,message",
    [
        (
            {"conversations": [U, {"role": "bot", "content": "a"}]},
            "conversations[1].role: unknown role 'bot' (expected system, user, assistant, observation, tool)",
        ),
        ({"conversations": [U]}, "conversations: no assistant message (nothing to learn)"),
        ({"conversations": [U, A], "tools": "add"}, "tools: must be a list of tool definitions, got str"),
        ({"conversations": []}, "conversations: empty conversation"),
        ({"messages": [U, A]}, "a messages row in a conversations file (mixed formats; keys ['messages'])"),
    ],
)
def test_bad_conversation_data_is_one_line(second, message, tiny, tmp_path, hf_cache, capsys):
    train = write(tmp_path / "train.json", [{"conversations": [U, A]}, second])
    argv = [
        "train",
        "--model_name_or_path",
        str(tiny),
        "--train_file",
        str(train),
        "--output_dir",
        str(tmp_path / "out"),
        "--pre_seq_len",
        "4",
        "--max_steps",
        "1",
        *COMMON,
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"ptune train: error: {train}:2: {message}\n"


def test_an_unknown_format_is_one_line(tiny, tmp_path, hf_cache, capsys):
    train = write(tmp_path / "train.json", [{"text": "q"}])
    argv = [
        "train",
        "--model_name_or_path",
        str(tiny),
        "--train_file",
        str(train),
        "--output_dir",
        str(tmp_path / "out"),
        "--pre_seq_len",
        "4",
        *COMMON,
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"ptune train: error: {train}:1: cannot tell the data format from the keys ['text']: pass --data_format "
        "(conversations, messages, alpaca, sharegpt) or --prompt_column/--response_column\n"
    )


@pytest.mark.parametrize(
    ("family", "fixture", "fmt"),
    [("chatglm3", "chatglm3_ptuning_v2.yaml", "conversations"), ("glm4", "glm4_ptuning_v2.yaml", "messages")],
)
def test_thudm_finetune_demo_yaml_trains_on_its_own_data_layout(
    family, fixture, fmt, models, tmp_path, hf_cache, caplog
):
    """THUDM's own ptuning_v2.yaml, unchanged, on a DATA_DIR laid out as its finetune demo expects (train.json
    and dev.json, or .jsonl, in its format): no column flags needed, every assistant turn learned; GLM-4's `combine: true`
    is accepted with a warning saying that ptune learns every turn."""
    thudm = REPO / "tests" / "fixtures" / "thudm_finetune_demo" / fixture
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.json", "dev.json", "train.jsonl", "dev.jsonl"):  # ChatGLM3's names, GLM-4's
        write(data / name, [as_format(r, fmt) for r in demo_rows()])
    out = tmp_path / "out"
    argv = [
        "train",
        str(thudm),
        "--data_dir",
        str(data),
        "--model_name_or_path",
        str(models[family]),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--eval_steps",
        "2",
        "--max_new_tokens",
        "4",
        "--preprocessing_num_workers",
        "1",
        "--dataloader_num_workers",
        "0",
        "--per_device_eval_batch_size",
        "8",
        *COMMON,
    ]
    with caplog.at_level("WARNING", logger="ptune"):
        assert main(argv) == 0
    assert (out / "checkpoint-2" / "model.safetensors").is_file()
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("eval_rouge-l" in h for h in history)  # predict_with_generate: true in THUDM's yaml
    warned = [r.getMessage() for r in caplog.records if "combine" in r.getMessage()]
    assert warned == (
        []
        if family == "chatglm3"
        else [
            f"{thudm}: combine: true made THUDM's GLM-4 script learn "
            "only the last assistant turn; ptune learns every assistant turn of a conversation "
            "(THUDM's combine: false)"
        ]
    )
