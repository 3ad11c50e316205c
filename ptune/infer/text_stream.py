"""Answer ids → text, piece by piece, as they are generated: the one streaming detokenizer of `ptune chat`
and `ptune serve` (OpenAI's `stop` strings included).

Decoding each token alone would break characters whose UTF-8 bytes span several tokens (GLM-4's byte-level
BPE), and SentencePiece's spacing depends on the neighbours, so the whole answer so far is decoded after every
token and only what was not sent yet comes out. What may still change is held back: a trailing U+FFFD (an
incomplete character), trailing whitespace (the final answer is stripped, as `ptune predict` strips it) and a
tail that could be the start of a stop string. Leading whitespace (chatglm3/glm4 answers start with a
newline) is never sent. So the pieces, joined with `finish()`, are exactly the final text: `decode_response`
of the ids, cut before the first stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

REPLACEMENT_CHAR = "\ufffd"  # what a decoder writes for an incomplete UTF-8 sequence


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


class TextStream:
    """The answer of one generation as it grows: `push(token)` returns the new text to send (maybe ""),
    `finish()` the rest of the final answer (stripped, cut at a stop string), or `flush()` the rest exactly as
    decoded (an answer cut mid-character still shows a U+FFFD). `stopped` turns True once a stop string
    appeared (the generation should end); ids in `stop_ids` add no text."""

    def __init__(self, tokenizer, stop_ids: Sequence[int] = (), stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()

    def push(self, token: int) -> str:
        """Add one generated id; the text now safe to send."""
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
        """What was held back of the final answer, once it is over: the final text is `decode_response` of
        the ids (cut at a stop string)."""
        text = self._text()
        cut = find_stop(text, self.stops)
        final = (text if cut is None else text[:cut]).rstrip()
        return self._advance(final, len(final))

    def flush(self) -> str:
        """Whatever is still held back, as decoded (trailing whitespace and a dangling U+FFFD included): what
        `ptune chat` prints after an answer, which the user watched being written."""
        text = self._text()
        return self._advance(text, len(text))

    @property
    def text(self) -> str:
        return self.sent

    def _advance(self, text: str, upto: int) -> str:
        # Text once sent cannot be taken back: if a later token re-spells what was sent, send from the same
        # offset on (at worst a character of spacing repeats or is lost).
        new = text[len(self.sent) : max(upto, len(self.sent))]
        self.sent += new
        return new


def stream_answer(
    tok, pieces: Iterator[int], show: Callable[[str], None]
) -> tuple[list[int], TextStream, bool]:
    """Hand the text of one answer to `show` as it settles, from `pieces` (its ids as generated,
    `ptune.infer.generate.stream_generate`) until one of `tok.stop_token_ids` ends it: (the answer's ids
    without the stop id, the stream (`flush()`: what is still held back), whether Ctrl-C stopped it). Ctrl-C
    stops the answer (`ptune chat`, `chat --tools`), and what was shown stays shown."""
    stream, tokens, stopped = TextStream(tok), [], False
    stops = set(tok.stop_token_ids)
    try:
        for token in pieces:
            if token in stops:
                break
            tokens.append(token)
            show(stream.push(token))
    except KeyboardInterrupt:
        stopped = True
    finally:
        pieces.close()
    return tokens, stream, stopped
