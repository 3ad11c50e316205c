"""`ptune data`: counts, lengths, decoded examples, the histogram PNG, --write_encoded, no weights read, and
a tokenization cache that `ptune train` re-uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from ptune.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo" / "chat_conversations.json"


def _config(tmp_path, model, **extra) -> Path:
    config = {
        "model_name_or_path": str(model),
        "train_file": str(DEMO),
        "validation_file": str(DEMO),
        "output_dir": str(tmp_path / "out"),
        "max_source_length": 40,
        "max_target_length": 8,
        "pre_seq_len": 4,
        "max_steps": 1,
        "report_to": "none",
        "use_cpu": True,
        **extra,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def test_data_report_without_weights(tiny, tmp_path, hf_cache, capsys):
    from ptune.data.splits import build_split
    from ptune.families.registry import load_tokenizer

    bare = tmp_path / "tokenizer-only"  # config.json and the tokenizer: no weights at all
    bare.mkdir()
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(tiny / name, bare / name)
    encoded_file = tmp_path / "encoded.jsonl"
    assert main(["data", str(_config(tmp_path, bare)), "--write_encoded", str(encoded_file)]) == 0
    out = capsys.readouterr().out
    assert f"== train: {DEMO}\nrows 8, kept 7\ndropped 1: longer than 49 tokens" in out
    assert f"== eval: {DEMO}\nrows 8, kept 7\ndropped 1: its last question alone is longer than" in out
    assert "<|assistant|>⟦\n 4加4等于8。</s>⟧" in out  # the first example, its learned span marked
    assert (tmp_path / "out" / "data_lengths.png").read_bytes()[:4] == b"\x89PNG"

    rows = [json.loads(line) for line in encoded_file.read_text().splitlines()]
    assert [r["split"] for r in rows] == ["train"] * 7 + ["eval"] * 7
    tok = load_tokenizer(tiny)
    args = SimpleNamespace(
        max_source_length=40,
        source_prefix="",
        preprocessing_num_workers=None,
        overwrite_cache=False,
        prompt_column=None,
        response_column=None,
        history_column=None,
        data_format=None,
        data_columns=None,
    )
    train = build_split(DEMO, tok, args, 8, None, "train")
    assert [(r["input_ids"], r["labels"]) for r in rows[:7]] == list(
        zip(train["input_ids"], train["labels"], strict=True)
    )
    evaluation = build_split(DEMO, tok, args, 8, None, "eval")
    assert [r["input_ids"] for r in rows[7:]] == evaluation["input_ids"]
    first = rows[7]
    assert first["prompt_ids"] + first["answer_ids"] + first["input_ids"][-1:] == first["input_ids"]


def test_train_reuses_the_tokenization_of_ptune_data(tiny, tmp_path, hf_cache, monkeypatch, capsys):
    config = _config(tmp_path, tiny, max_source_length=64, max_target_length=16)
    assert main(["data", str(config)]) == 0

    def no_encoding(text):
        raise AssertionError("tokenized again")

    monkeypatch.setattr("ptune.data.splits.Conversation.from_json", no_encoding)
    assert main(["train", str(config)]) == 0  # into the folder that holds data_lengths.png
    assert json.loads((tmp_path / "out" / "all_results.json").read_text())["train_samples"] == 8
    # The control: told to tokenize again, the same run does.
    with pytest.raises(AssertionError, match="tokenized again"):
        main(["train", str(config), "--output_dir", str(tmp_path / "again"), "--overwrite_cache", "true"])


def _snapshot(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def test_data_report_never_replaces_data_models_or_files(tiny, tmp_path, hf_cache, capsys):
    """--write_encoded onto a data file, into the model folder, or onto an existing file (without
    --overwrite_output_dir), and output_dir = the model folder: one line, exit 2, every file as it was."""
    data = tmp_path / "data"
    data.mkdir()
    train = data / "train.json"
    shutil.copy(DEMO, train)
    config = _config(tmp_path, tiny, train_file=str(train), validation_file=str(train))
    kept = tmp_path / "kept.jsonl"
    kept.write_text("mine\n", encoding="utf-8")
    before = _snapshot(data, tiny, tmp_path)
    cases = [
        (
            ["--write_encoded", str(train)],
            f"--write_encoded {train} is the --train_file: it would replace your data",
        ),
        (
            ["--write_encoded", str(tiny / "x.jsonl")],
            f"--write_encoded {tiny / 'x.jsonl'} is inside the --model_name_or_path folder; write it elsewhere",
        ),
        (
            ["--write_encoded", str(kept)],
            f"--write_encoded {kept}: exists; pass --overwrite_output_dir true to replace it, or another name",
        ),
        (["--output_dir", str(tiny)], f"--output_dir {tiny} is the --model_name_or_path folder"),
    ]
    for flags, message in cases:
        capsys.readouterr()
        assert main(["data", str(config), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith(f"ptune data: error: {message}") and err.count("\n") == 1, err
    assert _snapshot(data, tiny, tmp_path) == before
    assert main(["data", str(config), "--write_encoded", str(kept), "--overwrite_output_dir", "true"]) == 0
    assert json.loads(kept.read_text(encoding="utf-8").splitlines()[0])["split"] == "train"


def test_write_encoded_never_replaces_its_config_or_a_prefix_even_with_overwrite(
    tiny, tmp_path, hf_cache, capsys
):
    """--write_encoded onto the config it reads, a prefix's model.safetensors or prefix_config.json, a file in
    a checkpoint-N folder, weights by suffix, or deeper inside the model folder: refused whatever
    --overwrite_output_dir says, one line, every file as it was."""
    from ptune.bench.serve import random_prefix

    config = _config(tmp_path, tiny)
    prefix = random_prefix(tiny, tmp_path / "run", 4, seed=1)
    checkpoint = Path(shutil.copytree(prefix, tmp_path / "run" / "checkpoint-2"))
    before = _snapshot(tmp_path, tiny)
    cases = [
        (config, "is the config file ptune data reads"),
        (prefix / "model.safetensors", "is a weights or checkpoint file (.safetensors)"),
        (prefix / "prefix_config.json", "is a file of a run or prefix folder (prefix_config.json)"),
        (tmp_path / "run" / "trainer_state.json", "is a file of a run or prefix folder (trainer_state.json)"),
        (checkpoint / "encoded.jsonl", f"is inside the checkpoint folder {checkpoint}"),
        (tmp_path / "optimizer.pt", "is a weights or checkpoint file (.pt)"),
        (tiny / "sub" / "x.jsonl", "is inside the --model_name_or_path folder"),
    ]
    for target, message in cases:
        capsys.readouterr()
        argv = ["data", str(config), "--overwrite_output_dir", "true", "--write_encoded", str(target)]
        assert main(argv) == 2, target
        err = capsys.readouterr().err
        assert err.startswith(f"ptune data: error: --write_encoded {target} {message}"), err
        assert err.count("\n") == 1 and "Traceback" not in err, err
    assert _snapshot(tmp_path, tiny) == before


def test_data_report_reads_the_files_inside_data_dir(tiny, tmp_path, hf_cache, capsys):
    # THUDM's finetune_demo layout: relative file names, read inside --data_dir as ptune train reads them
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(DEMO, data / "train.json")
    config = _config(tmp_path, tiny, train_file="train.json", validation_file="train.json")
    assert main(["data", str(config), "--data_dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"== train: {data / 'train.json'}\nrows 8, kept 7\n" in out
    assert f"== eval: {data / 'train.json'}\nrows 8, kept 7\n" in out


@pytest.mark.parametrize("flag,split", [("--validation_file", "eval"), ("--test_file", "predict")])
def test_data_report_of_a_config_without_train_file(tiny, tmp_path, hf_cache, capsys, flag, split):
    config = _config(tmp_path, tiny, train_file=None, validation_file=None)
    assert main(["data", str(config), flag, str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert f"== {split}: {DEMO}\nrows 8, kept " in out and "== train" not in out


def test_an_alpaca_csv_encodes_as_its_json_twin(tiny, tmp_path, hf_cache):
    rows = [
        {"instruction": "翻译", "input": "hello", "output": "你好"},
        {"instruction": "写诗", "input": "", "output": "床"},
    ]
    (tmp_path / "a.json").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    (tmp_path / "a.csv").write_text("instruction,input,output\n翻译,hello,你好\n写诗,,床\n", "utf-8")
    written = []
    for name in ("a.json", "a.csv"):
        config = _config(tmp_path, tiny, train_file=str(tmp_path / name), validation_file=None)
        out = tmp_path / f"{name}.jsonl"
        assert main(["data", str(config), "--overwrite_output_dir", "true", "--write_encoded", str(out)]) == 0
        written.append([json.loads(line) for line in out.read_text("utf-8").splitlines()])
    assert len(written[0]) == 2 and written[0] == written[1]


def test_source_prefix_is_refused_for_conversations(tiny, tmp_path, hf_cache, capsys):
    config = _config(tmp_path, tiny)
    assert main(["data", str(config), "--source_prefix", "前缀"]) == 2
    assert capsys.readouterr().err == (
        f"ptune data: error: --source_prefix is for prompt_response data; {DEMO} is conversations: put the text "
        "in a system message (or ptune chat --system) instead\n"
    )
    assert not (tmp_path / "out").exists()
