"""Data loading, validation, encoding through `datasets`, and the padding collator."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections import namedtuple
from types import SimpleNamespace

import pytest

from ptune.data.chat_format import encode_example
from ptune.data.collate import (
    Collator,
    longest_prompt_first,
    pad_left,
    pad_right,
    prompt_length,
    restore_order,
)
from ptune.data.conversation import Conversation
from ptune.data.rows import read_rows
from ptune.data.splits import build_split, load_conversations
from ptune.families.registry import load_tokenizer
from ptune.io.errors import UserError
from tools.tiny import make_tiny_checkpoint

Columns = namedtuple("Columns", "prompt response history", defaults=(None,))
COLUMNS = Columns("content", "summary")


def load_rows(path, columns):
    """The rows of a prompt_response file as encode_split reads them: one Conversation per row, cached."""
    names = {"prompt": columns.prompt, "response": columns.response, "history": columns.history or ""}
    return load_conversations(path, "prompt_response", names, None, True)


def prompt_and_response(row) -> list[str]:
    """A cached prompt_response row's [prompt, response]: its conversation's last two messages."""
    return [m["content"] for m in Conversation.from_json(row["conversation"]).messages[-2:]]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), "chatglm2")
    return load_tokenizer(folder)


def _args(**kw):
    base = {
        "max_source_length": 32,
        "source_prefix": "",
        "preprocessing_num_workers": None,
        "overwrite_cache": True,
    }
    return SimpleNamespace(**{**base, **kw})


def _build(path, tok, columns, args, max_target, max_samples):
    """A training split of prompt/response rows (ptune.data.splits.build_split with these columns)."""
    names = {"prompt_column": columns.prompt, "response_column": columns.response}
    args = SimpleNamespace(**vars(args), **names, history_column=columns.history, data_format=None)
    return build_split(path, tok, args, max_target, max_samples, "train")


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_collator_pads_each_batch_to_its_longest_sample():
    rows = [
        {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]},
        {"input_ids": [5, 9], "labels": [-100, 9]},
    ]
    batch = Collator(pad_id=0, with_prompts=True)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [5, 9, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 9, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["prompt_ids"].tolist() == [[5, 6], [0, 5]]
    assert batch["prompt_mask"].tolist() == [[1, 1], [0, 1]]
    # The reference answer excludes the end id (last label).
    assert batch["answer_ids"].tolist() == [[7], [-100]]


def test_generation_order_and_its_inverse():
    labels = [[-100, 5], [-100, -100, -100, 7], [-100, -100, 8], [-100, 9]]
    order = longest_prompt_first(labels)
    assert order == [1, 2, 0, 3]
    assert restore_order(["b", "c", "a", "d"], order) == ["a", "b", "c", "d"]


def test_pure_padding_helpers():
    assert pad_right([[1], [2, 3]], 0) == [[1, 0], [2, 3]]
    assert pad_left([[1], [2, 3]], 0) == [[0, 1], [2, 3]]
    assert prompt_length([-100, -100, 4, -100]) == 2


def test_build_dataset_encodes_counts_and_drops_empty_rows(tmp_path, tok, caplog):
    rows = [
        {"content": "类型#上衣", "summary": "这件上衣很好看。"},
        {"content": "", "summary": "没有问题"},
        {"content": "类型#裤", "summary": "  "},
        {"content": "类型#裙", "summary": "这条裙子。"},
    ]
    path = _write(tmp_path / "train.json", rows)
    with caplog.at_level(logging.WARNING, logger="ptune"):
        ds = _build(path, tok, COLUMNS, _args(), max_target=16, max_samples=None)
    assert len(ds) == 2
    assert "dropped 2 of 4 rows" in caplog.text
    expected = encode_example(tok, "类型#上衣", "这件上衣很好看。", [], 32, 16)
    assert ds[0]["input_ids"] == expected[0] and ds[0]["labels"] == expected[1]


def test_csv_and_history_columns(tmp_path, tok):
    (tmp_path / "d.csv").write_text("content,summary\n类型#上衣,好看\n", encoding="utf-8")
    ds = _build(tmp_path / "d.csv", tok, COLUMNS, _args(), max_target=8, max_samples=None)
    assert len(ds) == 1
    path = _write(
        tmp_path / "chat.json", [{"prompt": "再加一呢", "response": "三", "history": [["一加一", "二"]]}]
    )
    ds = _build(path, tok, Columns("prompt", "response", "history"), _args(), 8, None)
    assert ds[0]["input_ids"] == encode_example(tok, "再加一呢", "三", [["一加一", "二"]], 32, 8)[0]


GOOD = '{"content": "a", "summary": "b"}'


@pytest.mark.parametrize(
    "name,content,message",
    [
        (
            "bad.json",
            f'{GOOD}\n{{"content": "a" "summary": "b"}}\n',
            "bad.json:2:17: invalid JSON (Expecting ',' delimiter)",
        ),
        # File line numbers, blank lines counted (datasets said "row 1" for this one).
        (
            "bad.json",
            f'{GOOD}\n\n{{"content": 5, "summary": "b"}}\n',
            "bad.json:3: column 'content' must be a string, got int",
        ),
        (
            "bad.json",
            '{"content": "a", "summry": "b"}\n',
            "bad.json: no column 'summary' (--response_column); the file has ['content', 'summry']",
        ),
        (
            "bad.json",
            '\n{"prompt": "a", "response": "b", "history": ["x"]}\n',
            "bad.json:2: history must be a list of [question, answer] string pairs",
        ),
        ("bad.json", f"{GOOD}\n[1, 2]\n", "bad.json:2: expected a JSON object per line, got list"),
        (
            "bad.json",
            f'{GOOD}\n{{"content": "a",\t"summary": "b",  }}\n',
            "bad.json:2:32: trailing comma before '}' (JSON allows none)",
        ),
        # One JSON array: errors at the element's line too.
        (
            "bad.json",
            f'[\n  {GOOD},\n  {{"content": 5, "summary": "b"}}\n]\n',
            "bad.json:3: column 'content' must be a string, got int",
        ),
        (
            "bad.json",
            f"[\n  {GOOD},\n  {GOOD},\n]\n",
            "bad.json:3:35: trailing comma before ']' (JSON allows none)",
        ),
        ("bad.json", f"[\n  {GOOD}\n  {GOOD}\n]\n", "bad.json:3:3: invalid JSON (Expecting ',' delimiter)"),
        ("bad.json", f"[{GOOD}] x", "bad.json:1:36: invalid JSON (Extra data)"),
        ("bad.json", f"[{GOOD}, 7]", "bad.json:1: expected an object in the array, got int"),
        # CSV: the file's line numbers, header counted; a quoted field may span lines.
        ("bad.csv", 'content,summary\na,b\n"c\nc",d\ne,f,g\n', "bad.csv:5: expected 2 fields, got 3"),
        ("bad.csv", "content,summary\na\n", "bad.csv:2: expected 2 fields, got 1"),
        ("bad.csv", "content,content\na,b\n", "bad.csv:1: column 'content' appears twice in the header"),
        (
            "bad.csv",
            "prompt,summary\na,b\n",
            "bad.csv: no column 'content' (--prompt_column); the file has ['prompt', 'summary']",
        ),
        # Nothing to read.
        ("bad.json", "", "bad.json: empty data file"),
        ("bad.jsonl", "\n  \n", "bad.jsonl: empty data file"),
        ("bad.json", "[ ]\n", "bad.json: empty data file (no rows)"),
        ("bad.csv", "", "bad.csv: empty data file"),
        ("bad.csv", "content,summary\n", "bad.csv: empty data file (no rows)"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, tok, hf_cache, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    columns = Columns("prompt", "response", "history") if "history" in content else COLUMNS
    with pytest.raises(UserError) as error:
        _build(path, tok, columns, _args(), 8, None)
    assert str(error.value) == f"{tmp_path}/{message}"


@pytest.mark.parametrize(
    "name,data,message",
    [
        # A byte inside a JSON string (pyarrow raised UnicodeDecodeError from deep inside datasets).
        (
            "d.json",
            GOOD.encode() + b'\n{"content": "ab\xff", "summary": "b"}\n',
            "d.json:2:16: not UTF-8 (byte 0xff)",
        ),
        ("d.csv", "content,summary\n你好,世界\n".encode("gbk"), "d.csv:2:1: not UTF-8 (byte 0xc4)"),
        ("d.csv", "content,summary\ncafé,thé\n".encode("latin-1"), "d.csv:2:4: not UTF-8 (byte 0xe9)"),
    ],
)
def test_non_utf8_bytes_are_located(tmp_path, tok, hf_cache, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(UserError) as error:
        _build(path, tok, COLUMNS, _args(), 8, None)
    assert str(error.value) == f"{tmp_path}/{message}; save the file as UTF-8"


def test_one_reader_for_every_format(tmp_path, tok, hf_cache):
    """JSON lines, a JSON array and CSV (with a BOM, quoted newlines, "NA" as text) give the same rows."""
    rows = [
        {"content": "类型#上衣\u2028上衣", "summary": "NA"},
        {"content": "类型#裙", "summary": "这条\n裙子"},
    ]
    lines = _write(tmp_path / "d.jsonl", rows)
    array = tmp_path / "d.json"
    array.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    table = tmp_path / "d.csv"
    table.write_text(
        '\ufeffcontent,summary\n类型#上衣\u2028上衣,NA\n类型#裙,"这条\n裙子"\n', encoding="utf-8"
    )
    expected = [list(r.values()) for r in rows]
    for path in (lines, array, table):
        loaded = load_rows(path, COLUMNS)
        assert [prompt_and_response(r) for r in loaded] == expected, path.name
        assert [line for line, _ in read_rows(path)] == (
            [1, 2] if path is lines else [2, 6] if path is array else [2, 3]
        )


def test_rows_are_read_again_only_when_the_file_changes(tmp_path, tok, hf_cache):
    path = _write(tmp_path / "d.json", [{"content": "a", "summary": "b"}])
    first = load_rows(path, COLUMNS)
    assert load_rows(path, COLUMNS).cache_files == first.cache_files
    _write(path, [{"content": "a", "summary": "c"}])
    assert [prompt_and_response(r)[1] for r in load_rows(path, COLUMNS)] == ["c"]


def test_only_the_tokenizing_bar_and_only_on_a_terminal(tmp_path, tok, hf_cache, monkeypatch):
    """datasets showed three bars per file (generate, map, filter), also into log files."""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for name, stream in (("log.json", io.StringIO()), ("tty.json", Terminal())):
        path = _write(tmp_path / name, [{"content": "类型#上衣", "summary": "好看"}])
        monkeypatch.setattr(sys, "stderr", stream)
        _build(path, tok, COLUMNS, _args(), 8, None)
        monkeypatch.undo()
        shown = stream.getvalue()
        if name == "log.json":
            assert shown == ""
        else:
            # Every redraw is the tokenizing bar's, and it ends at 100% (how often tqdm redraws depends on the
            # machine's speed: a slow row adds a redraw, so the count of "100%" is not the thing to check).
            draws = [d for d in shown.replace("\n", "\r").split("\r") if d.strip()]
            assert draws and all(d.startswith("Tokenizing tty.json: ") for d in draws), shown
            assert "Tokenizing tty.json: 100%" in draws[-1], shown
            assert "Generating" not in shown and "Filter" not in shown and "Dropping" not in shown, shown


def test_a_prompt_response_conversation_is_cut_as_thudm_cut_it(tok):
    """prompt_response goes through Conversation and `encode` under SourceTarget: the prompt cut to
    max_source_length (oldest history first), the answer to max_target_length, separately."""
    from ptune.data.chat_format import prompt_ids
    from ptune.data.formats import get, parse_row
    from ptune.data.splits import encode, truncation

    history = [["一加一", "二"], ["二加二", "四"], ["三加三", "六"]]
    row = {"prompt": "再加一呢", "response": "这条裙子很好看。", "history": history}
    conversation = parse_row(row, "prompt_response", "f:1", None, True)
    max_source = len(prompt_ids(tok, "再加一呢", history[-1:]))  # room for the latest history turn only
    encoded, source_len, target_len = encode(
        tok, conversation, truncation(get("prompt_response"), "train", max_source, 3)
    )
    assert (encoded.input_ids, encoded.labels) == encode_example(
        tok, "再加一呢", "这条裙子很好看。", history, max_source, 3
    )
    assert encoded.lost_turns == 2 and len(encoded.labels) - encoded.labels.count(-100) == 3 + 1
    assert source_len == len(prompt_ids(tok, "再加一呢", history)) > max_source
    dropped, _, _ = encode(
        tok,
        parse_row({"prompt": " ", "response": "a"}, "prompt_response", "f:2", None, True),
        truncation(get("prompt_response"), "train", 32, 8),
    )
    assert dropped.dropped == "an empty prompt or response"
