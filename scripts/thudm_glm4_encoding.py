#!/usr/bin/env python
"""Compare ptune's encoding of a GLM-4 messages file with THUDM's GLM-4 finetune.py, on a real tokenizer.

python scripts/thudm_glm4_encoding.py /path/to/glm-4-9b-chat data/demo/chat_messages_tools.json

THUDM's process_batch (combine: false) is re-done independently of ptune's code: each message rendered alone by
the folder's chat template with jinja2 (trim_blocks, lstrip_blocks and a json.dumps tojson, as transformers'
chat templates), encoded with tiktoken over the folder's ranks as ChatGLM4Tokenizer does, loss mask shifted by
one, <|user|> appended.  Prints, per conversation, whether ptune's input_ids and labels are identical.
Needs tiktoken (a dev dependency); reads only tokenizer.model and tokenizer_config.json.
"""

import argparse
import base64
import json
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment

from ptune.data.formats import parse_row
from ptune.data.rows import read_rows
from ptune.data.truncation import encode_conversation
from ptune.families.glm4 import GLM4_PATTERN, GLM4_SPECIALS
from ptune.families.registry import load_tokenizer


def thudm_process_batch(folder: Path, messages: list[dict]) -> tuple[list[int], list[int]]:
    """THUDM GLM-4 finetune.py process_batch for one conversation (combine: false)."""
    import tiktoken

    ranks = {}
    for line in (folder / "tokenizer.model").read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    specials = {name: len(ranks) + k for k, name in enumerate(GLM4_SPECIALS)}
    enc = tiktoken.Encoding("glm4", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    template = env.from_string(json.loads((folder / "tokenizer_config.json").read_text())["chat_template"])
    ids, mask = [specials["[gMASK]"], specials["<sop>"]], [False, False]
    for message in messages:
        new = enc.encode(
            template.render(messages=[message], add_generation_prompt=False), allowed_special="all"
        )[2:]
        ids += new
        mask += [message["role"] not in ("system", "user", "observation")] * len(new)
    ids.append(specials["<|user|>"])
    mask = [False, *mask]
    return ids, [i if m else -100 for i, m in zip(ids, mask, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", type=Path, help="a glm-4-9b-chat folder (tokenizer.model, tokenizer_config.json)"
    )
    parser.add_argument("data", help="a messages-format file")
    args = parser.parse_args()
    tok = load_tokenizer(args.folder, "glm4")
    same = total = 0
    for line, row in read_rows(args.data):
        conversation = parse_row(row, "messages", f"{args.data}:{line}", None, True)
        ours = encode_conversation(tok, conversation, 10**9)
        theirs = thudm_process_batch(args.folder, row["messages"])
        total += 1
        same += (ours.input_ids, ours.labels) == theirs
        print(
            f"{args.data}:{line}: {len(theirs[0])} ids, identical: {(ours.input_ids, ours.labels) == theirs}"
        )
    print(f"{same}/{total} conversations identical")
    return 0 if same == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
