"""`ptune data`'s pieces: learned spans marked in decoded text, and the per-split counts."""

import datasets

from ptune.data.report import marked, split_stats


class CharTok:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_learned_spans_are_marked():
    ids = [ord(c) for c in "q:ab|c!"]
    labels = [-100, -100, ord("a"), ord("b"), -100, ord("c"), ord("!")]
    assert marked(CharTok(), ids, labels) == "q:⟦ab⟧|⟦c!⟧"


def test_split_stats_count_drops_cuts_and_long_rows():
    encoded = {
        "drop": ["", "too long", "", "too long", "empty"],
        "lost_turns": [0, 0, 2, 0, 0],
        "cut": [0, 0, 0, 0, 1],
        "source_len": [10, 99, 40, 70, 5],
        "target_len": [3, 9, 20, 2, 0],
    }
    split = datasets.Dataset.from_dict(encoded)
    assert split_stats(split, max_source=32, max_target=8) == {
        "rows": 5,
        "kept": 2,
        "dropped": {"too long": 2, "empty": 1},
        "lost_history": 2,
        "prompts_over_max_source_length": 3,
        "answers_over_max_target_length": 2,
        "prompt_tokens_max": 99,
        "answer_tokens_max": 20,
    }
