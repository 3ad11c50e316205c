"""ChatGLM2-6B: a SentencePiece tokenizer with specials appended after it, and the ``[Round n]`` text prompt.

Tokenizer (shared with ChatGLM3, which appends four role tokens more): a SentencePiece BPE
``tokenizer.model``; the special tokens are not in the SentencePiece vocabulary but appended right after it
(``n_words`` = SentencePiece size): ``[MASK]=n, [gMASK]=n+1, [sMASK]=n+2, sop=n+3, eop=n+4`` (the real
model: 64789..64793).  pad = ``<unk>`` = 0, eos = ``</s>`` = 2, and a turn ends only at eos.
Re-implemented here because THUDM's remote tokenizer code no longer loads on current transformers.

Prompt: ``[gMASK, sop]``, then for round i the text ``"[Round i]\n\n问：q\n\n答："`` (from round 2 on
preceded by the ``"\n\n"`` that ends the answer before it; the system prompt in front of round 1) encoded as
one piece, then the answer encoded on its own (`rounds`: the rule, written once).  ChatGLM2 has no system
role: a leading system message is plain text in front of it all, which is where THUDM put ``source_prefix``.
Conversations (every verb): each piece encoded alone, so an answer's span can be marked; learned: each
answer, and ``</s>`` after the last one (ChatGLM2's format has no end marker between rounds, so an answer other
than the last learns only its text).  THUDM's prompt_response rows (history as a column, `history_prompt`):
the whole text tokenized at once, as THUDM's build_prompt + encode did (the ids of an earlier answer can
differ by SentencePiece's leading "▁" piece; one round is the same ids either way).  The answer is
``encode(response)``.  ChatGLM2 has no tool or observation role: tools, tool calls and observations are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptune.families.base import ChatTokenizer, Family, Message, ModelFolder, OriginalFamily, Turn
from ptune.io.errors import UserError

# In id order, starting at the SentencePiece size n_words.
CHATGLM_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
# The families whose tokenizer is a `ChatGLMTokenizer`, by name (each family module adds itself), so that
# `ChatGLMTokenizer(path, "chatglm3")` works without the registry.
SENTENCEPIECE_FAMILIES: dict[str, Family] = {}


class ChatGLMTokenizer(ChatTokenizer):
    """SentencePiece plus the specials of `family` (a SentencePiece family: chatglm2 or chatglm3) appended at
    ``n_words`` (module docstring); stop ids are the family's.

    `encode` is plain ``sp.encode(text)``, which is what the originals do with add_special_tokens=False
    (including the dummy "▁" prefix: encode("\\n") is ["▁", "<0x0A>"]).  `decode` drops <unk>/<s>/</s> and
    the appended specials when `skip_special_tokens`; otherwise it writes them by name (the original wrote
    the appended ones as ""), which helps when reading raw model output.  Ids past `vocab_size` (the
    model's padded embedding rows) have no text and are always dropped.
    """

    def __init__(self, model_file: Path, family: str | Family, files: Sequence[str] = ("tokenizer.model",)):
        import sentencepiece as spm

        if isinstance(family, str):
            if family not in SENTENCEPIECE_FAMILIES:
                names = ", ".join(SENTENCEPIECE_FAMILIES)
                raise ValueError(f"ChatGLMTokenizer family must be one of {names}, not {family!r}")
            family = SENTENCEPIECE_FAMILIES[family]
        self.family = family.name
        self.model_file = Path(model_file)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except (OSError, RuntimeError) as e:
            raise UserError(f"{self.model_file}: not a readable SentencePiece model ({e})") from e
        self.n_words = self.sp.get_piece_size()
        names = family.special_tokens
        self.special_ids = {name: self.n_words + k for k, name in enumerate(names)}
        # Control pieces and appended specials: dropped by decode(skip_special_tokens=True), else named.
        self._special_names = {0: "<unk>", 1: "<s>", 2: "</s>"}
        self._special_names.update({i: name for name, i in self.special_ids.items()})
        self.pad_token_id = 0  # ChatGLM2/3 pad with <unk>
        self.bos_token_id = 1
        self.eos_token_id = 2
        self.stop_token_ids = family.stop_token_ids(self)
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


class ChatGLM2(OriginalFamily):
    """ChatGLM2-6B (module docstring)."""

    name = "chatglm2"
    title = "ChatGLM2"
    tokenizer_format = "sentencepiece"
    tokenizer_description = "a SentencePiece model"
    tokenizer_classes = ("ChatGLMTokenizer",)
    special_tokens = CHATGLM_SPECIALS
    source_prefix_first = True

    def tokenizer_code_says(self, code: str) -> bool:
        return "<|user|>" not in code  # ChatGLM2's tokenizer has no role tokens

    def load_tokenizer(self, folder: ModelFolder) -> ChatGLMTokenizer:
        return ChatGLMTokenizer(folder.require("tokenizer.model"), self, folder.present(self.tokenizer_files))

    def conversation_ids(self, tok: Any, conversation: Any) -> tuple[list[int], list[bool]]:
        ids = [tok.special_ids["[gMASK]"], tok.special_ids["sop"]]
        learned = [False, False]
        pieces = rounds(chatglm2_messages(conversation))
        for text, is_answer in pieces:
            piece = tok.encode(text)
            ids += piece
            learned += [is_answer] * len(piece)
        if not pieces[-1][1]:  # a conversation ending in a question: nothing learned after it
            return ids, learned
        return ids + [tok.eos_token_id], learned + [learned[-1]]

    def conversation_prompt(self, tok: Any, conversation: Any, cue: bool = True) -> list[int]:
        """Each piece encoded alone (as `conversation_ids`, whose ids start with these)."""
        pieces = _prompt_pieces(conversation, cue)
        return [tok.special_ids["[gMASK]"], tok.special_ids["sop"]] + [
            i for t, _ in pieces for i in tok.encode(t)
        ]

    def history_prompt(self, tok: Any, conversation: Any) -> list[int]:
        """The whole text encoded at once (THUDM's build_prompt, then encode)."""
        text = "".join(t for t, _ in _prompt_pieces(conversation, True))
        return [tok.special_ids["[gMASK]"], tok.special_ids["sop"]] + tok.encode(text)


def rounds(messages: Sequence[Message]) -> list[tuple[str, bool]]:
    """ChatGLM2's text of a leading system message and user / assistant messages in turn, as pieces
    (text, is an answer): each question's piece ends with ``"\\n\\n答："``; UserError for any other order."""
    pieces: list[tuple[str, bool]] = []
    text, expect, n = "", "user", 0
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "system" and i == 0:
            text = content
        elif role == expect == "user":
            n += 1
            text += f"{chr(10) * 2 if n > 1 else ''}[Round {n}]\n\n问：{content}\n\n答："
            expect = "assistant"
        elif role == expect == "assistant":
            pieces += [(text, False), (content, True)]
            text, expect = "", "user"
        else:
            raise UserError(
                f"ChatGLM2 messages are an optional system message, then user and assistant in turn; "
                f"message {i + 1} is {role!r}"
            )
    return pieces + [(text, False)] if text else pieces


def _prompt_pieces(conversation: Any, cue: bool) -> list[tuple[str, bool]]:
    """The pieces of a prompt: with `cue`, the conversation must end with a question (its "答：" is the cue)."""
    pieces = rounds(chatglm2_messages(conversation))
    if cue and pieces[-1][1]:
        raise UserError("a ChatGLM2 prompt for an answer must end with a user message")
    return pieces


def chatglm2_messages(conversation: Any) -> list[Message]:
    """The conversation's messages, refusing what ChatGLM2's format cannot write."""
    if conversation.tools is not None:
        raise UserError("ChatGLM2 has no tool format: tools are for chatglm3 / glm4 models")
    for m in conversation.messages:
        if m["role"] == "observation" or "tool_call" in m or m.get("metadata"):
            raise UserError("ChatGLM2 has no tool calls or observations (chatglm3 / glm4 models have)")
    return list(conversation.messages)


FAMILY = ChatGLM2()
SENTENCEPIECE_FAMILIES[FAMILY.name] = FAMILY


def chatglm2_prompt_text(query: str, history: Sequence[Turn] = (), source_prefix: str = "") -> str:
    """ChatGLM2's prompt text (THUDM build_prompt), with `source_prefix` in front of it all."""
    messages: list[Message] = [{"role": "system", "content": source_prefix}] if source_prefix else []
    for q, r in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
    return "".join(text for text, _ in rounds([*messages, {"role": "user", "content": query}]))
