"""ptune.model.export: THUDM layout (pytorch_model.bin + config.json with pre_seq_len) and the ptune layout, exact
files and bit-equal tensors, round trips through load_model (THUDM's import path), overwrite refusal."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ptune.cli import main
from ptune.io.errors import UserError
from ptune.model.convert import PREFIX_KEY
from ptune.model.export import export_checkpoint, remote_code_files
from ptune.model.load import load_model
from ptune.train.checkpoint import write_prefix_files
from tools.tiny import make_tiny_checkpoint

TOKENIZER_FILES = {"tokenizer.model", "tokenizer_config.json"}
THUDM_FILES = {"pytorch_model.bin", "config.json"} | TOKENIZER_FILES


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "chatglm3", "chatglm3")


def _checkpoint(base, folder, projection=False, tokenizer=True, pre_seq_len=4, family="chatglm3"):
    """A ptune prefix checkpoint as the trainer writes it (random prefix, tokenizer files copied)."""
    model = load_model(
        base, dtype="float32", device="cpu", pre_seq_len=pre_seq_len, prefix_projection=projection
    )
    model.source.family = family
    folder.mkdir(parents=True)
    files = [base / name for name in sorted(TOKENIZER_FILES)] if tokenizer else []
    write_prefix_files(model, folder, files)
    return folder, {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}


def _export(*args, **kwargs):
    warnings: list[str] = []
    out = export_checkpoint(*args, warn=warnings.append, **kwargs)
    return out, warnings


def _files(folder):
    return {p.name for p in folder.iterdir()}


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _assert_same(state, expected):
    assert set(state) == set(expected)
    for k, v in expected.items():
        assert state[k].dtype == torch.float32
        assert torch.equal(state[k], v), k


@pytest.mark.parametrize("projection", [False, True])
def test_thudm_export_files_tensors_config(base, tmp_path, projection):
    ckpt, expected = _checkpoint(base, tmp_path / "ckpt", projection=projection)
    out, warnings = _export(ckpt)
    assert out == tmp_path / "ckpt-thudm"
    assert warnings == []
    assert _files(out) == THUDM_FILES
    state = torch.load(out / "pytorch_model.bin", weights_only=True)
    names = ["embedding.weight"] + (
        ["trans.0.weight", "trans.0.bias", "trans.2.weight", "trans.2.bias"] * projection
    )
    assert sorted(state) == sorted(PREFIX_KEY + n for n in names)
    _assert_same(state, expected)
    base_config = json.loads((base / "config.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config == {**base_config, "pre_seq_len": 4, "prefix_projection": projection}
    for name in TOKENIZER_FILES:
        assert (out / name).read_bytes() == (base / name).read_bytes()


@pytest.mark.parametrize("projection", [False, True])
def test_thudm_export_round_trips_through_load_model(base, tmp_path, projection):
    ckpt, expected = _checkpoint(base, tmp_path / "ckpt", projection=projection)
    out, _ = _export(ckpt, out=tmp_path / "exported")
    model = load_model(base, dtype="float32", device="cpu", ptuning_checkpoint=out)
    assert model.pre_seq_len == 4
    assert model.prefix_encoder.config.prefix_projection is projection
    _assert_same({k: v.detach() for k, v in model.trainable_state_dict().items()}, expected)


def test_thudm_export_takes_tokenizer_files_from_the_base(base, tmp_path):
    ckpt, _ = _checkpoint(base, tmp_path / "ckpt", tokenizer=False)
    out, warnings = _export(ckpt)
    assert warnings == []
    assert _files(out) == THUDM_FILES
    assert (out / "tokenizer.model").read_bytes() == (base / "tokenizer.model").read_bytes()


def test_thudm_export_copies_the_base_remote_code(base, tmp_path):
    own_base = tmp_path / "base"
    shutil.copytree(base, own_base)
    config = json.loads((own_base / "config.json").read_text())
    for module in ("configuration_chatglm", "modeling_chatglm", "tokenization_chatglm"):
        (own_base / f"{module}.py").write_text(f"# {module}\n")
    tok_config = json.loads((own_base / "tokenizer_config.json").read_text())
    assert remote_code_files(config, tok_config) == [
        "configuration_chatglm.py",
        "modeling_chatglm.py",
        "tokenization_chatglm.py",
    ]
    ckpt, _ = _checkpoint(own_base, tmp_path / "ckpt", tokenizer=False)
    out, _ = _export(ckpt)
    assert _files(out) == THUDM_FILES | {
        "configuration_chatglm.py",
        "modeling_chatglm.py",
        "tokenization_chatglm.py",
    }
    assert (out / "modeling_chatglm.py").read_text() == "# modeling_chatglm\n"


def test_thudm_export_without_the_base_folder_writes_the_prefix_fields(base, tmp_path):
    ckpt, expected = _checkpoint(base, tmp_path / "ckpt")
    prefix_config = json.loads((ckpt / "prefix_config.json").read_text())
    prefix_config["base_model_name_or_path"] = str(tmp_path / "gone")
    (ckpt / "prefix_config.json").write_text(json.dumps(prefix_config))
    out, warnings = _export(ckpt)
    assert json.loads((out / "config.json").read_text()) == {
        "model_type": "chatglm",
        "num_layers": 2,
        "kv_channels": 16,
        "multi_query_group_num": 2,
        "hidden_size": 64,
        "_name_or_path": str(tmp_path / "gone"),
        "pre_seq_len": 4,
        "prefix_projection": False,
    }
    assert len(warnings) == 1 and "base model config not found" in warnings[0]
    model = load_model(base, dtype="float32", device="cpu", ptuning_checkpoint=out)
    _assert_same(dict(model.trainable_state_dict()), expected)


def test_glm4_prefix_exports_with_a_warning(tmp_path):
    glm4 = make_tiny_checkpoint(tmp_path / "glm4", "glm4")
    ckpt, expected = _checkpoint(glm4, tmp_path / "ckpt", tokenizer=False, pre_seq_len=2, family="glm4")
    out, warnings = _export(ckpt)
    assert _files(out) == THUDM_FILES
    _assert_same(torch.load(out / "pytorch_model.bin", weights_only=True), expected)
    assert len(warnings) == 1 and "GLM-4" in warnings[0] and "cannot load" in warnings[0]


def test_safetensors_export_of_a_ptune_checkpoint_drops_trainer_state(base, tmp_path):
    ckpt, expected = _checkpoint(base, tmp_path / "checkpoint-8")
    (ckpt / "optimizer.pt").write_bytes(b"state")
    (ckpt / "trainer_state.json").write_text("{}")
    out, warnings = _export(ckpt, "safetensors")
    assert (
        out == tmp_path / "exports" / "checkpoint-8-safetensors"
    )  # never checkpoint-8-* beside the checkpoints
    assert warnings == []
    assert _files(out) == {"model.safetensors", "prefix_config.json"} | TOKENIZER_FILES
    _assert_same(load_file(out / "model.safetensors"), expected)
    assert (out / "prefix_config.json").read_bytes() == (ckpt / "prefix_config.json").read_bytes()


def test_thudm_checkpoint_converts_to_the_ptune_layout(base, tmp_path):
    ckpt, expected = _checkpoint(base, tmp_path / "ckpt", projection=True)
    thudm, _ = _export(ckpt)
    out, _ = _export(thudm, "safetensors", out=tmp_path / "back")
    assert _files(out) == {"model.safetensors", "prefix_config.json"} | TOKENIZER_FILES
    _assert_same(load_file(out / "model.safetensors"), expected)
    prefix_config = json.loads((out / "prefix_config.json").read_text())
    assert {k: prefix_config[k] for k in ("pre_seq_len", "num_layers", "num_kv_heads", "head_dim")} == {
        "pre_seq_len": 4,
        "num_layers": 2,
        "num_kv_heads": 2,
        "head_dim": 16,
    }
    assert prefix_config["prefix_projection"] is True
    model = load_model(base, dtype="float32", device="cpu", ptuning_checkpoint=out)
    _assert_same(dict(model.trainable_state_dict()), expected)


def test_cli_export_default_out_and_overwrite(base, tmp_path, capsys):
    ckpt, expected = _checkpoint(base, tmp_path / "ckpt")
    out = tmp_path / "ckpt-thudm"  # beside a checkpoint folder not named checkpoint-N
    assert main(["export", str(ckpt), "--format", "thudm"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    before = _snapshot(out)

    assert main(["export", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err == f"ptune export: error: {out}: already exists; pass --overwrite to replace it\n"
    assert _snapshot(out) == before

    (out / "model.safetensors").write_text("old")  # left by an earlier export in the other format
    assert main(["export", str(ckpt), "--overwrite"]) == 0
    assert _files(out) == THUDM_FILES
    after = _snapshot(out)
    assert {k: after[k] for k in TOKENIZER_FILES | {"config.json"}} == {
        k: before[k] for k in TOKENIZER_FILES | {"config.json"}
    }
    _assert_same(torch.load(out / "pytorch_model.bin", weights_only=True), expected)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left


def test_cli_export_refuses_what_is_not_a_prefix_checkpoint(base, tmp_path, capsys):
    assert main(["export", str(base)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model.safetensors or pytorch_model.bin" in err

    stray = tmp_path / "stray"
    stray.mkdir()
    save_file(
        {"transformer.embedding.word_embeddings.weight": torch.zeros(2, 2)}, str(stray / "model.safetensors")
    )
    assert main(["export", str(stray)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a P-Tuning v2 checkpoint" in err
    assert not (tmp_path / "stray-thudm").exists()

    missing = tmp_path / "missing"
    assert main(["export", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_export_refuses_its_own_source_and_stray_tensors(base, tmp_path):
    ckpt, expected = _checkpoint(base, tmp_path / "ckpt")
    with pytest.raises(UserError, match="is or holds the checkpoint"):
        export_checkpoint(ckpt, out=ckpt, overwrite=True)
    state = {PREFIX_KEY + "embedding.weight": expected[PREFIX_KEY + "embedding.weight"]}
    state[PREFIX_KEY + "extra.weight"] = torch.zeros(1)
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(UserError, match=r"unexpected prefix tensors \['extra.weight'\]"):
        export_checkpoint(ckpt)


def test_native_prefix_exports_with_a_warning_and_its_tokenizer(tmp_path):
    llama = make_tiny_checkpoint(tmp_path / "llama", "llama")
    ckpt, expected = _checkpoint(llama, tmp_path / "ckpt", tokenizer=False, pre_seq_len=2, family="native")
    out, warnings = _export(ckpt)
    tokenizer = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    assert _files(out) == {"pytorch_model.bin", "config.json"} | tokenizer
    for name in tokenizer:
        assert (out / name).read_bytes() == (llama / name).read_bytes()
    _assert_same(torch.load(out / "pytorch_model.bin", weights_only=True), expected)
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["pre_seq_len"], config["prefix_projection"]) == ("llama", 2, False)
    assert len(warnings) == 1 and "'llama', not ChatGLM2/3" in warnings[0]
    model = load_model(llama, dtype="float32", device="cpu", ptuning_checkpoint=out)
    _assert_same(dict(model.trainable_state_dict()), expected)
