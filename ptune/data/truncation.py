"""Truncation, decided here for every verb: which turns of a conversation fit in a length, and the examples cut.

A conversation (ptune.data.conversations.Conversation) is encoded by its family (ptune.families: one builder each,
`conversation_ids` / `conversation_prompt`); this module chooses what is kept, the same way for all of them:

- `fit_prompt`: a prompt (ending with the cue for a new answer) of at most a length: the system prompt and
  tools stay, the fewest oldest turns go; a last question too long alone is cut (prompt_response data and
  `ptune chat`, `Family.cut_question`) or the prompt refused (eval/predict drop the row, `ptune chat --tools`
  says so).  `ptune chat`, its --tools mode, prompt_response rows and predict rows without an answer use it.
- `encode_conversation` (training: every assistant turn learned, whole turns dropped oldest first, then the
  last turn cut after an answer) and `encode_last_answer` (eval/predict: the last answer after the rest).

Families that encode message by message (ChatGLM3, GLM-4: `ConversationPieces`) encode each message once and
choose the cut on lengths (linear time); the others (ChatGLM2's round numbers, native templates) encode each
candidate whole, the number of turns to drop found by bisection (`first_fit`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ptune.data.labels import IGNORE_INDEX
from ptune.families.registry import family_of


@dataclass
class Fitted:
    """A prompt fitted to a length: its `ids`, the `lost` oldest turns dropped, whether the question was `cut`."""

    ids: list[int]
    lost: int = 0
    cut: bool = False


def fit_prompt(
    tok: Any, conversation: Any, max_length: int, cut_question: bool = False, history: bool = False
) -> Fitted | None:
    """The prompt of `conversation` (its last turn holds the question: a user message, or an observation
    after a call) in at most `max_length` ids, by the family's `conversation_prompt` (`history`: its
    `history_prompt`, for THUDM's prompt_response rows).

    The system prompt and tools stay and the fewest oldest turns are dropped (dropping a turn never
    lengthens a prompt: `first_fit`).  When even the last turn alone does not fit: with `cut_question`, its
    question is cut from the right, the template's closing part kept (`Family.cut_question`; UserError when
    not even an empty question fits); else None.
    """
    family = family_of(tok)
    turns = conversation.turns()
    pieces = family.conversation_pieces(tok, conversation)
    if pieces is not None:  # lengths are sums: each message encoded once
        suffix = suffix_lengths(pieces.turns)
        fixed = pieces.prompt_length([])
        lost = first_fit(len(turns), lambda k: fixed + suffix[k] <= max_length)
        if lost < len(turns):
            return Fitted(pieces.prompt(pieces.turns[lost:]), lost)
    else:
        prompt = family.history_prompt if history else family.conversation_prompt
        built: dict[int, list[int]] = {}

        def build(k: int) -> list[int]:
            if k not in built:
                built[k] = prompt(tok, conversation.with_turns(turns[k:]))
            return built[k]

        lost = first_fit(len(turns), lambda k: len(build(k)) <= max_length)
        if lost < len(turns):
            return Fitted(build(lost), lost)
    if not cut_question:
        return None
    last = conversation.with_turns(turns[-1:])
    return Fitted(family.cut_question(tok, last, max_length, history), len(turns) - 1, cut=True)


def suffix_lengths(turns: Sequence[Sequence[tuple[list[int], bool]]]) -> list[int]:
    """[k] = how many ids the pieces of turns[k:] hold (k = 0..len(turns))."""
    suffix = [0] * (len(turns) + 1)
    for k in range(len(turns) - 1, -1, -1):
        suffix[k] = suffix[k + 1] + sum(len(p) for p, _ in turns[k])
    return suffix


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
            self.suffix = suffix_lengths(self.pieces.turns)

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
    new answer (`fit_prompt`) and the reference is empty.  Message-by-message families choose the turns kept
    on lengths (`_LastAnswer`), each candidate checked by encoding it."""
    if not conversation.ends_with_answer():
        fitted = fit_prompt(tok, conversation, max_source)
        if fitted is None:
            return _too_long(max_source)
        target = family_of(tok).answer_ids(tok, "") + [tok.eos_token_id]
        target = target[:-1][:max_target] + target[-1:]
        return Encoded(fitted.ids + target, [IGNORE_INDEX] * len(fitted.ids) + target, lost_turns=fitted.lost)
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
        self.answer = messages[-1:]
        self.turns = type(conversation)(tuple(messages[:-1]), conversation.tools).turns()
        self.pieces = self.family.conversation_pieces(tok, conversation)
        if self.pieces is not None:
            turns = self.pieces.turns
            self.context = turns[:-1] + [turns[-1][:-1]]
            self.answer_piece = [turns[-1][-1:]]
            self.suffix = suffix_lengths(self.context)

    def example(self, lost: int) -> tuple[list[int], list[int]]:
        """(prompt, the answer's ids and end marker, uncut)."""
        if self.pieces is not None:
            ids, learned = self.pieces.ids(self.context[lost:] + self.answer_piece)
        else:
            part = self.conversation.with_turns(self.turns[lost:] + [self.answer])
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
        target = target[:-1][: max(max_target, 0)] + target[-1:]
        return Encoded(prompt + target, [IGNORE_INDEX] * len(prompt) + target, lost_turns=lost)
