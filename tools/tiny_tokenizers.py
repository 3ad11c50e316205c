"""Tiny tokenizers for the tests and the tiny demo models, trained deterministically on ``tools/corpus.txt``.

Dev tooling (never imported by `ptune/`): `train_tiny_sentencepiece` (ChatGLM2/3-shaped
SentencePiece), `train_byte_bpe` / `write_tiny_tiktoken` (a GLM-4-shaped tiktoken ranks file), and
`write_tiny_tokenizer` (the tokenizer files of a tiny model of a family, by the family's tokenizer format).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ptune.families.base import or_list
from ptune.families.glm4 import GLM4_CHAT_TEMPLATE, GLM4_PATTERN, load_tiktoken_ranks
from ptune.families.registry import FAMILY_NAMES, get_family

CORPUS_PATH = Path(__file__).resolve().parent / "corpus.txt"

# GLM-4-9B-chat's own chat template (ptune ships it): tools, tool calls and observations render as on the
# real model, so the README's tool formats work on a tiny GLM-4 folder.
GLM4_TINY_CHAT_TEMPLATE = GLM4_CHAT_TEMPLATE.read_text(encoding="utf-8")


def _corpus_lines(corpus: Path) -> list[str]:
    """Non-empty lines of the corpus, in file order (the order matters for determinism)."""
    return [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_tiny_sentencepiece(
    out_path: Path, vocab_size: int = 1000, seed: int = 0, corpus: Path = CORPUS_PATH
) -> None:
    """Train a small SentencePiece BPE model shaped like ChatGLM2/3's and write it to `out_path`.

    Like the real model: byte_fallback (so "\\n" becomes ``<0x0A>``), a dummy "▁" prefix, identity
    normalisation without whitespace squeezing, digits split, ``<unk>``=0, ``<s>``=1, ``</s>``=2 and no pad
    piece (ChatGLM pads with 0).  Single-threaded over the whole corpus in file order, so the same inputs
    give the same bytes.  Takes well under a second.
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus_lines(corpus)),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=0.9995,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        minloglevel=2,
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(buffer.getvalue())


def train_byte_bpe(texts: Iterable[str], vocab_size: int, pattern: str = GLM4_PATTERN) -> list[bytes]:
    """Byte-level BPE trained by tokenizers' `BpeTrainer`: the tokens in rank order, the 256 single bytes first
    (in byte order), then each learned token in the order the trainer merged it — what a tiktoken ranks file
    needs (tiktoken merges by rank, so merge order = rank order gives the same encoding).

    Texts are pre-split with `pattern` (as tiktoken does), then mapped to byte-level characters; pairs seen once
    merge too (`min_frequency=0`), so a small corpus still fills `vocab_size`. Deterministic for the same texts.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=0,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer=trainer)
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    by_id = sorted(bpe.get_vocab().items(), key=lambda item: item[1])
    learned = [bytes(byte_of[c] for c in token) for token, _ in by_id]
    return [bytes([b]) for b in range(256)] + [t for t in learned if len(t) > 1][: vocab_size - 256]


def write_tiktoken_ranks(out_path: Path, tokens: Sequence[bytes]) -> None:
    """Write tokens as a tiktoken ranks file in GLM-4's format: "base64(token) rank" per line."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{base64.b64encode(t).decode('ascii')} {rank}\n" for rank, t in enumerate(tokens)]
    out_path.write_text("".join(lines), encoding="ascii", newline="\n")


def write_tiny_tiktoken(out_path: Path, vocab_size: int = 2000, corpus: Path = CORPUS_PATH) -> None:
    """Write a small GLM-4-style tiktoken ranks file (at most `vocab_size` ranks) learned from the corpus.

    All 256 single bytes come first (ranks 0..255, so every string encodes), then byte-level BPE merges over
    the GLM-4-regex-split corpus.  Deterministic: same corpus and size, same file.
    """
    write_tiktoken_ranks(out_path, train_byte_bpe(_corpus_lines(corpus), vocab_size))


def write_tiny_tokenizer(folder: Path, family: str, vocab_size: int | None = None, seed: int = 0) -> None:
    """Write ``tokenizer.model`` + ``tokenizer_config.json`` for a tiny model of `family` into `folder`.

    SentencePiece families (chatglm2/3): a tiny SentencePiece model (default 1000 pieces) and a config naming
    ``tiny-<family>`` (so `load_tokenizer` can tell chatglm2 from chatglm3 the way it does for the real
    checkpoints).  tiktoken families (glm4): a tiny tiktoken ranks file (default 2000 ranks) and a config like
    GLM-4's (ChatGLM4Tokenizer, added_tokens_decoder with the shifted special ids, a chat template equal to
    GLM-4's for plain messages).  The model's config.json is the caller's business.
    """
    folder = Path(folder)
    fmt = get_family(family).tokenizer_format if family in FAMILY_NAMES else None
    if fmt not in ("sentencepiece", "tiktoken"):
        tiny = [f for f in FAMILY_NAMES if get_family(f).tokenizer_format in ("sentencepiece", "tiktoken")]
        raise ValueError(f"no tiny tokenizer for family {family!r} ({or_list(tiny)})")
    folder.mkdir(parents=True, exist_ok=True)
    cls = get_family(family).tokenizer_classes[0]
    if fmt == "sentencepiece":
        train_tiny_sentencepiece(folder / "tokenizer.model", vocab_size or 1000, seed=seed)
        config: dict[str, Any] = {
            "name_or_path": f"tiny-{family}",
            "remove_space": False,
            "do_lower_case": False,
            "tokenizer_class": cls,
            "auto_map": {"AutoTokenizer": [f"tokenization_chatglm.{cls}", None]},
        }
    else:
        write_tiny_tiktoken(folder / "tokenizer.model", vocab_size or 2000)
        n = len(load_tiktoken_ranks(folder / "tokenizer.model"))
        specials = get_family(family).special_tokens
        config = {
            "name_or_path": f"tiny-{family}",
            "auto_map": {"AutoTokenizer": [f"tokenization_chatglm.{cls}", None]},
            "added_tokens_decoder": {
                str(n + k): {
                    "content": name,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for k, name in enumerate(specials)
            },
            "additional_special_tokens": list(specials),
            "clean_up_tokenization_spaces": False,
            "chat_template": GLM4_TINY_CHAT_TEMPLATE,
            "do_lower_case": False,
            "eos_token": specials[0],
            "pad_token": specials[0],
            "model_max_length": 128000,
            "padding_side": "left",
            "remove_space": False,
            "tokenizer_class": cls,
        }
    (folder / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
