"""PEFT prefix-tuning adapters out (`ptune export --format peft`) and in (`--ptuning_checkpoint ADAPTER`), and the
position convention on record (prefix_config.json "positions"): a native prefix trains with PEFT's positions
(after the P prefix slots), so PEFT computes ptune's logits; ChatGLM's prefixes and every older record number
the real tokens from 0. Tiny Llama with GQA (4 query heads, 2 key/value heads, head_dim 16), fp32."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from peft import PeftModel, PrefixTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from ptune.infer.generate import GenerationSettings, generate
from ptune.io.errors import UserError
from ptune.model.export import export_checkpoint
from ptune.model.load import load_model
from ptune.train.checkpoint import write_prefix_files
from tools.tiny import make_tiny_checkpoint

# PEFT 0.21.2 passes the prefix as `past_key_values`, which transformers 5.24 deprecates (for `cache`); ptune's
# own calls stay under the suite's error::FutureWarning.
pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")

IDS = [[5, 17, 30, 44, 9, 80, 3, 61], [12, 60, 7, 99, 41, 8, 20, 33]]
ATOL = 1e-5  # fp32; the measured distance is 0.0 here, the tolerance keeps it independent of the CPU kernel


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The tiny Llama with its matrices scaled to std ~0.2: at transformers' init (0.02) attention is nearly
    uniform and a wrong position barely moves a logit."""
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llama", "llama")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.mul_(10.0)
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # a GQA model
    return folder


def _ptune_prefix(base, folder, projection=False, pre_seq_len=3, seed=0):
    """A trained-looking ptune prefix (rows normal(0, 1): large enough for position mistakes to show)."""
    torch.manual_seed(seed)
    model = load_model(
        base, dtype="float32", device="cpu", pre_seq_len=pre_seq_len, prefix_projection=projection
    )
    model.source.family = "native"
    with torch.no_grad():
        model.prefix_encoder.embedding.weight.normal_(0.0, 1.0)
    folder.mkdir(parents=True)
    write_prefix_files(model, folder, [])
    return folder, model.eval()


def _peft(base, adapter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        return PeftModel.from_pretrained(model, adapter).eval()


@torch.no_grad()
def _logits(model, ids):
    ids = torch.tensor(ids)
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_new_prefixes_record_their_positions(llama, tmp_path, tiny):
    folder, model = _ptune_prefix(llama, tmp_path / "native")
    assert json.loads((folder / "prefix_config.json").read_text())["positions"] == "after_prefix"
    assert model.positions(None, 4, "cpu").tolist() == [[3, 4, 5, 6]]
    glm = load_model(tiny, dtype="float32", device="cpu", pre_seq_len=2)
    (tmp_path / "glm").mkdir()
    write_prefix_files(glm, tmp_path / "glm", [])
    assert json.loads((tmp_path / "glm" / "prefix_config.json").read_text())["positions"] == "from_zero"
    assert glm.positions(torch.tensor([[0, 1, 1]]), 3, "cpu").tolist() == [[0, 0, 1]]


def test_a_record_without_positions_is_from_zero_and_computes_other_logits(llama, tmp_path):
    folder, model = _ptune_prefix(llama, tmp_path / "ckpt")
    record = json.loads((folder / "prefix_config.json").read_text())
    del record["positions"]  # as every prefix_config.json written before the field existed
    (folder / "prefix_config.json").write_text(json.dumps(record))
    old = load_model(llama, dtype="float32", device="cpu", ptuning_checkpoint=folder)
    assert old.prefix_encoder.config.positions == "from_zero"
    assert old.positions(torch.tensor([[0, 1, 1]]), 3, "cpu").tolist() == [[0, 0, 1]]
    with torch.no_grad():
        shifted = model(torch.tensor(IDS), position_ids=torch.arange(8).expand(2, -1)).logits
    assert torch.allclose(_logits(old, IDS), shifted, atol=ATOL)  # from_zero = explicit 0-based positions
    assert (_logits(old, IDS) - _logits(model, IDS)).abs().max() > 1e-3  # and the convention matters
    record["positions"] = "sideways"
    (folder / "prefix_config.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r'prefix_config.json: "positions" must be'):
        load_model(llama, dtype="float32", device="cpu", ptuning_checkpoint=folder)


@pytest.mark.parametrize("projection", [False, True])
def test_export_peft_gives_ptune_logits_in_peft(llama, tmp_path, projection):
    folder, model = _ptune_prefix(llama, tmp_path / "ckpt", projection=projection)
    out = export_checkpoint(folder, "peft", tmp_path / "adapter", warn=pytest.fail)
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    config = json.loads((out / "adapter_config.json").read_text())
    assert {k: config[k] for k in ("peft_type", "task_type", "num_virtual_tokens", "num_layers")} == {
        "peft_type": "PREFIX_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": 3,
        "num_layers": 2,
    }
    # PEFT's GQA layout: the key/value heads (2 of 4) x head_dim 16
    assert (config["num_attention_heads"], config["token_dim"]) == (2, 32)
    assert (config["prefix_projection"], config["encoder_hidden_size"]) == (
        projection,
        64 if projection else 32,
    )
    assert config["base_model_name_or_path"] == str(llama.resolve())
    peft = _peft(llama, out)
    assert torch.allclose(_logits(peft, IDS), _logits(model, IDS), atol=ATOL)
    # a left-padded row in ptune gives the numbers PEFT gives that row alone
    ids = torch.tensor([[0, 0, 0, *IDS[0][:5]], IDS[1]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits
    assert torch.allclose(padded[0, 3:], _logits(peft, [IDS[0][:5]])[0], atol=ATOL)


def test_ptune_generation_follows_peft_greedily(llama, tmp_path):
    """Greedy tokens of `ptune.infer.generate` on a left-padded batch = argmax steps of PEFT's forward on each row
    alone (PEFT's own `generate` is not the reference: with peft 0.21.2 on transformers 5.24 it does not put
    the prefix into the cache, since the decoder takes it as `cache` now)."""
    folder, model = _ptune_prefix(llama, tmp_path / "ckpt")
    peft = _peft(llama, export_checkpoint(folder, "peft", tmp_path / "adapter", warn=pytest.fail))
    prompts = [IDS[0][:3], IDS[1]]
    ids = torch.tensor([[0] * 5 + prompts[0], prompts[1]])
    mask = (torch.arange(8) >= torch.tensor([[5], [0]])).long()
    ours = generate(model, ids, mask, [-1], 0, GenerationSettings(max_new_tokens=5))  # no stop id
    for row, prompt in enumerate(prompts):
        seq = list(prompt)
        for _ in range(5):
            seq.append(int(_logits(peft, [seq])[0, -1].argmax()))
        assert ours[row].tolist() == seq[len(prompt) :]


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("safe", [True, False])
def test_peft_saved_adapter_loads_as_a_ptune_prefix(llama, tmp_path, projection, safe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_pretrained(llama, dtype=torch.float32)
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=projection)
        peft = get_peft_model(base, config)
        torch.manual_seed(1)
        with torch.no_grad():
            for p in peft.prompt_encoder["default"].parameters():
                p.normal_(0.0, 1.0)
        peft.save_pretrained(tmp_path / "adapter", safe_serialization=safe)
    peft.eval()
    model = load_model(llama, dtype="float32", device="cpu", ptuning_checkpoint=tmp_path / "adapter")
    assert model.prefix_encoder.config.positions == "after_prefix" and model.pre_seq_len == 4
    assert torch.allclose(_logits(model, IDS), _logits(peft, IDS), atol=ATOL)
    # and back out: ptune export of the PEFT adapter is that adapter again
    out = export_checkpoint(tmp_path / "adapter", "peft", tmp_path / "again", warn=lambda m: None)
    assert torch.allclose(_logits(_peft(llama, out), IDS), _logits(peft, IDS), atol=ATOL)


def test_what_peft_cannot_reproduce_is_refused_in_one_line(llama, tiny, tmp_path):
    glm = load_model(tiny, dtype="float32", device="cpu", pre_seq_len=2)
    (tmp_path / "glm").mkdir()
    write_prefix_files(glm, tmp_path / "glm", [])
    with pytest.raises(UserError, match=r"ChatGLM-format base .* --format thudm$") as error:
        export_checkpoint(tmp_path / "glm", "peft", tmp_path / "out1")
    folder, _ = _ptune_prefix(llama, tmp_path / "old")
    record = json.loads((folder / "prefix_config.json").read_text())
    (folder / "prefix_config.json").write_text(json.dumps({**record, "positions": "from_zero"}))
    with pytest.raises(UserError, match=r'"positions": "from_zero".* --format thudm$') as error:
        export_checkpoint(folder, "peft", tmp_path / "out2")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_other_peft_adapters_and_mismatched_bases_are_refused(llama, tiny, tmp_path):
    folder, _ = _ptune_prefix(llama, tmp_path / "ckpt")
    adapter = export_checkpoint(folder, "peft", tmp_path / "adapter", warn=pytest.fail)
    lora = tmp_path / "lora"
    shutil.copytree(adapter, lora)
    config = json.loads((lora / "adapter_config.json").read_text())
    (lora / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"}))
    with pytest.raises(UserError, match=r"a PEFT LORA adapter; ptune loads prefix-tuning adapters only"):
        load_model(llama, dtype="float32", device="cpu", ptuning_checkpoint=lora)
    with pytest.raises(UserError, match=r"native transformers bases only"):
        load_model(tiny, dtype="float32", device="cpu", ptuning_checkpoint=adapter)
    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    fake_base = tmp_path / "qwen"
    fake_base.mkdir()
    (fake_base / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (other / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": str(fake_base)})
    )
    with pytest.raises(UserError, match=r"trained on a qwen2 base .* is model_type llama"):
        load_model(llama, dtype="float32", device="cpu", ptuning_checkpoint=other)
    # 4 layers x 16 dims has the width of 2 layers x 32: the recorded layer count tells them apart
    from safetensors.torch import load_file, save_file

    rows = load_file(adapter / "adapter_model.safetensors")
    save_file(rows, str(other / "adapter_model.safetensors"))
    (other / "adapter_config.json").write_text(
        json.dumps({**config, "num_layers": 4, "token_dim": 16, "num_attention_heads": 1})
    )
    with pytest.raises(UserError, match=r"a prefix for 4 layers, but .* has 2"):
        load_model(llama, dtype="float32", device="cpu", ptuning_checkpoint=other)
    (other / "adapter_config.json").write_text(json.dumps({**config, "num_virtual_tokens": 5}))
    with pytest.raises(UserError, match=r"prompt_embeddings has shape \[3, 128\], but adapter_config.json"):
        load_model(llama, dtype="float32", device="cpu", ptuning_checkpoint=other)


def test_serve_engine_numbers_each_row_by_its_prefix(llama, tmp_path):
    """One batch, four rows: an after_prefix prefix, the same exported as a PEFT adapter, a from_zero one (an
    older record) and none; each row's greedy answer is `generate`'s for its prompt alone."""
    from ptune.serve.cli import load
    from ptune.serve.engine import Engine
    from ptune.serve.scheduler import Job, Scheduler

    new, _ = _ptune_prefix(llama, tmp_path / "new", pre_seq_len=3, seed=1)
    old, _ = _ptune_prefix(llama, tmp_path / "old", pre_seq_len=5, seed=2)
    record = json.loads((old / "prefix_config.json").read_text())
    del record["positions"]
    (old / "prefix_config.json").write_text(json.dumps(record))
    adapter = export_checkpoint(new, "peft", tmp_path / "adapter", warn=pytest.fail)
    paths = {"new": new, "old": old, "peft": adapter}
    tok, model, encoders = load(
        str(llama), {k: str(v) for k, v in paths.items()}, dtype="float32", device="cpu"
    )
    engine = Engine(model, encoders, tok.pad_token_id)
    assert [engine.first_position(name) for name in ("new", "old", "peft", None)] == [3, 0, 3, 0]
    prompts = {"new": IDS[0][:3], "old": IDS[1], None: IDS[0][2:7], "peft": IDS[1][1:6]}
    alone = {
        name: load_model(llama, dtype="float32", device="cpu", ptuning_checkpoint=paths.get(name))
        for name in prompts
    }
    _, first = engine.prefill(list(prompts.values()), list(prompts))  # one left-padded batch
    for row, (name, prompt) in enumerate(prompts.items()):
        assert torch.allclose(first[row], _logits(alone[name], [prompt])[0, -1], atol=ATOL), name
    scheduler = Scheduler(engine, tok, tok.stop_token_ids, max_batch=4)
    done = {}
    for name, prompt in prompts.items():
        sink = lambda event, name=name: done.setdefault(name, event) if event.kind == "done" else None  # noqa: E731
        assert scheduler.submit(
            Job(prompt, name, 6, GenerationSettings.from_openai(temperature=0.0), (), sink)
        )
    while scheduler.rows or scheduler.waiting:
        scheduler.step()
    settings = GenerationSettings(max_new_tokens=6)
    for name, prompt in prompts.items():
        ids, mask = torch.tensor([prompt]), torch.ones(1, len(prompt))
        want = generate(alone[name], ids, mask, tok.stop_token_ids, 0, settings)
        assert list(done[name].ids) == want[0].tolist(), name


def test_a_qwen2_prefix_round_trips_through_peft(tmp_path):
    """Another GQA decoder, built from its transformers config (QKV bias; no head_dim field: hidden / heads)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    base = tmp_path / "qwen2"
    Qwen2ForCausalLM(config).save_pretrained(base)
    folder, model = _ptune_prefix(base, tmp_path / "ckpt", pre_seq_len=5)
    assert (model.prefix_encoder.config.num_kv_heads, model.prefix_encoder.config.head_dim) == (2, 8)
    out = export_checkpoint(folder, "peft", tmp_path / "adapter", warn=lambda m: None)  # no tokenizer files
    saved = json.loads((out / "adapter_config.json").read_text())
    assert (saved["num_attention_heads"], saved["token_dim"]) == (2, 16)
    ids = [[5, 17, 30, 44, 9, 80, 3, 61]]
    assert torch.allclose(_logits(_peft(base, out), ids), _logits(model, ids), atol=ATOL)
    back = load_model(base, dtype="float32", device="cpu", ptuning_checkpoint=out)
    assert torch.allclose(_logits(back, ids), _logits(model, ids), atol=ATOL)
