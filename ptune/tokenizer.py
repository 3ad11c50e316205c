"""Tokenizers for each model family, behind one small interface, and `load_tokenizer()` to pick the right one.

Families (with the real checkpoints' id layouts):

- ``chatglm2`` / ``chatglm3``: a SentencePiece BPE ``tokenizer.model``; the special tokens are not in the
  SentencePiece vocabulary but appended right after it (``n_words`` = SentencePiece size):
  ``[MASK]=n, [gMASK]=n+1, [sMASK]=n+2, sop=n+3, eop=n+4`` and, for chatglm3 only,
  ``<|system|>=n+5, <|user|>=n+6, <|assistant|>=n+7, <|observation|>=n+8`` (the real model: 64789..64797).
  pad = ``<unk>`` = 0, eos = ``</s>`` = 2.  Re-implemented here because THUDM's remote tokenizer code no
  longer loads on current transformers.
- ``glm4``: a tiktoken ranks file (``tokenizer.model`` = lines "base64(token) rank") turned into a native
  ``PreTrainedTokenizerFast``; 14 specials follow the last rank (real: ``<|endoftext|>`` = 151329 .. 151342).
- ``native``: any tokenizer ``AutoTokenizer`` loads without remote code; prompts via its chat template.

Every family object exposes: ``family``, ``encode(text) -> list[int]`` (no special tokens),
``decode(ids, skip_special_tokens=True) -> str``, ``pad_token_id``, ``eos_token_id`` (appended after a
training answer), ``stop_token_ids`` (every id that ends a chat turn), ``special_ids`` (name -> id),
``vocab_size`` (ids the embedding must cover) and ``files`` (tokenizer file names in the model folder, so a
checkpoint can copy them).  Remote code (``tokenization_chatglm.py``) is never executed; at most read as text.

Also here: the tiny tokenizers the tests and the tiny demo models use, trained deterministically on
``ptune/assets/corpus.txt`` (`train_tiny_sentencepiece`, `write_tiny_tiktoken`, `write_tiny_tokenizer`).
"""

from __future__ import annotations

import base64
import heapq
import io
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from ptune.errors import UserError

CORPUS_PATH = Path(__file__).resolve().parent / "assets" / "corpus.txt"

FAMILIES = ("chatglm2", "chatglm3", "glm4", "native")

# GLM-4's pre-tokenizer regex (tiktoken `pat_str`), from its tokenization_chatglm.py.
GLM4_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# In id order, starting right after the last rank.
GLM4_SPECIALS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
)
# In id order, starting at the SentencePiece size n_words.
CHATGLM_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
CHATGLM3_ROLE_SPECIALS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")

# GLM-4's chat template restricted to plain messages (no tools): what the real one renders for them.
GLM4_TINY_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for item in messages %}{% if item['content'] %}<|{{ item['role'] }}|>"
    "{{ item['metadata'] }}\n{{ item['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# File names a native tokenizer may consist of (copied into checkpoints when present).
NATIVE_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)
CHATGLM_TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "tokenization_chatglm.py")

_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/=]+ [0-9]+\r?$")


# --------------------------------------------------------------------------------------------------------
# Tiny tokenizers (deterministic, trained on the shipped corpus)
# --------------------------------------------------------------------------------------------------------


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
    """Byte-level BPE training: the tokens in rank order (the 256 single bytes first, in byte order).

    Texts are pre-split with `pattern` (as tiktoken does), then the most frequent adjacent pair is merged
    repeatedly until `vocab_size` tokens exist or no pair is left (pairs seen once merge too, so a small
    corpus still fills the requested size).  Ties go to the pair with the lowest
    (left rank, right rank), so the result is deterministic.  A merge whose bytes already exist as a token
    reuses that token, keeping every token's bytes unique (a tiktoken ranks file needs that).
    """
    import regex

    splitter = regex.compile(pattern)
    counts: Counter[bytes] = Counter()
    for text in texts:
        counts.update(piece.encode("utf-8") for piece in splitter.findall(text))
    unique = sorted(counts)
    words = [list(w) for w in unique]
    freqs = [counts[w] for w in unique]

    tokens = [bytes([i]) for i in range(256)]
    token_ids = {t: i for i, t in enumerate(tokens)}
    pair_counts: Counter[tuple[int, int]] = Counter()
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, word in enumerate(words):
        for pair in pairwise(word):
            pair_counts[pair] += freqs[wi]
            where[pair].add(wi)
    # Lazy max-heap: an entry is stale when its count no longer matches pair_counts.
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    while len(tokens) < vocab_size and heap:
        neg, a, b = heapq.heappop(heap)
        if pair_counts.get((a, b), 0) != -neg:
            continue
        merged = tokens[a] + tokens[b]
        new = token_ids.get(merged)
        if new is None:
            new = len(tokens)
            tokens.append(merged)
            token_ids[merged] = new
        changed: set[tuple[int, int]] = set()
        for wi in sorted(where.pop((a, b))):
            word, f = words[wi], freqs[wi]
            for pair in pairwise(word):
                pair_counts[pair] -= f
                changed.add(pair)
            out: list[int] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[wi] = out
            for pair in pairwise(out):
                pair_counts[pair] += f
                where[pair].add(wi)
                changed.add(pair)
        for pair in sorted(changed):
            c = pair_counts[pair]
            if c <= 0:
                del pair_counts[pair]
            else:
                heapq.heappush(heap, (-c, pair[0], pair[1]))
    return tokens


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

    chatglm2/3: a tiny SentencePiece model (default 1000 pieces) and a config naming ``tiny-<family>`` (so
    `load_tokenizer` can tell chatglm2 from chatglm3 the way it does for the real checkpoints).
    glm4: a tiny tiktoken ranks file (default 2000 ranks) and a config like GLM-4's (ChatGLM4Tokenizer,
    added_tokens_decoder with the shifted special ids, a chat template equal to GLM-4's for plain messages).
    The model's config.json is the caller's business.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if family in ("chatglm2", "chatglm3"):
        train_tiny_sentencepiece(folder / "tokenizer.model", vocab_size or 1000, seed=seed)
        config: dict[str, Any] = {
            "name_or_path": f"tiny-{family}",
            "remove_space": False,
            "do_lower_case": False,
            "tokenizer_class": "ChatGLMTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
        }
    elif family == "glm4":
        write_tiny_tiktoken(folder / "tokenizer.model", vocab_size or 2000)
        n = len(load_tiktoken_ranks(folder / "tokenizer.model"))
        config = {
            "name_or_path": "tiny-glm4",
            "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
            "added_tokens_decoder": {
                str(n + k): {
                    "content": name,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for k, name in enumerate(GLM4_SPECIALS)
            },
            "additional_special_tokens": list(GLM4_SPECIALS),
            "clean_up_tokenization_spaces": False,
            "chat_template": GLM4_TINY_CHAT_TEMPLATE,
            "do_lower_case": False,
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "model_max_length": 128000,
            "padding_side": "left",
            "remove_space": False,
            "tokenizer_class": "ChatGLM4Tokenizer",
        }
    else:
        raise ValueError(f"no tiny tokenizer for family {family!r} (chatglm2, chatglm3 or glm4)")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


def load_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken ranks file ("base64(token) rank" lines).

    Parsed here rather than with ``tiktoken.load.load_tiktoken_bpe`` because that one caches files by *path*
    in a temp folder, so a rewritten file at the same path could be read stale.  Raises UserError naming the
    file and line for a malformed line, and for ranks that are not exactly 0..n-1.
    """
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as e:
                raise UserError(
                    f"{path}:{lineno}: not a tiktoken ranks line 'base64(token) rank': {line[:60]!r}"
                ) from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise UserError(f"{path}: tiktoken ranks must be unique and exactly 0..{len(ranks) - 1}")
    return ranks


# --------------------------------------------------------------------------------------------------------
# The common interface
# --------------------------------------------------------------------------------------------------------


class ChatTokenizer:
    """What every family's tokenizer exposes (see the module docstring); subclasses fill it in."""

    family: str
    pad_token_id: int
    eos_token_id: int
    stop_token_ids: list[int]
    special_ids: dict[str, int]
    vocab_size: int
    files: list[str]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without any special tokens."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; special tokens dropped when `skip_special_tokens`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r}, vocab_size={self.vocab_size})"


class ChatGLMTokenizer(ChatTokenizer):
    """ChatGLM2 / ChatGLM3 tokenizer: SentencePiece plus specials appended at ``n_words`` (module docstring).

    `encode` is plain ``sp.encode(text)``, which is what the originals do with add_special_tokens=False
    (including the dummy "▁" prefix: encode("\\n") is ["▁", "<0x0A>"]).  `decode` drops <unk>/<s>/</s> and
    the appended specials when `skip_special_tokens`; otherwise it writes them by name (the original wrote
    the appended ones as ""), which helps when reading raw model output.  Ids past `vocab_size` (the
    model's padded embedding rows) have no text and are always dropped.
    """

    def __init__(self, model_file: Path, family: str, files: Sequence[str] = ("tokenizer.model",)):
        import sentencepiece as spm

        if family not in ("chatglm2", "chatglm3"):
            raise ValueError(f"ChatGLMTokenizer family must be chatglm2 or chatglm3, not {family!r}")
        self.family = family
        self.model_file = Path(model_file)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except (OSError, RuntimeError) as e:
            raise UserError(f"{self.model_file}: not a readable SentencePiece model ({e})") from e
        self.n_words = self.sp.get_piece_size()
        names = CHATGLM_SPECIALS + (CHATGLM3_ROLE_SPECIALS if family == "chatglm3" else ())
        self.special_ids = {name: self.n_words + k for k, name in enumerate(names)}
        # Control pieces and appended specials: dropped by decode(skip_special_tokens=True), else named.
        self._special_names = {0: "<unk>", 1: "<s>", 2: "</s>"}
        self._special_names.update({i: name for name, i in self.special_ids.items()})
        self.pad_token_id = 0  # ChatGLM2/3 pad with <unk>
        self.bos_token_id = 1
        self.eos_token_id = 2
        if family == "chatglm3":
            self.stop_token_ids = [2, self.special_ids["<|user|>"], self.special_ids["<|observation|>"]]
        else:
            self.stop_token_ids = [2]
        self.vocab_size = self.n_words + len(names)
        self.files = list(files)

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        parts: list[str] = []
        run: list[int] = []  # consecutive SentencePiece ids, decoded together so bytes re-join
        for i in map(int, ids):
            if 0 <= i < self.n_words and i not in self._special_names:
                run.append(i)
                continue
            if run:
                parts.append(self.sp.decode(run))
                run = []
            if i in self._special_names and not skip_special_tokens:
                parts.append(self._special_names[i])
        if run:
            parts.append(self.sp.decode(run))
        return "".join(parts)


def tiktoken_to_tokenizers(ranks: dict[bytes, int], specials: Sequence[str], pattern: str = GLM4_PATTERN):
    """A `tokenizers.Tokenizer` from parsed tiktoken ranks, via transformers' TikTokenConverter.

    `specials` get the ids right after the last rank, in order.  The backend equals tiktoken on plain text
    (regex split, then byte-level BPE merges in rank order).
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _ParsedRanksConverter(TikTokenConverter):
        def load_tiktoken_bpe(self, tiktoken_url):  # the ranks are already parsed (see load_tiktoken_ranks)
            return ranks

    converter = _ParsedRanksConverter(
        vocab_file="<parsed ranks>", pattern=pattern, extra_special_tokens=list(specials)
    )
    return converter.converted()


class GLM4Tokenizer(ChatTokenizer):
    """GLM-4's tokenizer as a native ``PreTrainedTokenizerFast`` (no remote code), in the common interface.

    Built with transformers' ``TikTokenConverter`` from the ranks file with GLM-4's regex; the 14 specials
    follow the last rank; a ``[gMASK]<sop> $A`` post-processor reproduces the original's
    build_inputs_with_special_tokens.  The wrapped tokenizer is `hf` (its chat template, when the folder's
    tokenizer_config.json has one, is the original's).  pad = eos = ``<|endoftext|>``; a chat turn ends at
    ``<|endoftext|>``, ``<|user|>`` or ``<|observation|>``.
    """

    family = "glm4"

    def __init__(
        self,
        model_file: Path,
        tokenizer_config: dict[str, Any] | None = None,
        files: Sequence[str] = ("tokenizer.model",),
    ):
        from tokenizers import processors
        from transformers import PreTrainedTokenizerFast

        self.model_file = Path(model_file)
        tokenizer_config = tokenizer_config or {}
        ranks = load_tiktoken_ranks(self.model_file)
        n = len(ranks)
        self.special_ids = {name: n + k for k, name in enumerate(GLM4_SPECIALS)}
        _check_added_tokens(
            self.model_file.parent / "tokenizer_config.json", tokenizer_config, self.special_ids
        )

        backend = tiktoken_to_tokenizers(ranks, GLM4_SPECIALS)
        gmask, sop, eos = (
            self.special_ids["[gMASK]"],
            self.special_ids["<sop>"],
            self.special_ids["<|endoftext|>"],
        )
        backend.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single="[gMASK]:0 <sop>:0 $A:0",
                    pair="[gMASK]:0 <sop>:0 $A:0 $B:1 <|endoftext|>:1",
                    special_tokens=[("[gMASK]", gmask), ("<sop>", sop), ("<|endoftext|>", eos)],
                ),
            ]
        )
        self.hf = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            extra_special_tokens=list(GLM4_SPECIALS[1:]),
            padding_side="left",
            clean_up_tokenization_spaces=False,
            chat_template=tokenizer_config.get("chat_template"),
            model_max_length=tokenizer_config.get("model_max_length", 128000),
        )
        self.pad_token_id = eos
        self.eos_token_id = eos
        self.stop_token_ids = [eos, self.special_ids["<|user|>"], self.special_ids["<|observation|>"]]
        self.vocab_size = n + len(GLM4_SPECIALS)
        self.files = list(files)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)


class NativeTokenizer(ChatTokenizer):
    """Any tokenizer ``AutoTokenizer`` loads from the folder (never with remote code), in the common interface.

    Prompts use the tokenizer's own chat template (`has_chat_template`, `render_chat`); eos comes from the
    tokenizer; `stop_token_ids` adds the eos ids of generation_config.json / config.json (e.g. a converted
    GLM-4 lists <|user|> and <|observation|> there).  pad falls back to eos when the tokenizer has none.
    """

    family = "native"

    def __init__(self, hf: Any, extra_stop_ids: Iterable[int] = (), files: Sequence[str] = ()):
        self.hf = hf
        if hf.eos_token_id is None:
            raise UserError(
                f"{hf.name_or_path}: the tokenizer defines no eos token; set eos_token in tokenizer_config.json"
            )
        self.eos_token_id = int(hf.eos_token_id)
        self.pad_token_id = int(hf.pad_token_id) if hf.pad_token_id is not None else self.eos_token_id
        self.stop_token_ids = _unique([self.eos_token_id, *map(int, extra_stop_ids)])
        self.special_ids = {
            str(t): int(i) for t, i in zip(hf.all_special_tokens, hf.all_special_ids, strict=True)
        }
        self.vocab_size = len(hf)
        self.files = list(files)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The chat template rendered as text, ending with the generation prompt for the next answer."""
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)


def _unique(ids: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(ids))


def _check_added_tokens(path: Path, tokenizer_config: dict[str, Any], special_ids: dict[str, int]) -> None:
    """The ids tokenizer_config.json's added_tokens_decoder gives GLM-4's specials must be the layout's."""
    for key, entry in (tokenizer_config.get("added_tokens_decoder") or {}).items():
        name = entry.get("content") if isinstance(entry, dict) else None
        if name in special_ids and str(special_ids[name]) != str(key):
            raise UserError(
                f"{path}: added_tokens_decoder puts {name} at {key}, but the ranks file puts it at {special_ids[name]}"
            )


# --------------------------------------------------------------------------------------------------------
# Loading from a model folder
# --------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when absent; UserError with line/column when malformed."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason})") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def is_tiktoken_file(path: Path) -> bool:
    """True when `path` starts with a tiktoken ranks line ("base64(token) rank"), not a SentencePiece proto."""
    with open(path, "rb") as f:
        first = f.readline(4096)
    return bool(_TIKTOKEN_LINE.match(first.rstrip(b"\n")))


def _chatglm_version_hint(folder: Path, config: dict, tokenizer_config: dict) -> str | None:
    """chatglm2 or chatglm3 from names and remote code text, in the order the docs of load_tokenizer give."""
    for name in (config.get("_name_or_path"), tokenizer_config.get("name_or_path"), folder.resolve().name):
        if isinstance(name, str):
            lowered = name.lower()
            for family in ("chatglm3", "chatglm2"):
                if family in lowered:
                    return family
    code = folder / "tokenization_chatglm.py"
    if code.is_file():  # read as text only, never executed
        return "chatglm3" if "<|user|>" in code.read_text(encoding="utf-8", errors="replace") else "chatglm2"
    return None


def _present(folder: Path, names: Iterable[str]) -> list[str]:
    return [name for name in names if (folder / name).is_file()]


def _eos_ids(*configs: dict[str, Any]) -> list[int]:
    ids: list[int] = []
    for config in configs:
        value = config.get("eos_token_id")
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, list):
            ids.extend(v for v in value if isinstance(v, int))
    return ids


def load_tokenizer(model_name_or_path: str | Path, chat_format: str | None = None) -> ChatTokenizer:
    """The tokenizer of the model in folder `model_name_or_path`, as the right family object.

    ChatGLM-format checkpoints are recognised by config.json ``model_type == "chatglm"`` or by
    tokenizer_config.json ``tokenizer_class`` ChatGLMTokenizer / ChatGLM4Tokenizer (also after a conversion
    that changed model_type), or by an explicit ``chat_format`` of chatglm2/chatglm3/glm4.  Among them GLM-4
    is ``tokenizer_class == "ChatGLM4Tokenizer"`` or a ``tokenizer.model`` that is a tiktoken ranks text
    file; the rest are SentencePiece, and chatglm2 vs chatglm3 is decided by, in order: `chat_format`;
    "chatglm3"/"chatglm2" in config.json ``_name_or_path`` or tokenizer_config.json ``name_or_path``; in the
    folder name; a ``tokenization_chatglm.py`` mentioning ``<|user|>`` (chatglm3) or not (chatglm2).
    Undecidable -> UserError asking for ``--chat_format``.  Anything else loads with
    ``AutoTokenizer.from_pretrained`` (``trust_remote_code`` is never set) as family "native".

    Raises UserError for a missing folder or tokenizer file, malformed JSON, a `chat_format` that contradicts
    the files, or a tokenizer AutoTokenizer cannot load.
    """
    if chat_format is not None and chat_format not in FAMILIES:
        raise UserError(f"--chat_format {chat_format!r}: expected one of {', '.join(FAMILIES)}")
    folder = Path(model_name_or_path)
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder} (ptune loads models from a local folder)")
    if not (folder / "config.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        # Without either, AutoTokenizer would fail with advice about installing sentencepiece.
        what = "the folder is empty" if not any(folder.iterdir()) else "nor tokenizer_config.json"
        raise UserError(f"{folder / 'config.json'}: file not found ({what}; is this a model folder?)")
    config = _read_json(folder / "config.json")
    tokenizer_config = _read_json(folder / "tokenizer_config.json")
    tokenizer_class = tokenizer_config.get("tokenizer_class")
    is_chatglm = (
        config.get("model_type") == "chatglm"
        or tokenizer_class in ("ChatGLMTokenizer", "ChatGLM4Tokenizer")
        or chat_format in ("chatglm2", "chatglm3", "glm4")
    )
    _check_model_type(folder, config, is_chatglm)
    if not is_chatglm:
        return _load_native(folder, config)
    if chat_format == "native":
        raise UserError(
            f"--chat_format native: {folder} holds a ChatGLM-format tokenizer, which transformers cannot load "
            "without remote code; use chatglm2, chatglm3 or glm4"
        )

    model_file = folder / "tokenizer.model"
    if not model_file.is_file():
        raise UserError(f"tokenizer file not found: {model_file}")
    files = _present(folder, CHATGLM_TOKENIZER_FILES)
    glm4 = tokenizer_class == "ChatGLM4Tokenizer" or is_tiktoken_file(model_file)
    if glm4:
        if chat_format not in (None, "glm4"):
            raise UserError(
                f"--chat_format {chat_format}: {model_file} is a GLM-4 (tiktoken) tokenizer; use glm4"
            )
        return GLM4Tokenizer(model_file, tokenizer_config, files=files)
    if chat_format == "glm4":
        raise UserError(
            f"--chat_format glm4: {model_file} is a SentencePiece model; use chatglm2 or chatglm3"
        )
    family = chat_format or _chatglm_version_hint(folder, config, tokenizer_config)
    if family is None:
        raise UserError(
            f"{folder}: cannot tell whether this is a ChatGLM2 or ChatGLM3 checkpoint (the prompt formats "
            "differ); pass --chat_format chatglm2|chatglm3"
        )
    return ChatGLMTokenizer(model_file, family, files=files)


def _check_model_type(folder: Path, config: dict[str, Any], is_chatglm: bool) -> None:
    """A model_type that is neither chatglm nor one transformers ships is an error naming it.

    transformers would say the folder "contains custom code" (chatglm folders declare an auto_map). Left alone:
    a native folder with an auto_map, whose custom code --trust_remote_code may run.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type is None or (
        isinstance(model_type, str) and (model_type == "chatglm" or model_type in CONFIG_MAPPING_NAMES)
    ):
        return
    if is_chatglm or "auto_map" not in config:
        import transformers

        raise UserError(
            f"{folder / 'config.json'}: unknown model_type {model_type!r}: ptune loads 'chatglm' folders "
            f"(ChatGLM2/3, GLM-4) and the model types transformers {transformers.__version__} ships"
        )


def _load_native(folder: Path, config: dict[str, Any]) -> NativeTokenizer:
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        message = " ".join(str(e).split())[:300]  # some of transformers' messages span several lines
        raise UserError(
            f"{folder}: transformers could not load a tokenizer from this folder: {message}"
        ) from e
    generation_config = _read_json(folder / "generation_config.json")
    return NativeTokenizer(
        hf, extra_stop_ids=_eos_ids(generation_config, config), files=_present(folder, NATIVE_TOKENIZER_FILES)
    )
