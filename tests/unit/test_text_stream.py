"""ptune.infer.text_stream: the one streaming detokenizer of chat and serve (more in test_serve_batch.py and
test_chat.py)."""

from __future__ import annotations

from ptune.infer.generate import GenerationSettings
from ptune.infer.text_stream import TextStream


class CharTokenizer:
    """ids are code points; 0 is a special token; decode drops it."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i != 0)


def test_chat_and_serve_end_one_stream_their_own_way():
    """Pieces hold back trailing whitespace alike; flush() (chat) gives the rest as decoded, finish() (serve)
    the final answer, stripped."""
    pieces = []
    for end in ("flush", "finish"):
        stream = TextStream(CharTokenizer(), stop_ids=[0])
        out = [stream.push(ord(c)) for c in "\nhi there \n"] + [stream.push(0)]
        pieces.append(out + [getattr(stream, end)()])
    assert pieces[0] == ["", "h", "i", "", " t", "h", "e", "r", "e", "", "", "", " \n"]
    assert pieces[1] == pieces[0][:-1] + [""]


def test_sampling_settings_from_an_openai_request():
    assert GenerationSettings.from_openai(0.0, 0.9, 5) == GenerationSettings(top_p=0.9, seed=5)
    assert GenerationSettings.from_openai(0.0).greedy
    sampled = GenerationSettings.from_openai(0.8, 0.9, 3)
    assert (sampled.do_sample, sampled.temperature, sampled.top_p, sampled.seed) == (True, 0.8, 0.9, 3)
    assert not sampled.greedy
