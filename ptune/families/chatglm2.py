"""ChatGLM2-6B: a SentencePiece tokenizer with specials appended after it, and the ``[Round n]`` text prompt.

Tokenizer (shared with ChatGLM3, which appends four role tokens more): a SentencePiece BPE
``tokenizer.model``; the special tokens are not in the SentencePiece vocabulary but appended right after it
(``n_words`` = SentencePiece size): ``[MASK]=n, [gMASK]=n+1, [sMASK]=n+2, sop=n+3, eop=n+4`` (the real
model: 64789..64793).  pad = ``<unk>`` = 0, eos = ``</s>`` = 2, and a turn ends only at eos.
Re-implemented here because THUDM's remote tokenizer code no longer loads on current transformers.

Prompt (THUDM's build_prompt + encode with special tokens): ids = ``[gMASK, sop] + encode(text)`` with text
``"[Round {i}]\\n\\n问：{q}\\n\\n答：{r}\\n\\n"`` per past turn (i from 1), then
``"[Round {n+1}]\\n\\n问：{query}\\n\\n答："``.  ChatGLM2 has no system role: a leading system message is
plain text in front of it all, which is where THUDM put ``source_prefix``.  The answer is ``encode(response)``.

Conversations: ``[gMASK, sop]``, then for round i the text ``"[Round i]\n\n问：q\n\n答："`` (from round 2 on
preceded by the ``"\n\n"`` that ends the answer before it; the system prompt in front of round 1) encoded
as one piece, then the answer encoded on its own (learned), and ``</s>`` after the last answer (learned).
ChatGLM2's format has no end marker between rounds, so an answer other than the last learns only its text.
ChatGLM2 has no tool or observation role: tools, tool calls and observations are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptune.families.base import ChatTokenizer, Message, ModelFolder, OriginalFamily, Turn
from ptune.io.errors import UserError

# In id order, starting at the SentencePiece size n_words.
CHATGLM_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")


class ChatGLMTokenizer(ChatTokenizer):
    """SentencePiece plus the specials of `family` (a SentencePiece family: chatglm2 or chatglm3) appended at
    ``n_words`` (module docstring); stop ids are the family's.

    `encode` is plain ``sp.encode(text)``, which is what the originals do with add_special_tokens=False
    (including the dummy "▁" prefix: encode("\\n") is ["▁", "<0x0A>"]).  `decode` drops <unk>/<s>/</s> and
    the appended specials when `skip_special_tokens`; otherwise it writes them by name (the original wrote
    the appended ones as ""), which helps when reading raw model output.  Ids past `vocab_size` (the
    model's padded embedding rows) have no text and are always dropped.
    """

    def __init__(self, model_file: Path, family: str, files: Sequence[str] = ("tokenizer.model",)):
        import sentencepiece as spm

        from ptune.families.registry import FAMILIES

        spec = {f.name: f for f in FAMILIES if f.tokenizer_format == "sentencepiece"}
        if family not in spec:
            raise ValueError(f"ChatGLMTokenizer family must be one of {', '.join(spec)}, not {family!r}")
        self.family = family
        self.model_file = Path(model_file)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except (OSError, RuntimeError) as e:
            raise UserError(f"{self.model_file}: not a readable SentencePiece model ({e})") from e
        self.n_words = self.sp.get_piece_size()
        names = spec[family].special_tokens
        self.special_ids = {name: self.n_words + k for k, name in enumerate(names)}
        # Control pieces and appended specials: dropped by decode(skip_special_tokens=True), else named.
        self._special_names = {0: "<unk>", 1: "<s>", 2: "</s>"}
        self._special_names.update({i: name for name, i in self.special_ids.items()})
        self.pad_token_id = 0  # ChatGLM2/3 pad with <unk>
        self.bos_token_id = 1
        self.eos_token_id = 2
        self.stop_token_ids = spec[family].stop_token_ids(self)
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

    def tokenizer_code_says(self, code: str) -> bool:
        return "<|user|>" not in code  # ChatGLM2's tokenizer has no role tokens

    def load_tokenizer(self, folder: ModelFolder) -> ChatGLMTokenizer:
        return ChatGLMTokenizer(
            folder.require("tokenizer.model"), self.name, folder.present(self.tokenizer_files)
        )

    def conversation(
        self, query: str, history: Sequence[Turn] = (), source_prefix: str = "", system: str = ""
    ) -> list[Message]:
        """`system` then `source_prefix` as a leading system message: plain text in front of the first round."""
        front = system + source_prefix
        head: list[Message] = [{"role": "system", "content": front}] if front else []
        return head + super().conversation(query, history)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The prompt text: a leading system message as is, then user/assistant rounds, then ``\\n\\n答：``."""
        parts: list[str] = []
        expect, rounds = "user", 0
        for i, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if role == "system" and i == 0:
                parts.append(content)
            elif role == expect == "user":
                rounds += 1
                parts.append(f"[Round {rounds}]\n\n问：{content}")
                expect = "assistant"
            elif role == expect == "assistant":
                parts.append(f"\n\n答：{content}\n\n")
                expect = "user"
            else:
                raise UserError(
                    f"ChatGLM2 messages are an optional system message, then user and assistant in turn; "
                    f"message {i + 1} is {role!r}"
                )
        if add_generation_prompt:
            if expect != "assistant":
                raise UserError("a ChatGLM2 prompt for an answer must end with a user message")
            parts.append("\n\n答：")
        return "".join(parts)

    def encode_messages(
        self, tok: Any, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
        head = [tok.special_ids["[gMASK]"], tok.special_ids["sop"]]
        return head + tok.encode(self.render(messages, add_generation_prompt))

    def conversation_ids(self, tok: Any, conversation: Any) -> tuple[list[int], list[bool]]:
        ids = [tok.special_ids["[gMASK]"], tok.special_ids["sop"]]
        learned = [False, False]
        text, rounds = "", 0
        for m in _chatglm2_messages(conversation):
            if m["role"] == "system":
                text = m["content"]
            elif m["role"] == "user":
                rounds += 1
                text += f"{chr(10) * 2 if rounds > 1 else ''}[Round {rounds}]\n\n问：{m['content']}\n\n答："
            else:
                piece = tok.encode(text)
                answer = tok.encode(m["content"])
                ids += piece + answer
                learned += [False] * len(piece) + [True] * len(answer)
                text = ""
        if text:  # a conversation ending in a question: nothing learned after it
            piece = tok.encode(text)
            return ids + piece, learned + [False] * len(piece)
        return ids + [tok.eos_token_id], learned + [learned[-1]]

    def conversation_prompt(self, tok: Any, conversation: Any) -> list[int]:
        return self.encode_messages(tok, _chatglm2_messages(conversation))


def _chatglm2_messages(conversation: Any) -> list[Message]:
    """The conversation's messages, refusing what ChatGLM2's format cannot write."""
    if conversation.tools is not None:
        raise UserError("ChatGLM2 has no tool format: tools are for chatglm3 / glm4 models")
    for m in conversation.messages:
        if m["role"] == "observation" or "tool_call" in m or m.get("metadata"):
            raise UserError("ChatGLM2 has no tool calls or observations (chatglm3 / glm4 models have)")
    ChatGLM2.render(FAMILY, conversation.messages, add_generation_prompt=False)  # user/assistant in turn
    return list(conversation.messages)


FAMILY = ChatGLM2()


def chatglm2_prompt_text(query: str, history: Sequence[Turn] = (), source_prefix: str = "") -> str:
    """ChatGLM2's prompt text (THUDM build_prompt), with `source_prefix` in front of it all."""
    return FAMILY.render(FAMILY.conversation(query, history, source_prefix))
