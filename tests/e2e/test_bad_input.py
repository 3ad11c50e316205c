"""Each bad input of the README's table ends in one line naming the culprit, exit code 2, nothing lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ptune.cli import main
from tools.tiny import make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "data" / "demo" / "train.json")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "m", "chatglm3")


def _run(capsys, model, tmp_path, *extra):
    argv = [
        "train",
        "--model_name_or_path",
        str(model),
        "--train_file",
        TRAIN,
        "--output_dir",
        str(tmp_path / "out"),
        "--prompt_column",
        "content",
        "--response_column",
        "summary",
        "--pre_seq_len",
        "4",
        "--max_steps",
        "1",
        "--disable_tqdm",
        "true",
        "--report_to",
        "none",
        *extra,
    ]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def _break(folder: Path, how: str) -> str:
    """Damage a copy of the tiny checkpoint; return the text the error must contain."""
    if how == "no config":
        (folder / "config.json").unlink()
        return "config.json: file not found"
    if how == "config not json":
        (folder / "config.json").write_text("{ nope", encoding="utf-8")
        return "config.json:1:3: "
    if how == "unsupported model_type":  # transformers said the folder "contains custom code"
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "frobnicator"}))
        return (
            "config.json: unknown model_type 'frobnicator': ptune loads 'chatglm' folders (ChatGLM2/3, GLM-4)"
        )
    if how == "empty folder":  # transformers said "You need to have sentencepiece or tiktoken installed"
        for file in folder.iterdir():
            file.unlink()
        return "config.json: file not found (the folder is empty; is this a model folder?)"
    if how == "missing shard":
        (folder / "pytorch_model-00002-of-00002.bin").unlink()
        return "pytorch_model-00002-of-00002.bin: shard listed in pytorch_model.bin.index.json is missing"
    if how == "truncated shard":
        shard = folder / "pytorch_model-00001-of-00002.bin"
        shard.write_bytes(shard.read_bytes()[:1000])
        return "pytorch_model-00001-of-00002.bin: not a weights-only PyTorch file"
    if how == "no tokenizer":
        (folder / "tokenizer.model").unlink()
        return "tokenizer.model"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "no config",
        "config not json",
        "unsupported model_type",
        "empty folder",
        "missing shard",
        "truncated shard",
        "no tokenizer",
    ],
)
def test_broken_model_folder(pristine, tmp_path, capsys, how):
    folder = tmp_path / "model"
    shutil.copytree(pristine, folder)
    expected = _break(folder, how)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, err = _run(capsys, folder, tmp_path)
    assert code == 2
    assert expected in err and err.startswith("ptune train: error: ")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unknown_key_and_contradictory_flags(pristine, tmp_path, capsys):
    code, err = _run(capsys, pristine, tmp_path, "--learnig_rate", "1e-2")
    assert code == 2 and "learnig_rate" in err and "learning_rate" in err
    code, err = _run(capsys, pristine, tmp_path, "--fp16", "true", "--bf16", "true")
    assert code == 2 and "--fp16" in err and "--bf16" in err


def test_debug_flag_shows_the_traceback(pristine, tmp_path):
    argv = [
        "train",
        "--debug",
        "--model_name_or_path",
        str(tmp_path / "missing"),
        "--train_file",
        TRAIN,
        "--output_dir",
        str(tmp_path / "o"),
        "--pre_seq_len",
        "4",
    ]
    from ptune.io.errors import UserError

    with pytest.raises(UserError, match="model folder not found"):
        main(argv)


@pytest.fixture(scope="module")
def glm4(tmp_path_factory):
    """GLM-4's layout: the base weights in .safetensors shards."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "g", "glm4")


@pytest.mark.parametrize(
    "how,expected",
    [
        ("half", "truncated: 162608 bytes, its tensors need 325216"),
        ("header", "truncated: 100 bytes, its header alone needs 1112"),
        ("garbage", "not a safetensors file (no JSON header; 12 bytes)"),
        ("empty", "not a safetensors file (no JSON header; 0 bytes)"),
    ],
)
def test_damaged_safetensors_shard_is_named(glm4, tmp_path, capsys, how, expected):
    # safetensors raised SafetensorError ("incomplete metadata, file not fully covered") with a traceback.
    folder = tmp_path / "model"
    shutil.copytree(glm4, folder)
    shard = folder / "model-00001-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(
        {"half": data[: len(data) // 2], "header": data[:100], "garbage": b"not a model!", "empty": b""}[how]
    )
    code, err = _run(capsys, folder, tmp_path)
    assert code == 2
    assert err == f"ptune train: error: {shard}: {expected}"


@pytest.mark.parametrize("value", ["nan", "-1"])
def test_learning_rate_nan_or_negative(pristine, tmp_path, capsys, value):
    # torch.optim raised "ValueError: Invalid learning rate" with a traceback after the model was loaded.
    code, err = _run(capsys, pristine, tmp_path, "--learning_rate", value)
    assert code == 2
    assert (
        err
        == f"ptune train: error: --learning_rate must be a finite number of at least 0, got {float(value)}"
    )


@pytest.mark.parametrize(
    "name,data,expected",
    [
        # datasets' pyarrow raised UnicodeDecodeError with a traceback.
        (
            "t.json",
            b'{"content": "a", "summary": "b"}\n{"content": "\xff", "summary": "b"}\n',
            "t.json:2:14: not UTF-8 (byte 0xff); save the file as UTF-8",
        ),
        # The rest said "cannot read as csv (An error occurred while generating the dataset)".
        (
            "t.csv",
            "content,summary\n你好,世界\n".encode("gbk"),
            "t.csv:2:1: not UTF-8 (byte 0xc4); save the file as UTF-8",
        ),
        ("t.csv", b"content,summary\na,b\nc,d,e\n", "t.csv:3: expected 2 fields, got 3"),
        ("t.csv", b"", "t.csv: empty data file"),
        ("t.json", b"", "t.json: empty data file"),
        # datasets logged "row 5" for this file's line 6.
        (
            "t.json",
            b'{"content": "a", "summary": "b"}\n' * 5 + b'{"content": "a", "summary": }\n',
            "t.json:6:29: invalid JSON (Expecting value)",
        ),
    ],
)
def test_bad_data_file_through_the_cli(pristine, tmp_path, capsys, hf_cache, name, data, expected):
    path = tmp_path / name
    path.write_bytes(data)
    code, err = _run(capsys, pristine, tmp_path, "--train_file", str(path))
    assert code == 2
    assert err == f"ptune train: error: {tmp_path}/{expected}"
