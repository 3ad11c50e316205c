#!/usr/bin/env python
"""Time truncating one long conversation (issue 16: 10,000 turns took 169 s when every dropped turn
re-encoded the rest of the conversation).

python -m scripts.bench_truncation [--family chatglm3] [--turns 1000,2000,4000] [--keep 8]

Writes a tiny tokenizer of the family (tools/tiny_tokenizers) into a temporary folder, builds one
conversation of N user/assistant turns and encodes it for training at a length that holds only about
`--keep` turns; prints the seconds per conversation and the ids kept.
"""

import argparse
import tempfile
import time

from ptune.data.conversation import Conversation
from ptune.data.truncation import encode_conversation, encode_last_answer
from ptune.families.registry import load_tokenizer
from tools.tiny_tokenizers import write_tiny_tokenizer


def conversation(turns: int) -> Conversation:
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for k in range(turns):
        messages += [
            {"role": "user", "content": f"question number {k}: what is {k} plus one?"},
            {"role": "assistant", "content": f"{k} plus one is {k + 1}."},
        ]
    return Conversation(tuple(messages))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="chatglm3", choices=("chatglm2", "chatglm3", "glm4"))
    parser.add_argument("--turns", default="1000,2000,4000")
    parser.add_argument("--keep", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        write_tiny_tokenizer(folder, args.family)
        tok = load_tokenizer(folder, args.family)
        print(f"family {args.family}")
        for n in (int(t) for t in args.turns.split(",")):
            chat = conversation(n)
            short = len(
                encode_conversation(tok, Conversation(chat.messages[: 1 + 2 * args.keep]), 10**9).input_ids
            )
            start = time.perf_counter()
            train = encode_conversation(tok, chat, short)
            middle = time.perf_counter()
            evaluate = encode_last_answer(tok, chat, short, 64)
            end = time.perf_counter()
            print(
                f"{n:6d} turns: train {middle - start:7.2f} s ({len(train.input_ids)} ids, "
                f"{train.lost_turns} turns dropped), eval {end - middle:7.2f} s ({evaluate.lost_turns} dropped)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
