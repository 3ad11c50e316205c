"""Model families: the registry holds exactly the family modules, every family passes one contract on its tiny
checkpoint, and the messages interface (system prompts, metadata) that chat data and a server will use.

Adding a family = adding ``ptune/families/<name>.py`` and its tiny checkpoint kind to `TINY` below; the
contract then runs on it unchanged.
"""

from pathlib import Path

import pytest
from test_chat_format import A3, A4, CHATGLM2, CHATGLM3, G2, G4, GLM4, S2, S4, U3, U4, FakeTok, chars

import ptune.families as families
from ptune.data.chat_format import (
    conversation_prompt,
    decode_response,
    encode_example,
    encode_messages,
    encode_prompt,
    prompt_ids,
    thudm_conversation,
)
from ptune.families import FAMILIES, FAMILY_NAMES, checkpoint_family, detect_family, family_of, get_family
from ptune.families.base import Family
from ptune.families.registry import load_tokenizer
from ptune.io.errors import UserError
from tools.tiny import make_tiny_checkpoint

# The tiny checkpoint (`tools.tiny.make_tiny_checkpoint` kind) each family is tested on.
TINY = {"chatglm2": "chatglm2", "chatglm3": "chatglm3", "glm4": "glm4", "native": "llama"}
CONVERSATION = [
    {"role": "user", "content": "这件白色上衣"},
    {"role": "assistant", "content": "宽松版型"},
    {"role": "user", "content": "穿着舒适"},
]


def test_registry_lists_exactly_the_family_modules():
    folder = Path(families.__file__).parent
    modules = sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "base", "registry"))
    assert list(FAMILY_NAMES) == modules == ["chatglm2", "chatglm3", "glm4", "native"]
    for family in FAMILIES:
        assert isinstance(family, Family) and get_family(family.name) is family
    assert sorted(TINY) == modules  # a new family brings its tiny checkpoint to the contract below
    with pytest.raises(ValueError, match="unknown model family 'chatglm4'"):
        get_family("chatglm4")


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def tiny(request, tmp_path_factory):
    """(family, tiny checkpoint folder of that family)."""
    name = request.param
    return get_family(name), make_tiny_checkpoint(tmp_path_factory.mktemp(name) / "model", TINY[name])


def test_family_contract(tiny):
    family, folder = tiny
    # Detection: the folder alone says the family; naming it explicitly is accepted.
    assert detect_family(folder)[0] is family
    tok = load_tokenizer(folder)
    assert tok.family == family.name and family_of(tok) is family
    assert load_tokenizer(folder, family.name).family == family.name
    assert set(tok.files) <= set(family.tokenizer_files)

    # A 2-turn conversation: the messages interface and THUDM's (query, history) agree, ids are in range,
    # and the text reads back in order.
    ids = encode_messages(tok, CONVERSATION)
    history = [("这件白色上衣", "宽松版型")]
    assert ids == conversation_prompt(tok, thudm_conversation(tok, "穿着舒适", history))
    # THUDM's history column (prompt_response rows) is encoded as THUDM did: the same ids, but for ChatGLM2,
    # whose THUDM scripts tokenized the whole [Round n] text at once (every verb's prompt encodes its pieces).
    assert (ids == prompt_ids(tok, "穿着舒适", history)) is (family.name != "chatglm2")
    assert all(0 <= i < tok.vocab_size for i in ids)
    text = tok.decode(ids)
    assert text.index("这件白色上衣") < text.index("宽松版型") < text.index("穿着舒适")
    # Cut to the length of the last question's prompt, the first turn goes.
    last = prompt_ids(tok, "穿着舒适")
    assert encode_prompt(tok, "穿着舒适", [["这件白色上衣", "宽松版型"]], len(last)) == last
    input_ids, labels = encode_example(tok, "穿着舒适", "宽松", None, 64, 16)
    answer = family.answer_ids(tok, "宽松")
    assert input_ids == last + answer + [tok.eos_token_id]
    assert labels == [-100] * len(last) + answer + [tok.eos_token_id]

    # Stop ids are special tokens of this tokenizer (named when kept, dropped when skipped), eos among them;
    # the answer is what comes before the first one.
    assert tok.stop_token_ids == family.stop_token_ids(tok) and tok.eos_token_id in tok.stop_token_ids
    for i in tok.stop_token_ids:
        assert 0 <= i < tok.vocab_size
        assert tok.decode([i]) == "" and tok.decode([i], skip_special_tokens=False) != ""
        assert decode_response(tok, answer + [i] + answer) == "宽松"


def test_checkpoint_family_from_config():
    glm4 = get_family("glm4")
    assert checkpoint_family({"model_type": "chatglm", "padded_vocab_size": 151552}) is glm4
    assert checkpoint_family({"model_type": "chatglm"}, {"tokenizer_class": "ChatGLM4Tokenizer"}) is glm4
    assert checkpoint_family({}, {}, recorded_family="glm4") is glm4
    assert checkpoint_family({"model_type": "chatglm", "padded_vocab_size": 65024}) is None  # ChatGLM2 or 3
    assert checkpoint_family({"model_type": "llama", "eos_token_id": [1, 2]}) is get_family("native")
    assert checkpoint_family({}) is None


# ---------------------------------------------------------------------------------------------------------
# Messages beyond (query, history): system prompts and metadata, on the hand-made fakes of test_chat_format
# ---------------------------------------------------------------------------------------------------------


def test_system_message_and_metadata():
    S3, S4_ = 64794, 151335  # <|system|> of chatglm3 / glm4
    system = {"role": "system", "content": "be brief"}
    user = {"role": "user", "content": "hi"}
    chatglm3 = {**CHATGLM3.special_ids, "<|system|>": S3}
    glm4 = {**GLM4.special_ids, "<|system|>": S4_}
    tok3 = FakeTok("chatglm3", chatglm3, 2)
    tok4 = FakeTok("glm4", glm4, GLM4.eos_token_id)
    assert encode_messages(tok3, [system, user]) == [
        G2,
        S2,
        S3,
        10,
        *chars("be brief"),
        U3,
        10,
        104,
        105,
        A3,
    ]
    assert encode_messages(tok4, [system, user]) == [
        G4,
        S4,
        S4_,
        *chars("\nbe brief"),
        U4,
        *chars("\nhi"),
        A4,
    ]
    tool = {"role": "user", "content": "hi", "metadata": "m"}
    assert encode_messages(tok3, [tool], add_generation_prompt=False) == [G2, S2, U3, 109, 10, 104, 105]
    assert encode_messages(tok4, [tool], add_generation_prompt=False) == [G4, S4, U4, *chars("m\nhi")]
    # ChatGLM2 has no system role: the system text goes in front of the rounds (as THUDM's source_prefix).
    assert encode_messages(CHATGLM2, [system, user]) == [G2, S2] + chars(
        "be brief[Round 1]\n\n问：hi\n\n答："
    )
    with pytest.raises(UserError, match="message 2 is 'system'"):
        encode_messages(CHATGLM2, [user, system])
    with pytest.raises(UserError, match="ChatGLM3 has no 'tool' role"):
        encode_messages(tok3, [{"role": "tool", "content": "x"}])
