"""Chat prompt ids and training-example encoding: pure functions on strings and ids, for any family.

Every function takes the family tokenizer (anything with the `ptune.families.base.ChatTokenizer` attributes:
``family``, ``encode``, ``special_ids``, ``eos_token_id``; tests pass hand-made fakes) and returns plain
``list[int]``.  What differs between families (the prompt format, the answer's first ids, how a too-long
question is cut, the stop ids) is the family's (``ptune.families``, one module per family, where each format
is written down); this module is what is the same for all of them:

- prompts: `encode_messages` (role/content messages), `prompt_ids` (THUDM's query, history as
  ``[[question, answer], ...]`` oldest first, and source_prefix), `encode_prompt` (cut to a length);
- targets: `answer_ids` cut to ``max_target_length``, then ``eos``, so a target has at most
  ``max_target_length + 1`` ids, like THUDM's; `encode_example` puts prompt and target together;
- generated ids back to text: `strip_answer`, `decode_response`;
- conversations (ptune.data.conversations): `encode_conversation` (training: every assistant turn learned, whole
  turns dropped oldest first to fit) and `encode_last_answer` (eval/predict: the last answer after the rest);
  how a family writes a conversation is its `conversation_ids` / `conversation_prompt`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ptune.data.labels import IGNORE_INDEX
from ptune.families.base import Message, Turn, chat_messages, normalize_history
from ptune.families.chatglm2 import chatglm2_prompt_text
from ptune.families.registry import family_of

__all__ = [
    "IGNORE_INDEX",
    "Message",
    "Turn",
    "answer_ids",
    "chat_messages",
    "chatglm2_prompt_text",
    "decode_response",
    "Encoded",
    "encode_conversation",
    "encode_example",
    "encode_last_answer",
    "encode_messages",
    "encode_prompt",
    "normalize_history",
    "prompt_ids",
    "strip_answer",
    "target_ids",
]


def encode_messages(tok: Any, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
    """A conversation of role/content messages as the family's prompt ids (by default ending with the cue
    for the next answer)."""
    return family_of(tok).encode_messages(tok, messages, add_generation_prompt)


def prompt_ids(
    tok: Any, query: str, history: Sequence[Turn] = (), source_prefix: str = "", system: str = ""
) -> list[int]:
    """The full, untruncated prompt ids for the tokenizer's family (a system message first with `system`)."""
    return family_of(tok).prompt_ids(tok, query, history, source_prefix, system)


def answer_ids(tok: Any, response: str) -> list[int]:
    """The answer's ids without eos (chatglm3/glm4 include the newline that follows the role token)."""
    return family_of(tok).answer_ids(tok, response)


def target_ids(tok: Any, response: str, max_target_length: int) -> list[int]:
    """Answer ids cut to `max_target_length`, then eos: at most max_target_length + 1 ids (as THUDM)."""
    return answer_ids(tok, response)[: max(max_target_length, 0)] + [tok.eos_token_id]


def encode_prompt(
    tok: Any,
    query: str,
    history: Any = None,
    max_source_length: int = 1024,
    source_prefix: str = "",
    system: str = "",
) -> list[int]:
    """Prompt ids (special tokens included) of at most `max_source_length` ids, for training and generation.

    Unlike THUDM's right-truncation (which cut off the current question and the "答：" cue), history turns
    are dropped oldest first, re-encoding each time, until the prompt fits; if the current question alone
    still does not fit, it is cut from the right while the template's closing part is kept, so the model
    still sees where its answer starts (`Family.cut_question`).  UserError when even an empty question with
    the template and `source_prefix` does not fit.
    """
    return family_of(tok).encode_prompt(tok, query, history, max_source_length, source_prefix, system)


def encode_example(
    tok: Any,
    prompt: str,
    response: str,
    history: Any,
    max_source_length: int,
    max_target_length: int,
    source_prefix: str = "",
) -> tuple[list[int], list[int]]:
    """One training example: ``(input_ids, labels)``, no padding.

    ``input_ids = prompt_ids + target_ids`` and ``labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids``, where
    prompt_ids = `encode_prompt` (at most `max_source_length` ids, history dropped oldest first, then the
    question cut) and target_ids = `target_ids` (answer cut to `max_target_length`, then eos).
    """
    source = encode_prompt(tok, prompt, history, max_source_length, source_prefix)
    target = target_ids(tok, response, max_target_length)
    return source + target, [IGNORE_INDEX] * len(source) + target


def strip_answer(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """The answer part of generated ids: everything before the first stop id."""
    stops = set(stop_ids)
    cut = next((k for k, i in enumerate(ids) if int(i) in stops), len(ids))
    return list(ids[:cut])


def decode_response(tok: Any, ids: Sequence[int]) -> str:
    """Text of generated ids: cut at the first of `tok.stop_token_ids`, specials skipped, whitespace stripped.

    Stripping (as THUDM's predictions are) also removes the newline chatglm3/glm4 answers start with.
    """
    return tok.decode(strip_answer(ids, tok.stop_token_ids), skip_special_tokens=True).strip()


# ---------------------------------------------------------------------------------------------------------
# Conversations (ptune.data.conversations): every assistant turn learned in one example
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """One encoded example and what truncation did: `lost_turns` oldest turns dropped, `cut` messages cut
    off the end of the last turn kept, `dropped` the reason the example is left out ("" when kept)."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    lost_turns: int = 0
    cut: int = 0
    dropped: str = ""


def masked_labels(ids: Sequence[int], learned: Sequence[bool]) -> list[int]:
    """labels: the id where it is learned, IGNORE_INDEX elsewhere."""
    return [i if keep else IGNORE_INDEX for i, keep in zip(ids, learned, strict=True)]


def last_span(learned: Sequence[bool]) -> tuple[int, int]:
    """(start, end) of the last run of learned positions: the last answer and its end marker."""
    end = len(learned)
    while end and not learned[end - 1]:
        end -= 1
    start = end
    while start and learned[start - 1]:
        start -= 1
    return start, end


class _Turns:
    """A conversation's ids keeping its turns from `lost` on (and of the last, its first `keep` messages).

    With the family's `ConversationPieces` each message is encoded once and a length is a sum (linear in the
    conversation); otherwise every shorter conversation is encoded whole (the family's ids of a message
    depend on the others), each once (the last one kept for `ids` after `length`)."""

    def __init__(self, tok: Any, conversation: Any):
        self.family, self.tok, self.conversation = family_of(tok), tok, conversation
        self.turns = conversation.turns()
        self.pieces = self.family.conversation_pieces(tok, conversation)
        self._last: tuple[tuple[int, int | None], tuple[list[int], list[bool]]] | None = None
        if self.pieces is not None:  # lengths of turns[lost:] for every lost, from the end
            self.suffix = [0] * (len(self.turns) + 1)
            for k in range(len(self.turns) - 1, -1, -1):
                self.suffix[k] = self.suffix[k + 1] + sum(len(p) for p, _ in self.pieces.turns[k])

    def _kept(self, lost: int, keep: int | None) -> list:
        turns = self.pieces.turns if self.pieces is not None else self.turns
        kept = list(turns[lost:])
        return kept if keep is None else kept[:-1] + [kept[-1][:keep]]

    def ids(self, lost: int, keep: int | None = None) -> tuple[list[int], list[bool]]:
        if self.pieces is not None:
            return self.pieces.ids(self._kept(lost, keep))
        if self._last is None or self._last[0] != (lost, keep):  # only the last: length() then ids()
            shorter = self.conversation.with_turns(self._kept(lost, keep))
            self._last = (lost, keep), self.family.conversation_ids(self.tok, shorter)
        return self._last[1]

    def length(self, lost: int, keep: int | None = None) -> int:
        if self.pieces is None:
            return len(self.ids(lost, keep)[0])
        if keep is None:
            return self.pieces.length([]) + self.suffix[lost]
        return self.pieces.length(self._kept(lost, keep))


def encode_conversation(tok: Any, conversation: Any, max_length: int) -> Encoded:
    """A training example: every assistant turn learned, at most `max_length` ids.

    Too long: the system prompt and tools stay and the oldest whole turns go first; if the last turn alone
    is still too long it is cut after its last assistant message that fits (a turn with a tool call has
    several), and when not even its first answer fits the example is dropped.  Families that encode message
    by message (ChatGLM3, GLM-4) encode each message once and choose the cut on lengths (`_Turns`).
    """
    turns = _Turns(tok, conversation)
    lost = first_fit(len(turns.turns), lambda k: turns.length(k) <= max_length)
    if lost < len(turns.turns):
        ids, learned = turns.ids(lost)
        return Encoded(ids, masked_labels(ids, learned), lost_turns=lost)
    last, lost = turns.turns[-1], len(turns.turns) - 1
    full = turns.ids(lost)
    for keep in range(len(last) - 1, 0, -1):
        if last[keep - 1]["role"] != "assistant" or turns.length(lost, keep) > max_length:
            continue
        ids, learned = end_as_in_full(*turns.ids(lost, keep), *full)
        return Encoded(ids, masked_labels(ids, learned), lost, cut=len(last) - keep)
    return Encoded(dropped=f"longer than {max_length} tokens even with only its last turn's first answer")


def end_as_in_full(
    ids: Sequence[int], learned: Sequence[bool], full_ids: Sequence[int], full_learned: Sequence[bool]
) -> tuple[list[int], list[bool]]:
    """A conversation cut after an assistant message mid-turn ends with the family's end id (ChatGLM3 `</s>`,
    GLM-4 `<|user|>`), but there the whole conversation goes on with the next message's role token (after
    a tool call `<|observation|>`), which is what the model must learn to say at that point, not to stop.
    When `ids` are `full_ids` but for their last id, and both learn that position, the full one's id is kept.
    """
    n = len(ids)
    if (
        0 < n < len(full_ids)
        and list(full_ids[: n - 1]) == list(ids[: n - 1])
        and learned[-1]
        and full_learned[n - 1]
    ):
        return [*ids[:-1], full_ids[n - 1]], list(learned)
    return list(ids), list(learned)


def encode_last_answer(tok: Any, conversation: Any, max_source: int, max_target: int) -> Encoded:
    """An eval/predict example: the prompt is everything before the last assistant message (at most
    `max_source` ids: oldest turns dropped, else the example is dropped), the answer that message cut to
    `max_target` ids plus its end marker; without an assistant message at the end, the prompt asks for a
    new answer and the reference is empty.  Message-by-message families choose the turns kept on lengths
    (`_LastAnswer`), each candidate checked by encoding it."""
    last = _LastAnswer(tok, conversation)
    n = len(last.turns)
    if last.pieces is not None:  # the first `lost` whose prompt fits, on lengths; checked, else scanned
        lost = next((k for k in range(n) if last.prompt_length(k) <= max_source), n)
        fits = lost < n and len(last.example(lost)[0]) <= max_source
        if (fits or lost == n) and (lost == 0 or len(last.example(lost - 1)[0]) > max_source):
            return last.encoded(lost, max_target) if fits else _too_long(max_source)
    lost = first_fit(n, lambda k: len(last.example(k)[0]) <= max_source)
    return last.encoded(lost, max_target) if lost < n else _too_long(max_source)


def first_fit(n: int, fits: Callable[[int], bool]) -> int:
    """The fewest oldest turns to drop (0..n-1) for `fits`, or n when none does, by bisection: dropping a
    turn never lengthens a conversation (ChatGLM2's rounds are renumbered down; a template renders what is
    left), so `fits` is monotone, and a family whose ids of a message depend on the others (ChatGLM2, native
    templates: each candidate encoded whole) is truncated with O(log n) encodings, not O(n)."""
    low, high = 0, n  # the answer is in [low, high]; fits(high) is taken as true for high == n
    while low < high:
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid + 1
    return low


def _too_long(max_source: int) -> Encoded:
    return Encoded(dropped=f"its last question alone is longer than max_source_length {max_source}")


class _LastAnswer:
    """The (prompt, answer) ids of a conversation's last answer keeping the context's turns from `lost` on."""

    def __init__(self, tok: Any, conversation: Any):
        self.family, self.tok, self.conversation = family_of(tok), tok, conversation
        messages = list(conversation.messages)
        self.has_answer = conversation.ends_with_answer()
        context = messages[:-1] if self.has_answer else messages
        self.answer = messages[-1:] if self.has_answer else []
        self.turns = type(conversation)(tuple(context), conversation.tools).turns()
        self.pieces = self.family.conversation_pieces(tok, conversation)
        if self.pieces is not None:
            turns = self.pieces.turns
            self.context = turns[:-1] + [turns[-1][:-1]] if self.has_answer else turns
            self.answer_piece = [turns[-1][-1:]] if self.has_answer else []
            self.suffix = [0] * (len(self.context) + 1)
            for k in range(len(self.context) - 1, -1, -1):
                self.suffix[k] = self.suffix[k + 1] + sum(len(p) for p, _ in self.context[k])

    def example(self, lost: int) -> tuple[list[int], list[int]]:
        """(prompt, the answer's ids and end marker, uncut)."""
        if self.pieces is not None:
            kept = self.context[lost:]
            if not self.has_answer:
                return self.pieces.prompt(kept), self.family.answer_ids(self.tok, "") + [
                    self.tok.eos_token_id
                ]
            ids, learned = self.pieces.ids(kept + self.answer_piece)
        else:
            part = self.conversation.with_turns(self.turns[lost:] + ([self.answer] if self.answer else []))
            if not self.has_answer:
                prompt = self.family.conversation_prompt(self.tok, part)
                return prompt, self.family.answer_ids(self.tok, "") + [self.tok.eos_token_id]
            ids, learned = self.family.conversation_ids(self.tok, part)
        start, end = last_span(learned)
        return ids[:start], ids[start:end]

    def prompt_length(self, lost: int) -> int:
        """The prompt's length keeping turns from `lost` on, from the pieces' lengths (the answer's part
        measured once, on the whole conversation)."""
        if not hasattr(self, "_whole_prompt"):
            self._whole_prompt = len(self.example(0)[0])
        return self._whole_prompt - (self.suffix[0] - self.suffix[lost])

    def encoded(self, lost: int, max_target: int) -> Encoded:
        prompt, target = self.example(lost)
        if self.has_answer:
            target = target[:-1][: max(max_target, 0)] + target[-1:]
        else:
            target = target[:-1][:max_target] + target[-1:]
        return Encoded(prompt + target, [IGNORE_INDEX] * len(prompt) + target, lost_turns=lost)
