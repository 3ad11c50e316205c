#!/usr/bin/env python
"""Print the demo's figures, the ones the README quotes (tests/test_demo.py checks that they agree):
the evaluation ROUGE-L at each evaluation, how many dev predictions name the input's colour and garment
before P-tuning (the base alone, no prefix) and after, both from output_dir/generated_predictions.txt as
`ptune predict --compare_base true` writes it, and both predictions for the first three dev rows that the base
alone gets wrong.

python scripts/demo_report.py [configs/demo.json]   (after scripts/demo.sh, which runs it last)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = 3


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def names_input(content: str, prediction: str) -> bool:
    """Whether the prediction names the colour and the garment of `content` ("类型#卫衣*颜色#绿色*...")."""
    attrs = dict(pair.split("#", 1) for pair in content.split("*"))
    return attrs["颜色"] in prediction and attrs["类型"] in prediction


def figures(config: Path) -> dict:
    """What the report shows, from the config's base model, output_dir and test_file (paths as in the
    config: relative ones are taken from the current directory, as ptune does)."""
    cfg = json.loads(config.read_text(encoding="utf-8"))
    out = Path(cfg["output_dir"])
    history = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    contents = [row[cfg["prompt_column"]] for row in read_jsonl(Path(cfg["test_file"]))]
    rows = read_jsonl(out / "generated_predictions.txt")  # written by `ptune predict --compare_base true`
    after, before = [row["predict"] for row in rows], [row["base_predict"] for row in rows]
    return {
        "rouge_l": [(h["step"], h["eval_rouge-l"]) for h in history if "eval_rouge-l" in h],
        "contents": contents,
        "before": before,
        "after": after,
        "hits_before": sum(map(names_input, contents, before)),
        "hits_after": sum(map(names_input, contents, after)),
    }


def render(fig: dict) -> str:
    n = len(fig["contents"])
    steps = " / ".join(str(step) for step, _ in fig["rouge_l"])
    values = " / ".join(f"{value:.1f}" for _, value in fig["rouge_l"])
    lines = [
        f"eval ROUGE-L at step {steps}: {values}",
        "dev predictions that name the input's colour and garment: "
        f"before {fig['hits_before']}/{n} ({100 * fig['hits_before'] / n:.0f}%), "
        f"after {fig['hits_after']}/{n} ({100 * fig['hits_after'] / n:.0f}%)",
    ]
    missed = [i for i in range(n) if not names_input(fig["contents"][i], fig["before"][i])]
    lines.append(f"the first {EXAMPLES} dev rows whose before-prediction misses them:")
    for i in missed[:EXAMPLES]:
        lines += [
            f"  {fig['contents'][i]}",
            f"    before: {fig['before'][i]}",
            f"    after:  {fig['after'][i]}",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", default="configs/demo.json")
    args = parser.parse_args(argv)
    print(render(figures(Path(args.config))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
