"""Tokenizers: tiny SentencePiece / tiktoken training, the family id layouts, load_tokenizer's detection and
errors, and (when /work/shared is beside the clone) GLM-4's real tokenizer against raw tiktoken.

The tiny tokenizers are tested by what they must do (the real tokenizers' settings and id layout), not by
the ids the tiny corpus happens to give.
"""

import json
import shutil
from pathlib import Path

import pytest
import tiktoken

from ptune.data.chat_format import chat_messages, encode_example, prompt_ids
from ptune.families.chatglm2 import ChatGLMTokenizer
from ptune.families.glm4 import (
    GLM4_PATTERN,
    GLM4_SPECIALS,
    GLM4Tokenizer,
    load_tiktoken_ranks,
    tiktoken_to_tokenizers,
)
from ptune.families.native import NativeTokenizer
from ptune.families.registry import load_tokenizer
from ptune.io.errors import UserError
from tools.tiny_tokenizers import (
    CORPUS_PATH,
    train_byte_bpe,
    train_tiny_sentencepiece,
    write_tiny_tiktoken,
    write_tiny_tokenizer,
)

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
GLM4_REAL = REFERENCE / "formats" / "glm-4-9b-chat"
needs_glm4_real = pytest.mark.skipif(
    not (GLM4_REAL / "tokenizer.model").is_file(),
    reason=f"GLM-4's real tokenizer files are not at {GLM4_REAL} (the shared reference folder beside the clone)",
)


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    train_tiny_sentencepiece(path)
    return path


@pytest.fixture(scope="session")
def tiktoken_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiktoken") / "tokenizer.model"
    write_tiny_tiktoken(path)
    return path


def chatglm_folder(
    root: Path, name: str, sp_model: Path, config=None, tokenizer_config=None, code=None
) -> Path:
    """A ChatGLM2/3-style model folder holding the tiny SentencePiece model."""
    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(sp_model, folder / "tokenizer.model")
    (folder / "config.json").write_text(json.dumps({"model_type": "chatglm", **(config or {})}))
    tc = {"tokenizer_class": "ChatGLMTokenizer", **(tokenizer_config or {})}
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    if code is not None:
        (folder / "tokenization_chatglm.py").write_text(code)
    return folder


# ---------------------------------------------------------------------------------------------------------
# Tiny SentencePiece model (ChatGLM2/3 shaped)
# ---------------------------------------------------------------------------------------------------------


def test_sentencepiece_training_is_deterministic(sp_model, tmp_path):
    again = tmp_path / "again.model"
    train_tiny_sentencepiece(again)
    assert again.read_bytes() == sp_model.read_bytes()


def test_sentencepiece_model_shape(sp_model):
    sp = ChatGLMTokenizer(sp_model, "chatglm2").sp
    assert sp.get_piece_size() == 1000
    assert [sp.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)  # no pad piece
    assert sp.id_to_piece(13) == "<0x0A>"  # byte fallback: byte b at id 3 + b


def test_chatglm_encode_behaves_like_chatglm3s_tokenizer(sp_model):
    """What ChatGLM2/3's SentencePiece settings do, whatever pieces the tiny corpus taught: a dummy "▁" prefix,
    byte fallback at id 3 + byte (ChatGLM3 encodes "\n" as [30910, 13]: "▁", <0x0A>), digits split one by one,
    words of the corpus as whole pieces, and decode undoes encode."""
    tok = ChatGLMTokenizer(sp_model, "chatglm3")
    sp = tok.sp

    def pieces(text):
        return [sp.id_to_piece(i) for i in tok.encode(text)]

    assert pieces("\n") == ["▁", "<0x0A>"] and tok.encode("\n")[1] == 3 + 0x0A
    assert pieces("😀") == ["▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert [i - 3 for i in tok.encode("😀")[1:]] == list("😀".encode())
    assert pieces("12345")[-5:] == ["1", "2", "3", "4", "5"]  # split_digits
    assert pieces("你好") == ["▁你好"]  # a frequent word of the corpus is one piece
    for text in ["这件白色上衣", "Hello 12", "再加5呢？", "\n\n你好😀 x"]:
        ids = tok.encode(text)
        assert "".join(sp.id_to_piece(i) for i in ids if sp.id_to_piece(i)[0] != "<").startswith("▁")
        assert 0 not in ids and tok.decode(ids) == text  # no <unk>: byte fallback covers everything


def test_chatglm_special_id_layout(sp_model):
    glm2 = ChatGLMTokenizer(sp_model, "chatglm2")
    assert glm2.special_ids == {"[MASK]": 1000, "[gMASK]": 1001, "[sMASK]": 1002, "sop": 1003, "eop": 1004}
    assert (glm2.pad_token_id, glm2.eos_token_id, glm2.stop_token_ids, glm2.vocab_size) == (0, 2, [2], 1005)
    glm3 = ChatGLMTokenizer(sp_model, "chatglm3")
    assert glm3.special_ids == {
        "[MASK]": 1000,
        "[gMASK]": 1001,
        "[sMASK]": 1002,
        "sop": 1003,
        "eop": 1004,
        "<|system|>": 1005,
        "<|user|>": 1006,
        "<|assistant|>": 1007,
        "<|observation|>": 1008,
    }
    assert (glm3.pad_token_id, glm3.eos_token_id, glm3.stop_token_ids, glm3.vocab_size) == (
        0,
        2,
        [2, 1006, 1008],
        1009,
    )


def test_chatglm_decode_specials(sp_model):
    tok = ChatGLMTokenizer(sp_model, "chatglm3")
    ids = [
        1001,
        1003,
        1006,
        *tok.encode("你好"),
        2,
        0,
        5000,
    ]  # [gMASK] sop <|user|> 你好 </s> <unk> (5000: padded row)
    assert tok.decode(ids) == "你好"
    assert tok.decode(ids, skip_special_tokens=False) == "[gMASK]sop<|user|>你好</s><unk>"


# ---------------------------------------------------------------------------------------------------------
# Tiny tiktoken file (GLM-4 shaped)
# ---------------------------------------------------------------------------------------------------------


def test_tiny_tiktoken_is_deterministic_and_byte_complete(tiktoken_model, tmp_path):
    again = tmp_path / "again.model"
    write_tiny_tiktoken(again)
    assert again.read_bytes() == tiktoken_model.read_bytes()
    ranks = load_tiktoken_ranks(tiktoken_model)
    assert len(ranks) == 2000
    assert all(ranks[bytes([b])] == b for b in range(256))
    assert tiktoken_model.read_text().splitlines()[:2] == ["AA== 0", "AQ== 1"]  # "base64(token) rank"


def test_tiny_tiktoken_fast_tokenizer_matches_tiktoken(tiktoken_model):
    ranks = load_tiktoken_ranks(tiktoken_model)
    enc = tiktoken.Encoding("tiny", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens={})
    tok = GLM4Tokenizer(tiktoken_model)
    corpus = CORPUS_PATH.read_text(encoding="utf-8")
    extra = ["你好，世界！\n\n", "I'm 12345 😀", "  spaces\tand\r\nnewlines ", "类型#上衣*颜色#白色"]
    for text in [corpus, *corpus.splitlines()[:200], *extra]:
        assert tok.encode(text) == enc.encode(text)
    ids = tok.encode("这件白色上衣，宽松版型穿着舒适。")
    assert [tok.decode([i]) for i in ids] == ["这件白色上衣", "，宽松版型穿着舒适", "。"]


def test_train_byte_bpe_small_example():
    # Split: "aaab", " aaab", " ab".  Pair counts (a,a) 4, (a,b) 3, ( ,a) 2 -> "aa"; then (a,b) 3 beats
    # (aa,a) 2 -> "ab"; then (aa,ab) 2 beats ( ,aa) 1 and ( ,ab) 1 -> "aaab".
    tokens = train_byte_bpe(["aaab aaab ab"], 259)
    assert tokens[:256] == [bytes([b]) for b in range(256)]
    assert tokens[256:] == [b"aa", b"ab", b"aaab"]
    # Ties go to the lowest pair (tokenizers' BpeTrainer): (a,b) and (c,d) both once -> "ab" first.
    assert train_byte_bpe(["cd", "ab"], 258)[256:] == [b"ab", b"cd"]


def test_glm4_tiny_layout(tmp_path):
    folder = tmp_path / "tiny-glm4"
    write_tiny_tokenizer(folder, "glm4")
    (folder / "config.json").write_text(json.dumps({"model_type": "chatglm"}))
    tok = load_tokenizer(folder)
    assert isinstance(tok, GLM4Tokenizer) and tok.family == "glm4"
    assert tok.special_ids == {name: 2000 + k for k, name in enumerate(GLM4_SPECIALS)}
    assert (tok.pad_token_id, tok.eos_token_id, tok.stop_token_ids, tok.vocab_size) == (
        2000,
        2000,
        [2000, 2007, 2009],
        2014,
    )
    assert tok.files == ["tokenizer.model", "tokenizer_config.json"]
    assert tok.hf("hi")["input_ids"] == [2002, 2004, 104, 105]  # [gMASK] <sop> h i
    # The tiny config's chat template renders plain messages like GLM-4's.
    messages = chat_messages("hi", [("a", "b")])
    rendered = tok.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "[gMASK]<sop><|user|>\na<|assistant|>\nb<|user|>\nhi<|assistant|>"
    assert tok.decode(tok.hf.encode(rendered, add_special_tokens=False)) == "\na\nb\nhi"
    # It is GLM-4-9B-chat's own template: it writes tools (the tiny one before issue 16 could not).
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    with_tools = tok.render_chat([{"role": "system", "content": "", "tools": tools}, *messages])
    assert "## get_weather" in with_tools and with_tools.startswith(
        "[gMASK]<sop><|system|>\n你是一个名为 ChatGLM"
    )


# ---------------------------------------------------------------------------------------------------------
# load_tokenizer: family detection and errors
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "config", "tokenizer_config", "code", "chat_format", "family"),
    [
        ("m", {"_name_or_path": "THUDM/chatglm3-6b"}, {}, None, None, "chatglm3"),
        ("m", {"_name_or_path": "THUDM/chatglm2-6b"}, {}, None, None, "chatglm2"),
        ("m", {}, {"name_or_path": "THUDM/chatglm3-6b"}, None, None, "chatglm3"),
        ("my-ChatGLM2-6B-int4", {}, {}, None, None, "chatglm2"),
        ("m", {}, {}, "tokens = ['<|user|>', '<|assistant|>']", None, "chatglm3"),
        ("m", {}, {}, "class ChatGLMTokenizer: pass", None, "chatglm2"),
        ("m", {"_name_or_path": "THUDM/chatglm3-6b"}, {}, None, "chatglm2", "chatglm2"),  # explicit wins
    ],
)
def test_load_tokenizer_tells_chatglm2_from_chatglm3(
    sp_model, tmp_path, name, config, tokenizer_config, code, chat_format, family
):
    folder = chatglm_folder(tmp_path, name, sp_model, config, tokenizer_config, code)
    tok = load_tokenizer(folder, chat_format=chat_format)
    assert isinstance(tok, ChatGLMTokenizer) and tok.family == family
    expected_files = ["tokenizer.model", "tokenizer_config.json"] + (
        ["tokenization_chatglm.py"] if code else []
    )
    assert tok.files == expected_files


def test_load_tokenizer_after_model_type_change(sp_model, tmp_path):
    # A converted checkpoint (model_type "glm") that kept the ChatGLM tokenizer files.
    folder = chatglm_folder(tmp_path, "chatglm3-converted", sp_model, {"model_type": "glm"})
    assert load_tokenizer(folder).family == "chatglm3"


def test_load_tokenizer_undecidable_asks_for_chat_format(sp_model, tmp_path):
    folder = chatglm_folder(tmp_path, "model", sp_model)
    with pytest.raises(UserError, match=r"--chat_format chatglm2\|chatglm3"):
        load_tokenizer(folder)


def test_load_tokenizer_errors(sp_model, tmp_path):
    with pytest.raises(UserError, match="model folder not found: .*nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    folder = chatglm_folder(tmp_path, "chatglm3", sp_model)
    (folder / "tokenizer.model").unlink()
    with pytest.raises(UserError, match=r"tokenizer file not found: .*chatglm3.tokenizer\.model"):
        load_tokenizer(folder)
    bad = chatglm_folder(tmp_path, "bad", sp_model)
    (bad / "config.json").write_text('{\n  "model_type": chatglm\n}')
    with pytest.raises(UserError, match=r"bad.config\.json:2:17: not valid JSON"):
        load_tokenizer(bad)
    ok = chatglm_folder(tmp_path, "chatglm2", sp_model)
    with pytest.raises(UserError, match="--chat_format 'chatglm4'"):
        load_tokenizer(ok, chat_format="chatglm4")
    with pytest.raises(UserError, match="SentencePiece model; use chatglm2 or chatglm3"):
        load_tokenizer(ok, chat_format="glm4")
    with pytest.raises(UserError, match="cannot load without remote code"):
        load_tokenizer(ok, chat_format="native")


def test_load_tokenizer_glm4_by_file_content(tiktoken_model, tmp_path):
    # No tokenizer_class: the tiktoken text format alone says GLM-4.
    folder = tmp_path / "glm"
    folder.mkdir()
    shutil.copy(tiktoken_model, folder / "tokenizer.model")
    (folder / "config.json").write_text(json.dumps({"model_type": "chatglm"}))
    assert load_tokenizer(folder).family == "glm4"
    with pytest.raises(UserError, match="GLM-4 .tiktoken. tokenizer; use glm4"):
        load_tokenizer(folder, chat_format="chatglm3")
    (folder / "tokenizer.model").write_text("AA== 0\nnot base64!! 1\n")
    with pytest.raises(UserError, match=r"tokenizer\.model:2: not a tiktoken ranks line"):
        load_tokenizer(folder)


def test_load_tokenizer_native(tiktoken_model, tmp_path):
    from transformers import PreTrainedTokenizerFast

    backend = tiktoken_to_tokenizers(
        load_tiktoken_ranks(tiktoken_model), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    )
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=template
    )
    folder = tmp_path / "native"
    hf.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "glm", "eos_token_id": 2002}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2002, 2000]}))
    tok = load_tokenizer(folder)
    assert isinstance(tok, NativeTokenizer) and tok.family == "native"
    assert (tok.eos_token_id, tok.pad_token_id, tok.stop_token_ids, tok.vocab_size) == (
        2002,
        2000,
        [2002, 2000],
        2003,
    )
    assert "tokenizer.json" in tok.files and "tokenizer_config.json" in tok.files
    ids = prompt_ids(tok, "hi")
    assert (
        tok.decode(ids, skip_special_tokens=False)
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ids[:1] == [2001] and ids[-1] == tok.encode("\n")[0]
    input_ids, labels = encode_example(tok, "hi", "ok", None, 64, 8)
    assert input_ids == ids + tok.encode("ok") + [2002]
    assert labels == [-100] * len(ids) + tok.encode("ok") + [2002]


# ---------------------------------------------------------------------------------------------------------
# GLM-4's real tokenizer (shared reference files)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def glm4_real():
    return load_tokenizer(GLM4_REAL)


GLM4_TEXTS = [
    "你好，世界！今天天气怎么样？",
    "The quick brown fox jumps over the lazy dog.",
    "混合 mixed 文本 with English and 中文, 123 个 items.",
    "line one\nline two\n\n\nline five\r\nwindows",
    "1234567890 3.14159 -42 1e-5 2024年11月23日",
    "emoji 😀👍🏽 🇨🇳 and ✨",
    "I'm sure they'll say WE'VE done it; DON'T worry.",
    "    indented code:\n\tdef f(x):\n\t\treturn x ** 2  # comment\n",
    "类型#上衣*版型#宽松*颜色#白色",
    "",
    " ",
]


@needs_glm4_real
def test_glm4_real_encode_matches_tiktoken(glm4_real):
    ranks = load_tiktoken_ranks(GLM4_REAL / "tokenizer.model")
    enc = tiktoken.Encoding("glm4", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens={})
    for text in [*GLM4_TEXTS, CORPUS_PATH.read_text(encoding="utf-8")]:
        assert glm4_real.encode(text) == enc.encode(text), text[:40]
    assert glm4_real.encode("你好，世界！") == [109377, 3837, 99011, 6313]


@needs_glm4_real
def test_glm4_real_layout(glm4_real):
    assert isinstance(glm4_real, GLM4Tokenizer)
    assert glm4_real.special_ids == {name: 151329 + k for k, name in enumerate(GLM4_SPECIALS)}
    assert glm4_real.stop_token_ids == [151329, 151336, 151338]
    assert (glm4_real.pad_token_id, glm4_real.eos_token_id, glm4_real.vocab_size) == (151329, 151329, 151343)
    assert glm4_real.hf("hi")["input_ids"] == [151331, 151333, 6023]


@needs_glm4_real
def test_glm4_real_chat_format(glm4_real):
    history = [("你好", "你好！有什么可以帮你？")]
    ids = prompt_ids(glm4_real, "讲个笑话", history)
    assert ids == [
        151331,
        151333,
        151336,
        198,
        109377,
        151337,
        198,
        109377,
        6313,
        101665,
        98516,
        108885,
        11314,
        151336,
        198,
        99059,
        98328,
        109971,
        151337,
    ]
    pieces = [glm4_real.decode([i], skip_special_tokens=False) for i in ids]
    assert pieces == [
        "[gMASK]",
        "<sop>",
        "<|user|>",
        "\n",
        "你好",
        "<|assistant|>",
        "\n",
        "你好",
        "！",
        "有什么",
        "可以",
        "帮你",
        "？",
        "<|user|>",
        "\n",
        "讲",
        "个",
        "笑话",
        "<|assistant|>",
    ]
    # ... and it is what the checkpoint's own chat template renders and tokenizes.
    rendered = glm4_real.hf.apply_chat_template(
        chat_messages("讲个笑话", history), tokenize=False, add_generation_prompt=True
    )
    assert glm4_real.hf.encode(rendered, add_special_tokens=False) == ids
    input_ids, labels = encode_example(glm4_real, "你好", "我很好", None, 64, 2)
    assert input_ids == [151331, 151333, 151336, 198, 109377, 151337, 198, 98326, 151329]  # \n 我 | 很好 cut
    assert labels == [-100] * 6 + [198, 98326, 151329]
