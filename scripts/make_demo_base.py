#!/usr/bin/env python
"""Make the demo's base model: a tiny ChatGLM3 checkpoint pretrained on product pages built from the demo's
training rows (see tools.tiny.make_demo_base), printing each stage.

python -m scripts.make_demo_base .cache/demo-base [--train_file data/demo/train.json --steps 600 --seed 0]
"""

import argparse
import json
import time
from pathlib import Path

from tools.tiny import make_demo_base

TRAIN_FILE = Path(__file__).resolve().parents[1] / "data" / "demo" / "train.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", help="folder to write (created)")
    parser.add_argument("--train_file", default=str(TRAIN_FILE))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with open(args.train_file, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    start = time.perf_counter()
    print(f"making the tiny ChatGLM3 base in {args.out} (once; pretraining {args.steps} steps)", flush=True)
    make_demo_base(args.out, rows, args.steps, args.seed, log=lambda line: print(line, flush=True))
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
