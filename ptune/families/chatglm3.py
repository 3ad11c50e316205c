"""ChatGLM3-6B: ChatGLM2's SentencePiece tokenizer with four role tokens more, and a role-token prompt.

Tokenizer: `ChatGLMTokenizer` (see chatglm2.py) with specials
``[MASK], [gMASK], [sMASK], sop, eop, <|system|>, <|user|>, <|assistant|>, <|observation|>`` from ``n_words``
(the real model: 64789..64797).  A turn ends at ``</s>``, ``<|user|>`` or ``<|observation|>``.

Prompt (THUDM's build_chat_input): ``[gMASK, sop]``, then per message
``[<|role|>] + encode(metadata + "\\n") + encode(content)``, then ``[<|assistant|>]``; ``source_prefix`` goes
in front of the current question.  The answer is ``encode("\\n") + encode(response)`` (the model writes the
newline after the role token).  Cut to a length, the question's own tokens are cut and the opening (up to
and including the newline) and the closing ``<|assistant|>`` kept.

Conversations (THUDM's finetune_hf.py process_batch, token for token): ``[gMASK, sop]``, each message as
above, then ``</s>``; learned: each assistant message after its role token and the id after it (the next
role token, or the final ``</s>``).  Tools become the system message's content ``system + "\n" +
json.dumps(tools, indent=4, ensure_ascii=False)`` (the tokenizer's build_chat_input; without a system
message, the tool demo's "Answer the following questions as best as you can. You have access to the
following tools:"); a tool call is an assistant message with the tool's name as metadata and
``"```python\ntool_call(arg='value')\n```"`` as content (THUDM's ChatGLM3 preprocess_utils format_function_call).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ptune.families.base import Message, ModelFolder, OriginalFamily, too_small
from ptune.families.chatglm2 import CHATGLM_SPECIALS, SENTENCEPIECE_FAMILIES, ChatGLMTokenizer
from ptune.io.errors import UserError

CHATGLM3_ROLE_SPECIALS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
# The system prompt ChatGLM3's tool demo puts in front of the tool definitions.
CHATGLM3_TOOLS_PROMPT = (
    "Answer the following questions as best as you can. You have access to the following tools:"
)


def learned_mask(
    head: Sequence[int], pieces: Sequence[tuple[Sequence[int], bool]], end_id: int
) -> tuple[list[int], list[bool]]:
    """ids = head + every piece + [end_id]; learned: the ids of an assistant piece after its first (role) id,
    and the id right after an assistant piece (the next piece's role token, or `end_id`): the marker that
    ends the turn.  This is THUDM's loss mask shifted by one (finetune_hf.py / finetune.py ``[False,
    *loss_masks]``).  Empty pieces (GLM-4 renders nothing for an empty message) are skipped."""
    ids, learned = list(head), [False] * len(head)
    after_answer = False
    for piece, is_answer in pieces:
        if not piece:
            continue
        ids += piece
        learned += [after_answer] + [is_answer] * (len(piece) - 1)
        after_answer = is_answer
    return ids + [end_id], learned + [after_answer]


Piece = tuple[list[int], bool]  # one message's ids, and whether it is an assistant message


@dataclass(frozen=True)
class ConversationPieces:
    """A conversation encoded message by message, for families whose ids are a concatenation of pieces each
    encoded on its own (ChatGLM3, GLM-4): `head` ids, the `system` piece (with the tools), each turn's pieces
    (`ptune.data.conversations.Conversation.turns` order), the `end_id` after the last message and the `cue` for a
    new answer.  Keeping any suffix of the turns gives the very ids `conversation_ids` gives for that
    shorter conversation, so truncation chooses its cut on lengths without encoding again (linear time)."""

    head: list[int]
    system: list[Piece]
    turns: list[list[Piece]]
    end_id: int
    cue: list[int]

    def length(self, turns: Sequence[Sequence[Piece]]) -> int:
        """len(ids(turns)[0]), without building them."""
        return (
            len(self.head)
            + sum(len(p) for p, _ in self.system)
            + sum(len(p) for t in turns for p, _ in t)
            + 1
        )

    def ids(self, turns: Sequence[Sequence[Piece]]) -> tuple[list[int], list[bool]]:
        """The ids of a conversation holding `turns` (some of `self.turns`), and which are learned."""
        return learned_mask(self.head, self.system + [p for t in turns for p in t], self.end_id)

    def prompt(self, turns: Sequence[Sequence[Piece]], cue: bool = True) -> list[int]:
        """The ids of a conversation holding `turns`, then (with `cue`) the cue for a new answer."""
        return (
            self.head
            + [i for p, _ in self.system for i in p]
            + [i for t in turns for p, _ in t for i in p]
            + (self.cue if cue else [])
        )

    def prompt_length(self, turns: Sequence[Sequence[Piece]]) -> int:
        """len(prompt(turns)), without building it."""
        return self.length(turns) - 1 + len(self.cue)


def tool_call_code(name: str, arguments: dict) -> str:
    """A ChatGLM3 tool call's text: THUDM's format_function_call, ``tool_call(k=v, ...)`` in a python fence
    (`ast.unparse` writes what astunparse wrote for these calls: keyword arguments, repr'd values)."""
    keywords = [ast.keyword(arg=k, value=ast.Constant(v)) for k, v in arguments.items()]
    call = ast.Call(func=ast.Name(id="tool_call"), args=[], keywords=keywords)
    return "```python\n" + ast.unparse(call) + "\n```"


class ChatGLM3(OriginalFamily):
    """ChatGLM3-6B (module docstring); GLM-4 (glm4.py) reuses its role-token prompt."""

    name = "chatglm3"
    call_format = "name+python"
    bare_tools = True
    title = "ChatGLM3"
    tokenizer_format = "sentencepiece"
    tokenizer_description = "a SentencePiece model"
    tokenizer_classes = ("ChatGLMTokenizer",)
    special_tokens = CHATGLM_SPECIALS + CHATGLM3_ROLE_SPECIALS
    begin_tokens: tuple[str, ...] = ("[gMASK]", "sop")  # every prompt starts with these

    def tokenizer_code_says(self, code: str) -> bool:
        return "<|user|>" in code  # ChatGLM3's tokenizer defines the role tokens

    def load_tokenizer(self, folder: ModelFolder) -> Any:
        return ChatGLMTokenizer(folder.require("tokenizer.model"), self, folder.present(self.tokenizer_files))

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

    def answer_ids(self, tok: Any, response: str) -> list[int]:
        return tok.encode("\n") + tok.encode(response)

    # -- conversations ------------------------------------------------------------------------------

    def system_message(self, content: str | None, tools: list | None) -> Message | None:
        """ChatGLM3's: the tools as JSON in the system message, after its prompt (its tokenizer's default
        tools prompt when the conversation has none)."""
        if tools is None:
            return super().system_message(content, tools)
        head = CHATGLM3_TOOLS_PROMPT if content is None else content
        return {"role": "system", "content": head + "\n" + json.dumps(tools, indent=4, ensure_ascii=False)}

    def tool_call_message(self, name: str, arguments: dict) -> Message:
        return {"role": "assistant", "metadata": name, "content": tool_call_code(name, arguments)}

    def end_id(self, tok: Any) -> int:
        """The id appended after the last message (learned when it ends an assistant turn)."""
        return tok.eos_token_id

    def piece_ids(self, tok: Any, message: Message) -> list[int]:
        """One message's ids inside a conversation (role token first)."""
        return self.message_ids(tok, message)

    def conversation_pieces(self, tok: Any, conversation: Any) -> ConversationPieces:
        """Each message encoded once (`piece_ids`), grouped as the conversation's turns."""
        messages = self.family_messages(conversation)
        pieces = [(self.piece_ids(tok, m), m["role"] == "assistant") for m in messages]
        turns, start = [], len(pieces) - (len(conversation.messages) - len(conversation.system))
        for turn in conversation.turns():
            turns.append(pieces[start : start + len(turn)])
            start += len(turn)
        head = [tok.special_ids[name] for name in self.begin_tokens]
        system = pieces[: len(pieces) - sum(len(t) for t in turns)]
        return ConversationPieces(head, system, turns, self.end_id(tok), [self.role_id(tok, "assistant")])

    def conversation_ids(self, tok: Any, conversation: Any) -> tuple[list[int], list[bool]]:
        pieces = self.conversation_pieces(tok, conversation)
        return pieces.ids(pieces.turns)

    def conversation_prompt(self, tok: Any, conversation: Any, cue: bool = True) -> list[int]:
        pieces = self.conversation_pieces(tok, conversation)
        return pieces.prompt(pieces.turns, cue)

    def cut_question(self, tok: Any, conversation: Any, max_length: int, history: bool = False) -> list[int]:
        """The prompt is a concatenation of separately encoded pieces, so the question's own tokens are cut;
        the opening (begin tokens, system message, <|user|>, newline) and the closing <|assistant|> stay."""
        messages = self.family_messages(conversation)
        opening, question = self.message_parts(tok, messages[-1])
        head = [tok.special_ids[name] for name in self.begin_tokens]
        head += [i for m in messages[:-1] for i in self.piece_ids(tok, m)] + opening
        tail = [self.role_id(tok, "assistant")]
        room = max_length - len(head) - len(tail)
        if room < 0:
            raise too_small(max_length, len(head) + len(tail))
        return head + question[:room] + tail


FAMILY = ChatGLM3()
SENTENCEPIECE_FAMILIES[FAMILY.name] = FAMILY
