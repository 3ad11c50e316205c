"""ptune.io.files: the one text and JSON readers' messages and the atomic writers' all-or-nothing behaviour."""

from __future__ import annotations

import pytest

from ptune.io.errors import UserError
from ptune.io.files import atomic_dir, publish_dir, read_json, read_text, replacing, write_json


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1,\n "b": 2,\n}\n', "f.json:2:8: trailing comma before '}' (JSON allows none)"),
        (b'{"a": 1\n "b": 2}', "f.json:2:2: not valid JSON (Expecting ',' delimiter)"),
        (b'{"a": "\xff"}', "f.json:1:8: not UTF-8 (byte 0xff)"),
        (b"[1, 2]", "f.json: expected a JSON object, got list"),
    ],
)
def test_read_json_names_file_line_and_column(tmp_path, content, message):
    path = tmp_path / "f.json"
    path.write_bytes(content)
    with pytest.raises(UserError) as error:
        read_json(path)
    assert str(error.value) == f"{tmp_path}/{message}"


def test_read_json_missing(tmp_path):
    assert read_json(tmp_path / "absent.json", missing_ok=True) == {}
    with pytest.raises(UserError, match="absent.json: file not found"):
        read_json(tmp_path / "absent.json")


def test_replacing_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError), replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert read_json(path) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_dir_publishes_all_or_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "one").write_text("1")
        raise RuntimeError("killed mid-write")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "one").write_text("1")
    assert [p.name for p in target.iterdir()] == ["one"]


def test_write_json_writes_non_finite_floats_as_null(tmp_path):
    import json
    import math

    path = tmp_path / "m.json"
    write_json(path, {"a": math.nan, "b": [1.5, math.inf, {"c": -math.inf}], "d": "NaN"})
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.5, None, {"c": None}], "d": "NaN"}


def test_read_text_one_utf8_reader_for_data_config_and_json_files(tmp_path):
    """A config file that is not UTF-8 is named at file:line:column like a data or JSON file."""
    from ptune.config.files import read_config

    path = tmp_path / "c.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(UserError) as error:
        read_config(str(path))
    assert str(error.value) == f"{path}:2:7: not UTF-8 (byte 0xe9)"
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")  # a BOM is dropped
    assert read_text(path) == "a: 1\n"
    with pytest.raises(UserError) as error:
        read_text(tmp_path / "no.yaml", missing="no such config file", hint="; save it as UTF-8")
    assert str(error.value) == f"{tmp_path / 'no.yaml'}: no such config file"


def test_publish_dir_replaces_an_older_copy_through_the_aside_name(tmp_path):
    staged, target, aside = tmp_path / "staged", tmp_path / "target", tmp_path / ".aside"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staged.mkdir()
    (staged / "new.txt").write_text("new")
    publish_dir(staged, target, aside)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]
