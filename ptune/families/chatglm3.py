"""ChatGLM3-6B: ChatGLM2's SentencePiece tokenizer with four role tokens more, and a role-token prompt.

Tokenizer: `ChatGLMTokenizer` (see chatglm2.py) with specials
``[MASK], [gMASK], [sMASK], sop, eop, <|system|>, <|user|>, <|assistant|>, <|observation|>`` from ``n_words``
(the real model: 64789..64797).  A turn ends at ``</s>``, ``<|user|>`` or ``<|observation|>``.

Prompt (THUDM's build_chat_input): ``[gMASK, sop]``, then per message
``[<|role|>] + encode(metadata + "\\n") + encode(content)``, then ``[<|assistant|>]``; ``source_prefix`` goes
in front of the current question.  The answer is ``encode("\\n") + encode(response)`` (the model writes the
newline after the role token).  Cut to a length, the question's own tokens are cut and the opening (up to
and including the newline) and the closing ``<|assistant|>`` kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ptune.errors import UserError
from ptune.families.base import Message, ModelFolder, OriginalFamily, too_small
from ptune.families.chatglm2 import CHATGLM_SPECIALS, ChatGLMTokenizer

CHATGLM3_ROLE_SPECIALS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")


class ChatGLM3(OriginalFamily):
    """ChatGLM3-6B (module docstring); GLM-4 (glm4.py) reuses its role-token prompt."""

    name = "chatglm3"
    title = "ChatGLM3"
    tokenizer_format = "sentencepiece"
    tokenizer_description = "a SentencePiece model"
    tokenizer_classes = ("ChatGLMTokenizer",)
    special_tokens = CHATGLM_SPECIALS + CHATGLM3_ROLE_SPECIALS
    begin_tokens: tuple[str, ...] = ("[gMASK]", "sop")  # every prompt starts with these

    def tokenizer_code_says(self, code: str) -> bool:
        return "<|user|>" in code  # ChatGLM3's tokenizer defines the role tokens

    def load_tokenizer(self, folder: ModelFolder) -> Any:
        return ChatGLMTokenizer(
            folder.require("tokenizer.model"), self.name, folder.present(self.tokenizer_files)
        )

    def stop_token_ids(self, tok: Any) -> list[int]:
        return [tok.eos_token_id, tok.special_ids["<|user|>"], tok.special_ids["<|observation|>"]]

    def role_id(self, tok: Any, role: str) -> int:
        try:
            return tok.special_ids[f"<|{role}|>"]
        except KeyError:
            raise UserError(f"{self.title} has no {role!r} role (no <|{role}|> token)") from None

    def message_parts(self, tok: Any, message: Message) -> tuple[list[int], list[int]]:
        """(opening, body) of one message: the role token and what precedes the content, then the content's
        ids (the part a cut shortens)."""
        opening = [self.role_id(tok, message["role"])] + tok.encode(message.get("metadata", "") + "\n")
        return opening, tok.encode(message["content"])

    def message_ids(self, tok: Any, message: Message) -> list[int]:
        opening, body = self.message_parts(tok, message)
        return opening + body

    def encode_messages(
        self, tok: Any, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
        ids = [tok.special_ids[name] for name in self.begin_tokens]
        for message in messages:
            ids += self.message_ids(tok, message)
        return ids + ([self.role_id(tok, "assistant")] if add_generation_prompt else [])

    def answer_ids(self, tok: Any, response: str) -> list[int]:
        return tok.encode("\n") + tok.encode(response)

    def cut_question(self, tok: Any, query: str, source_prefix: str, max_source_length: int) -> list[int]:
        """The prompt is a concatenation of separately encoded pieces, so the question's own tokens are cut;
        the opening (begin tokens, <|user|>, newline) and the closing <|assistant|> stay."""
        opening, question = self.message_parts(tok, {"role": "user", "content": source_prefix + query})
        head = [tok.special_ids[name] for name in self.begin_tokens] + opening
        tail = [self.role_id(tok, "assistant")]
        room = max_source_length - len(head) - len(tail)
        if room < 0:
            raise too_small(max_source_length, len(head) + len(tail))
        return head + question[:room] + tail


FAMILY = ChatGLM3()
