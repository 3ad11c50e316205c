"""PEFT adapters through the CLI: a native prefix trained by `ptune train` records PEFT's position convention,
`ptune export --format peft` writes an adapter PEFT loads with ptune's logits, and that adapter is a
`--ptuning_checkpoint` for predict (same predictions) and for a new training run; what PEFT cannot reproduce
is refused in one line."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from test_prefix_base import predict_argv
from test_safety import refused, train_argv

from ptune.cli import main
from ptune.model.load import load_model
from ptune.train.checkpoint import write_prefix_files
from tools.tiny import make_tiny_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # PEFT's call


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("llama") / "llama", "llama")


@pytest.fixture(scope="module")
def run(llama, hf_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("peft-run") / "run"
    assert main(train_argv(llama, out, steps=2)) == 0
    return out


def test_export_peft_predict_and_train_from_the_adapter(run, llama, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    checkpoint = run / "checkpoint-2"
    assert json.loads((checkpoint / "prefix_config.json").read_text())["positions"] == "after_prefix"
    adapter = tmp_path / "adapter"
    assert main(["export", str(checkpoint), "--format", "peft", "--out", str(adapter)]) == 0
    assert capsys.readouterr().out.strip() == str(adapter)

    ids = torch.tensor([[5, 17, 30, 44, 9, 80, 3, 61]])
    with warnings.catch_warnings():  # PEFT's own deprecation notices about transformers 5.24
        warnings.simplefilter("ignore")
        peft = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(llama, dtype=torch.float32), adapter
        )
    with torch.no_grad():
        theirs = peft.eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        ours = load_model(llama, dtype="float32", device="cpu", ptuning_checkpoint=checkpoint)(ids).logits
    assert torch.allclose(theirs, ours, atol=1e-5)

    assert main(predict_argv(tmp_path / "p1", "--ptuning_checkpoint", str(checkpoint))) == 0
    assert main(predict_argv(tmp_path / "p2", "--ptuning_checkpoint", str(adapter))) == 0  # the base it names
    first, second = (tmp_path / p / "generated_predictions.txt" for p in ("p1", "p2"))
    assert first.read_text() == second.read_text() and len(first.read_text().splitlines()) == 4

    again = tmp_path / "again"
    assert main(train_argv(llama, again, "--ptuning_checkpoint", str(adapter), steps=2)) == 0
    record = json.loads((again / "prefix_config.json").read_text())
    assert (record["positions"], record["pre_seq_len"]) == ("after_prefix", 4)


def test_what_peft_cannot_load_is_refused_in_one_line(tiny, llama, tmp_path, capsys):
    glm = load_model(tiny, dtype="float32", device="cpu", pre_seq_len=2)
    (tmp_path / "glm").mkdir()
    write_prefix_files(glm, tmp_path / "glm", [])
    refused(
        ["export", str(tmp_path / "glm"), "--format", "peft"],
        capsys,
        "cannot export for PEFT",
        "ChatGLM-format base",
        "--format thudm",
    )
    assert not (tmp_path / "glm-peft").exists()

    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    argv = predict_argv(tmp_path / "p", "--model_name_or_path", str(llama), "--ptuning_checkpoint", str(lora))
    refused(argv, capsys, str(lora / "adapter_config.json"), "ptune loads prefix-tuning adapters only")
    assert not (tmp_path / "p").exists()


def test_a_run_recorded_before_positions_resumes_from_zero(run, llama, tmp_path):
    """A native run whose checkpoint has no "positions" (trained before the field existed, so from_zero) goes on
    training from_zero when resumed, not with the after_prefix a fresh native prefix now gets."""
    out = Path(shutil.copytree(run, tmp_path / "run"))
    record = json.loads((out / "checkpoint-2" / "prefix_config.json").read_text())
    del record["positions"]
    (out / "checkpoint-2" / "prefix_config.json").write_text(json.dumps(record))
    argv = train_argv(llama, out, "--resume_from_checkpoint", str(out / "checkpoint-2"), steps=4)
    assert main(argv) == 0
    assert json.loads((out / "checkpoint-4" / "prefix_config.json").read_text())["positions"] == "from_zero"
