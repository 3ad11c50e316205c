"""Data loading, validation, encoding through `datasets`, and the padding collator."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from ptune.chat_format import encode_example
from ptune.data import (
    Collator,
    Columns,
    build_dataset,
    longest_prompt_first,
    pad_left,
    pad_right,
    prompt_length,
    restore_order,
)
from ptune.errors import UserError
from ptune.tiny import make_tiny_checkpoint
from ptune.tokenizer import load_tokenizer

COLUMNS = Columns("content", "summary")


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
        ds = build_dataset(path, tok, COLUMNS, _args(), max_target=16, max_samples=None)
    assert len(ds) == 2
    assert "dropped 2 of 4 rows" in caplog.text
    expected = encode_example(tok, "类型#上衣", "这件上衣很好看。", [], 32, 16)
    assert ds[0]["input_ids"] == expected[0] and ds[0]["labels"] == expected[1]


def test_csv_and_history_columns(tmp_path, tok):
    (tmp_path / "d.csv").write_text("content,summary\n类型#上衣,好看\n", encoding="utf-8")
    ds = build_dataset(tmp_path / "d.csv", tok, COLUMNS, _args(), max_target=8, max_samples=None)
    assert len(ds) == 1
    path = _write(
        tmp_path / "chat.json", [{"prompt": "再加一呢", "response": "三", "history": [["一加一", "二"]]}]
    )
    ds = build_dataset(path, tok, Columns("prompt", "response", "history"), _args(), 8, None)
    assert ds[0]["input_ids"] == encode_example(tok, "再加一呢", "三", [["一加一", "二"]], 32, 8)[0]


@pytest.mark.parametrize(
    "content,message",
    [
        (
            '{"content": "a", "summary": "b"}\n{"content": "a" "summary": "b"}\n',
            r"bad\.json:2:\d+: invalid JSON",
        ),
        ('{"content": 5, "summary": "b"}\n', r"row 1: column 'content' must be a string, got int"),
        ('{"content": "a", "summry": "b"}\n', r"no column 'summary' \(--response_column\)"),
        ('{"prompt": "a", "response": "b", "history": ["x"]}\n', r"row 1: history must be a list of"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path, tok, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    columns = Columns("prompt", "response", "history") if "history" in content else COLUMNS
    with pytest.raises(UserError, match=message):
        build_dataset(path, tok, columns, _args(), 8, None)


def test_missing_file_and_wrong_extension(tmp_path, tok):
    with pytest.raises(UserError, match="data file not found"):
        build_dataset(tmp_path / "nope.json", tok, COLUMNS, _args(), 8, None)
    (tmp_path / "d.txt").write_text("x", encoding="utf-8")
    with pytest.raises(UserError, match=r"unsupported extension '\.txt'"):
        build_dataset(tmp_path / "d.txt", tok, COLUMNS, _args(), 8, None)


def test_predict_keeps_rows_without_a_response(tmp_path, tok):
    path = _write(tmp_path / "test.json", [{"content": "类型#上衣"}, {"content": "类型#裤"}])
    ds = build_dataset(path, tok, COLUMNS, _args(), 8, None, require_response=False)
    assert len(ds) == 2
    batch = Collator(tok.pad_token_id, with_prompts=True)([ds[0], ds[1]])
    assert batch["answer_ids"].shape == (2, 0)
    assert batch["labels"].ne(-100).sum(-1).tolist() == [1, 1]  # only the end id is supervised
