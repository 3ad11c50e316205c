"""Answer ids → the text a client receives, piece by piece, with OpenAI's `stop` strings.

The whole answer so far is decoded after every token (decoding tokens one by one would split characters
whose UTF-8 bytes span tokens, and SentencePiece spacing depends on neighbours; see `ptune.infer.chat.TextStream`).
What may still change is held back: a trailing U+FFFD (an incomplete character), trailing whitespace (the
final answer is stripped, as `ptune predict` strips it) and a tail that could be the start of a stop string.
So the pieces sent, joined, are exactly the final text: `decode_response` of the ids, cut before the first
stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

REPLACEMENT_CHAR = "\ufffd"


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def settled_length(text: str, stops: Sequence[str]) -> int:
    """How much of `text` cannot change any more as tokens are added: without a trailing U+FFFD run, without
    trailing whitespace, and without a tail that is the beginning of a stop string (repeated until none is
    left: cutting a stop's beginning may leave whitespace at the end again)."""
    end = len(text)
    while True:
        cut = len(text[:end].rstrip(REPLACEMENT_CHAR).rstrip())
        for stop in stops:
            k = next((k for k in range(min(len(stop) - 1, cut), 0, -1) if text[:cut].endswith(stop[:k])), 0)
            cut -= k
        if cut == end:
            return end
        end = cut


class AnswerText:
    """The answer of one request as it grows: `push(token)` returns the new text to send (maybe ""),
    `finish()` the rest; `stopped` turns True once a stop string appeared (the row should end)."""

    def __init__(self, tokenizer, stop_ids: Sequence[int], stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()

    def push(self, token: int) -> str:
        """Add one generated id (a stop id adds no text); the text now safe to send."""
        if token in self.stop_ids or self.stopped:
            return ""
        self.ids.append(token)
        text = self._text()
        cut = find_stop(text, self.stops)
        if cut is not None:
            self.stopped = True
            return self._advance(text[:cut].rstrip(), len(text[:cut].rstrip()))
        return self._advance(text, settled_length(text, self.stops))

    def finish(self) -> str:
        """What was held back, once the answer is over: the final text is `decode_response` of the ids (cut
        at a stop string)."""
        text = self._text()
        cut = find_stop(text, self.stops)
        final = (text if cut is None else text[:cut]).rstrip()
        return self._advance(final, len(final))

    @property
    def text(self) -> str:
        return self.sent

    def _advance(self, text: str, upto: int) -> str:
        # Text once sent cannot be taken back: if a later token re-spells what was sent, send from the same
        # offset on (at worst a character of spacing repeats or is lost, as in `ptune chat`).
        new = text[len(self.sent) : max(upto, len(self.sent))]
        self.sent += new
        return new
