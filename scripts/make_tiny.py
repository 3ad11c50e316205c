#!/usr/bin/env python
"""Write a tiny checkpoint in the real format of a family.

python -m scripts.make_tiny OUT --family chatglm3
python -m scripts.make_tiny OUT --pretrain data/demo/train.json   # the demo's base: knows the words
"""

import argparse
import json

from tools.tiny import FAMILIES, make_tiny_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", help="folder to write (created)")
    parser.add_argument("--family", choices=FAMILIES, default="chatglm3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pretrain", help="JSON-lines file whose 'summary' texts the base is first trained on"
    )
    parser.add_argument("--pretrain_steps", type=int, default=400)
    args = parser.parse_args()
    texts = None
    if args.pretrain:
        with open(args.pretrain, encoding="utf-8") as f:
            texts = [json.loads(line)["summary"] for line in f if line.strip()]
    print(make_tiny_checkpoint(args.out, args.family, args.seed, texts, args.pretrain_steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
