"""A prefix is used only with the base it was trained on, and names that base so it suffices alone.

prefix_config.json records the family, model_type and folder of the base: ChatGLM2 and ChatGLM3 prefixes have
the same shape, so only that record tells them apart. Native models load strictly (transformers would fill a
missing weight with random values and exit 0).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from test_safety import refused, snapshot, train_argv

from ptune.cli import main
from tools.tiny import make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
DEV = REPO / "data" / "demo" / "dev.json"


def predict_argv(out: Path, *extra: str) -> list[str]:
    return [
        "predict",
        "--output_dir",
        str(out),
        "--test_file",
        str(DEV),
        "--max_predict_samples",
        "4",
        "--prompt_column",
        "content",
        "--response_column",
        "summary",
        "--max_source_length",
        "32",
        "--max_new_tokens",
        "4",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        *extra,
    ]


@pytest.fixture(scope="module")
def run(tiny, hf_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prefix-run") / "run"
    assert main(train_argv(tiny, out, steps=2)) == 0
    return out


@pytest.fixture(scope="module")
def projection_run(tiny, hf_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("projection-run") / "run"
    assert main(train_argv(tiny, out, "--prefix_projection", "true", steps=2)) == 0
    return out


def test_a_chatglm3_prefix_on_a_chatglm2_base_is_refused(run, tmp_path, capsys):
    chatglm2 = make_tiny_checkpoint(tmp_path / "chatglm2", "chatglm2")  # same shapes as the tiny ChatGLM3
    line = refused(
        predict_argv(tmp_path / "p", "--model_name_or_path", str(chatglm2), "--ptuning_checkpoint", str(run)),
        capsys,
        "this prefix was trained on a chatglm3 base",
        "is family chatglm2",
    )
    assert str(run / "prefix_config.json") in line
    assert not (tmp_path / "p").exists()


def test_prefix_projection_false_against_a_projection_checkpoint_is_refused(
    projection_run, tiny, tmp_path, capsys
):
    argv = predict_argv(
        tmp_path / "p",
        "--model_name_or_path",
        str(tiny),
        "--ptuning_checkpoint",
        str(projection_run),
        "--prefix_projection",
        "false",
    )
    refused(argv, capsys, "the checkpoint has a prefix projection, but --prefix_projection false was given")


def test_ptuning_checkpoint_alone_is_enough(run, tiny, tmp_path, capsys):
    """eval / predict / chat / export read the base folder from prefix_config.json."""
    assert main(predict_argv(tmp_path / "p", "--ptuning_checkpoint", str(run))) == 0
    assert len((tmp_path / "p" / "generated_predictions.txt").read_text().splitlines()) == 4
    eval_argv = [
        "eval",
        "--ptuning_checkpoint",
        str(run),
        "--output_dir",
        str(tmp_path / "e"),
        "--validation_file",
        str(DEV),
        "--max_eval_samples",
        "4",
        "--prompt_column",
        "content",
        "--response_column",
        "summary",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
    ]
    assert main(eval_argv) == 0
    assert json.loads((tmp_path / "e" / "eval_results.json").read_text())["eval_samples"] == 4
    import io
    import sys

    stdin, sys.stdin = sys.stdin, io.StringIO("exit\n")
    try:
        assert main(["chat", "--ptuning_checkpoint", str(run), "--device", "cpu"]) == 0
    finally:
        sys.stdin = stdin
    assert "chatglm3 model + a 4-token prefix" in capsys.readouterr().out


def test_ptuning_checkpoint_naming_a_missing_base_says_so(run, tmp_path, capsys):
    moved = Path(shutil.copytree(run / "checkpoint-2", tmp_path / "ckpt"))
    config = json.loads((moved / "prefix_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "prefix_config.json").write_text(json.dumps(config))
    refused(
        predict_argv(tmp_path / "p", "--ptuning_checkpoint", str(moved)),
        capsys,
        f"trained on {tmp_path / 'gone'}, which is not a folder here; pass --model_name_or_path",
    )


def test_checkpoints_copy_the_tokenizer_of_tokenizer_name(tiny, hf_cache, tmp_path):
    tok = Path(shutil.copytree(tiny, tmp_path / "tok"))
    for weights in tok.glob("pytorch_model*"):
        weights.unlink()
    config = json.loads((tok / "tokenizer_config.json").read_text())
    (tok / "tokenizer_config.json").write_text(json.dumps({**config, "marker": "from --tokenizer_name"}))
    out = tmp_path / "run"
    assert main(train_argv(tiny, out, "--tokenizer_name", str(tok), steps=2)) == 0
    for folder in (out, out / "checkpoint-2"):
        assert (folder / "tokenizer_config.json").read_bytes() == (tok / "tokenizer_config.json").read_bytes()


# ------------------------------------------------------------------------------ strict native loading
@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("llama") / "llama", "llama")


def test_a_native_model_missing_a_weight_is_refused(llama, tmp_path, capsys):
    damaged = Path(shutil.copytree(llama, tmp_path / "damaged"))
    weights = load_file(str(damaged / "model.safetensors"))
    name = next(k for k in sorted(weights) if "layers.1.mlp" in k)
    del weights[name]
    save_file(weights, str(damaged / "model.safetensors"), metadata={"format": "pt"})
    before = snapshot(damaged)
    argv = predict_argv(
        tmp_path / "p", "--model_name_or_path", str(damaged), "--pre_seq_len", "4", "--random_prefix", "true"
    )
    refused(
        argv, capsys, "the weights do not match config.json (model_type 'llama')", "lacks 1 weights", name
    )
    assert snapshot(damaged) == before


def test_chatglm_files_with_model_type_changed_to_llama_are_refused(tiny, llama, tmp_path, capsys):
    edited = Path(shutil.copytree(tiny, tmp_path / "edited"))
    config = json.loads((llama / "config.json").read_text())  # a valid llama config over chatglm weights
    (edited / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (llama / name).is_file():
            shutil.copyfile(llama / name, edited / name)
    argv = predict_argv(
        tmp_path / "p", "--model_name_or_path", str(edited), "--pre_seq_len", "4", "--random_prefix", "true"
    )
    line = refused(argv, capsys)
    assert "do not match config.json" in line or "cannot load" in line, line


def test_a_truncated_native_shard_is_one_line(llama, tmp_path, capsys):
    damaged = Path(shutil.copytree(llama, tmp_path / "truncated"))
    data = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(data[: len(data) // 3])
    argv = predict_argv(
        tmp_path / "p", "--model_name_or_path", str(damaged), "--pre_seq_len", "4", "--random_prefix", "true"
    )
    refused(argv, capsys, str(damaged / "model.safetensors"), "truncated")


@pytest.mark.parametrize("verb", ["predict", "eval"])
def test_pre_seq_len_without_a_checkpoint_is_refused_unless_random_prefix(tiny, tmp_path, capsys, verb):
    """--pre_seq_len without --ptuning_checkpoint used to warn, then write the answers of a random prefix and exit
    0 (a forgotten checkpoint looked like a result): refused, unless --random_prefix true asks for it."""
    argv = predict_argv(tmp_path / "p", "--model_name_or_path", str(tiny), "--pre_seq_len", "4")
    if verb == "eval":
        argv = [
            a.replace("--test_file", "--validation_file").replace(
                "--max_predict_samples", "--max_eval_samples"
            )
            for a in argv
        ]
        argv[0] = "eval"
    refused(
        argv,
        capsys,
        f"--pre_seq_len 4 without --ptuning_checkpoint would {verb} with an untrained, random "
        "prefix: give the trained prefix as --ptuning_checkpoint (or ask for a random one with --random_prefix "
        "true)",
    )
    assert not (tmp_path / "p").exists()
    if verb == "predict":
        assert main([*argv, "--random_prefix", "true"]) == 0
        assert len((tmp_path / "p" / "generated_predictions.txt").read_text().splitlines()) == 4
        refused(
            [*argv, "--random_prefix", "true", "--ptuning_checkpoint", str(tmp_path)],
            capsys,
            "--random_prefix true runs an untrained prefix of --pre_seq_len tokens: it needs --pre_seq_len "
            "and no --ptuning_checkpoint",
        )


def fingerprint_warnings(caplog, base: Path, checkpoint: Path, **loading) -> list[str]:
    """The warnings that loading `checkpoint` on `base` logs, through predict's loader and serve's."""
    from ptune.model.load import load_model
    from ptune.serve.cli import load

    caplog.clear()
    with caplog.at_level("WARNING", logger="ptune"):
        load_model(base, ptuning_checkpoint=checkpoint, device="cpu", **loading)
        load(str(base), {"p": str(checkpoint)})
    return [r.getMessage() for r in caplog.records if "is a different model" in r.getMessage()]


def test_a_prefix_on_another_base_of_the_same_shape_warns_naming_both(run, tiny, tmp_path, caplog):
    """prefix_config.json records the base's fingerprint (config.json content + embedding signs): a moved copy of
    the base, or the base loaded as bfloat16, is the same model (no warning); another ChatGLM3 of the same shape
    warns, naming the folder recorded and the one given; a prefix without a fingerprint (older) loads silently."""
    recorded = json.loads((run / "prefix_config.json").read_text())
    assert recorded["base_fingerprint"].startswith("sha256:") and len(recorded["base_fingerprint"]) == 71
    moved = Path(shutil.copytree(tiny, tmp_path / "moved"))
    assert fingerprint_warnings(caplog, moved, run) == []
    assert fingerprint_warnings(caplog, tiny, run, dtype="bfloat16") == []
    other = make_tiny_checkpoint(tmp_path / "other", "chatglm3", seed=1)  # same family, shapes and tokenizer
    warning = (
        f"{run / 'prefix_config.json'}: this prefix was trained on the base {Path(tiny).resolve()}, but "
        f"{other.resolve()} is a different model (its config.json or weights differ); a prefix only works "
        "with the base it was trained on"
    )
    assert fingerprint_warnings(caplog, other, run) == [warning, warning]
    older = Path(shutil.copytree(run / "checkpoint-2", tmp_path / "older"))
    config = json.loads((older / "prefix_config.json").read_text())
    del config["base_fingerprint"]
    (older / "prefix_config.json").write_text(json.dumps(config))
    assert fingerprint_warnings(caplog, other, older) == []
