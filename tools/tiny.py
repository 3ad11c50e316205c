"""Tiny checkpoints in the exact real format of each family, made deterministically from a seed.

No real weights can be downloaded here, so tests and the demo use folders that look exactly like the real
ones — same file names, key names, config fields, tokenizer files — only small:
- chatglm2 / chatglm3: config.json (every field of the real one), `pytorch_model-0000N-of-0000M.bin` shards
  + `pytorch_model.bin.index.json`, a SentencePiece `tokenizer.model` with the special tokens appended after
  its vocabulary, tokenizer_config.json;
- glm4: the same with `model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`, a tiktoken ranks
  `tokenizer.model`, GLM-4's tokenizer_config.json (specials renumbered) and generation_config.json;
- llama: a native transformers folder (`save_pretrained`) with a small BPE tokenizer and a chat template.
Usage: `python -m scripts.make_tiny OUT --family chatglm3` or `make_tiny_checkpoint(out, "chatglm3")`.
The demo's base (`make_demo_base`, `python -m scripts.make_demo_base`) is the chatglm3 one, briefly pretrained.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch

from ptune.bench.workload import chatglm_config
from ptune.model.convert import LAYER_MAP, TOP_MAP
from tools.tiny_tokenizers import CORPUS_PATH

FAMILIES = ("chatglm2", "chatglm3", "glm4", "llama")

# Small but with every structural feature of the real models: GQA (4 heads, 2 KV groups), head_dim 16
# independent of hidden/heads, SwiGLU, QKV bias.
TINY_DIMS = {
    "num_layers": 2,
    "hidden_size": 64,
    "ffn_hidden_size": 96,
    "kv_channels": 16,
    "num_attention_heads": 4,
}


def to_chatglm_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `ptune.model.convert.convert_tensor`: Glm weights back to the original key names (q/k/v
    fused again).

    Used by the tiny-checkpoint maker to write a briefly pretrained demo model in the original format."""
    top = {v: k for k, v in TOP_MAP.items()}
    layer = {v: k for k, v in LAYER_MAP.items()}
    out = {}
    for name, tensor in state.items():
        if name in top:
            out[top[name]] = tensor
            continue
        m = re.match(r"^model\.layers\.(\d+)\.(.+)$", name)
        if not m:
            raise KeyError(name)
        idx, rest = m.groups()
        prefix = f"transformer.encoder.layers.{idx}."
        if rest in layer:
            out[prefix + layer[rest]] = tensor
        elif rest.startswith("self_attn.q_proj."):
            kind = rest.rsplit(".", 1)[1]
            parts = [state[f"model.layers.{idx}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{prefix}self_attention.query_key_value.{kind}"] = torch.cat(parts, dim=0)
        elif not rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            raise KeyError(name)
    return out


def random_chatglm_weights(cfg: dict, seed: int, std: float = 0.02) -> dict[str, torch.Tensor]:
    """Original-format weights (THUDM key names and shapes), normal(0, std) matrices, norm weights near 1.

    Tests use a larger `std` (0.2): at 0.02 attention is nearly uniform and mapping mistakes barely show."""
    g = torch.Generator().manual_seed(seed)
    h, hn, heads, groups = (
        cfg["hidden_size"],
        cfg["kv_channels"],
        cfg["num_attention_heads"],
        cfg["multi_query_group_num"],
    )
    qkv = heads * hn + 2 * groups * hn

    def normal(*shape, std=std):
        return torch.randn(*shape, generator=g) * std

    def norm_weight():
        return 1.0 + normal(h, std=0.1)

    sd = {"transformer.embedding.word_embeddings.weight": normal(cfg["padded_vocab_size"], h)}
    sd["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (
        10000 ** (torch.arange(0, hn // 2, 2).float() / (hn // 2))
    )
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm_weight()
        sd[p + "self_attention.query_key_value.weight"] = normal(qkv, h)
        sd[p + "self_attention.query_key_value.bias"] = normal(qkv)
        sd[p + "self_attention.dense.weight"] = normal(h, heads * hn)
        sd[p + "post_attention_layernorm.weight"] = norm_weight()
        sd[p + "mlp.dense_h_to_4h.weight"] = normal(2 * cfg["ffn_hidden_size"], h)
        sd[p + "mlp.dense_4h_to_h.weight"] = normal(h, cfg["ffn_hidden_size"])
    sd["transformer.encoder.final_layernorm.weight"] = norm_weight()
    sd["transformer.output_layer.weight"] = normal(cfg["padded_vocab_size"], h)
    return sd


def _shards(names: list[str], num_layers: int) -> list[list[str]]:
    """Split like the real index: embeddings with the first layers, the final norm and head in the last shard."""
    first = [
        n for n in names if ".layers." not in n and "output_layer" not in n and "final_layernorm" not in n
    ]
    layers = [[n for n in names if f".layers.{i}." in n] for i in range(num_layers)]
    last = [n for n in names if "output_layer" in n or "final_layernorm" in n]
    return (
        [first + layers[0], *layers[1:-1], layers[-1] + last]
        if num_layers > 1
        else [first + layers[0] + last]
    )


def write_sharded(
    folder: Path, state: dict[str, torch.Tensor], num_layers: int, safetensors: bool, dtype
) -> None:
    """Write `state` as real-style shards plus the index file that lists every weight name."""
    from safetensors.torch import save_file

    groups = _shards(list(state), num_layers)
    n = len(groups)
    stem, ext = ("model", "safetensors") if safetensors else ("pytorch_model", "bin")
    weight_map, total = {}, 0
    for i, names in enumerate(groups, start=1):
        fname = f"{stem}-{i:05d}-of-{n:05d}.{ext}"
        part = {k: state[k].to(dtype).contiguous() for k in names}
        if safetensors:
            save_file(part, str(folder / fname), metadata={"format": "pt"})
        else:
            torch.save(part, folder / fname)
        for k, t in part.items():
            weight_map[k] = fname
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _pad_vocab(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# A pretraining batch: (token ids, index of the last unsupervised token) per row; the loss is on what follows.
Batch = list[tuple[list[int], int]]


def _pretrain(
    folder: Path,
    draw: Callable[[torch.Generator], Batch],
    steps: int,
    seed: int,
    log: Callable[[str], None] | None = None,
) -> None:
    """Train every weight of the chatglm-format model in `folder` (AdamW, lr 3e-3 decaying linearly to 0, so
    the weights settle rather than stop mid-stride) for `steps` batches from
    `draw` (given a generator seeded with `seed`), then rewrite its shards in place, still in the original
    format. `log` gets a progress line every 100 steps."""
    from ptune.families.glm4 import is_glm4_checkpoint
    from ptune.io.files import read_json
    from ptune.model.load import answer_loss, load_model

    torch.manual_seed(seed)
    model = load_model(folder, dtype="float32", device="cpu").base
    model.requires_grad_(True).train()
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda done: 1 - done / steps)
    g = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        batch = draw(g)
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([row + [0] * (width - len(row)) for row, _ in batch])  # right padding: causal
        labels = torch.full_like(ids, -100)
        for i, (row, start) in enumerate(batch):
            labels[i, start + 1 : len(row)] = ids[i, start + 1 : len(row)]
        loss = answer_loss(head, decoder(input_ids=ids).last_hidden_state, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if log and step % 100 == 0:
            log(f"  pretraining step {step}/{steps}: loss {loss.item():.3f}")
    cfg = read_json(folder / "config.json")
    state = to_chatglm_state_dict({k: v.detach() for k, v in model.state_dict().items()})
    for old in list(folder.glob("pytorch_model*")) + list(folder.glob("model-*.safetensors")):
        old.unlink()
    glm4 = is_glm4_checkpoint(cfg)  # GLM-4 ships safetensors shards, ChatGLM2/3 .bin shards
    write_sharded(folder, state, cfg["num_layers"], glm4, torch.bfloat16 if glm4 else torch.float16)


def pretrain_tiny(folder: Path, texts: list[str], steps: int, seed: int = 0) -> None:
    """Teach a tiny chatglm-format model the language of `texts`: next-token prediction over every token of
    `[gMASK] sop text eos`, 32 random texts a step (`python -m scripts.make_tiny --pretrain FILE`)."""
    from ptune.families.registry import load_tokenizer

    tok = load_tokenizer(folder)
    head = [tok.special_ids["[gMASK]"], tok.special_ids["sop"]]
    rows = [[*head, *tok.encode(t), tok.eos_token_id] for t in texts]
    _pretrain(
        folder, lambda g: [(rows[i], 0) for i in torch.randint(len(rows), (32,), generator=g)], steps, seed
    )


# The demo base describes the listed item only on pages that start with this cue.
DEMO_CUE = "描述："
# The share of cued pages. Copying the listed item is what the 2-layer model learns last (a sudden drop of the
# loss, whose step depends on the seed and so on float rounding). At a share of 1/2, 400 steps left the base of
# seed 1 without it (6 of the 40 dev rows right with the cue), 800 taught seeds 1 and 2; at 3/4, 500 steps taught
# both (40/40), with the demo's 600 steps for margin. The uncued quarter teaches that without the cue any item
# may follow. (Pretraining on the chat format itself made that habit so firm that no prefix undid it: ROUGE-L
# stuck near 55.)
DEMO_CUED_SHARE = 0.75


def demo_batches(tok, rows: list[dict]) -> Callable[[torch.Generator], Batch]:
    """The demo base's pretraining text, drawn from the demo's (content, summary) rows: "product pages"
    `[gMASK] sop [描述：] content \\n description eos`, 32 a step. 3 in 4 pages (DEMO_CUED_SHARE) start
    with the cue 描述： and describe their own item; the others describe an item drawn at random, anew every
    time, so without the cue the attributes tell nothing about the description. The loss is on the newline
    and description."""
    head = [tok.special_ids["[gMASK]"], tok.special_ids["sop"]]
    cue, newline = tok.encode(DEMO_CUE), tok.encode("\n")
    contents = [tok.encode(row["content"]) for row in rows]
    descriptions = [tok.encode(row["summary"]) + [tok.eos_token_id] for row in rows]

    def draw(g: torch.Generator) -> Batch:
        batch = []
        items, others = torch.randint(len(rows), (2, 32), generator=g).tolist()
        for i, other, cued in zip(items, others, torch.rand(32, generator=g) < DEMO_CUED_SHARE, strict=True):
            page = [*head, *(cue if cued else []), *contents[i]]
            # Supervised from the newline on: a chat answer starts with one too, after the role token.
            batch.append((page + newline + descriptions[i if cued else other], len(page) - 1))
        return batch

    return draw


def make_demo_base(
    out_dir: str | Path,
    rows: list[dict],
    steps: int = 600,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The demo's base model: a tiny ChatGLM3 checkpoint (`make_tiny_checkpoint`) pretrained `steps` steps on
    `demo_batches(rows)`. It learns the words and to describe the listed item after 描述：, some other item
    otherwise. The demo's chat prompts carry no cue, so before P-tuning it describes some other item: the
    prefix has to learn to do what the cue did."""
    from ptune.families.registry import load_tokenizer

    folder = make_tiny_checkpoint(out_dir, "chatglm3", seed)
    _pretrain(folder, demo_batches(load_tokenizer(folder), rows), steps, seed, log)
    return folder


def make_tiny_checkpoint(
    out_dir: str | Path,
    family: str = "chatglm3",
    seed: int = 0,
    pretrain_texts: list[str] | None = None,
    pretrain_steps: int = 0,
) -> Path:
    """Write a tiny checkpoint folder of `family` (see FAMILIES) into `out_dir`; same seed → same files.

    With `pretrain_texts`, the weights are first trained `pretrain_steps` steps on them (see pretrain_tiny)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if family == "llama":
        return _make_tiny_llama(folder, seed)
    from ptune.families.registry import load_tokenizer
    from tools.tiny_tokenizers import write_tiny_tokenizer

    torch.manual_seed(seed)
    write_tiny_tokenizer(folder, family, seed=seed)
    tok = load_tokenizer(folder, family)
    cfg = chatglm_config(family, _pad_vocab(tok.vocab_size), TINY_DIMS)
    if family == "glm4":
        eos = list(tok.stop_token_ids)  # <|endoftext|>, <|user|>, <|observation|>
        cfg["eos_token_id"], cfg["pad_token_id"] = eos, eos[0]
        _write_json(
            folder / "generation_config.json",
            {
                "eos_token_id": eos,
                "pad_token_id": eos[0],
                "do_sample": True,
                "temperature": 0.8,
                "max_length": 128000,
                "top_p": 0.8,
                "transformers_version": "4.44.0",
            },
        )
    _write_json(folder / "config.json", cfg)
    dtype = torch.bfloat16 if family == "glm4" else torch.float16
    write_sharded(folder, random_chatglm_weights(cfg, seed), cfg["num_layers"], family == "glm4", dtype)
    if pretrain_texts:
        pretrain_tiny(folder, pretrain_texts, pretrain_steps, seed)
    return folder


def _make_tiny_llama(folder: Path, seed: int) -> Path:
    """A native transformers Llama folder with a small byte-level BPE tokenizer and a chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tiny_bpe_tokenizer(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=_pad_vocab(len(tok)),
        hidden_size=TINY_DIMS["hidden_size"],
        intermediate_size=TINY_DIMS["ffn_hidden_size"],
        num_hidden_layers=TINY_DIMS["num_layers"],
        num_attention_heads=TINY_DIMS["num_attention_heads"],
        num_key_value_heads=2,
        head_dim=TINY_DIMS["kv_channels"],
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return folder


LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _tiny_bpe_tokenizer(folder: Path):
    """Train a byte-level BPE (tokenizers library) on the shipped corpus and save it as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = CORPUS_PATH.read_text(encoding="utf-8").splitlines()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
    )
    tok.chat_template = LLAMA_CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return tok
