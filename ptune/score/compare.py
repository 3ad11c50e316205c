"""`--compare_base`: the prefix's metrics beside the base model's on the same prompts, as a table.

eval and predict run their split twice with one model — with the prefix, then with it switched off
(`PrefixTunedLM.without_prefix`) — and keep both sets of metrics in one results file, the base run's under
`base_` (`eval_loss` and `base_eval_loss`, `predict_rouge-l` and `base_predict_rouge-l`). This module pairs
them up and prints them, so that a user sees what the prefix changed and whether it lost anything.
"""

from __future__ import annotations

# Timing and sample counts are not about quality: left out of the table (still in the results file).
_NOT_COMPARED = ("_time", "_runtime", "_samples_per_second", "_steps_per_second", "_samples", "num_examples")


def comparison_rows(metrics: dict[str, float], split: str) -> list[tuple[str, float, float, float]]:
    """(metric, with prefix, base alone, prefix - base) for every `SPLIT_x` metric that has a `base_SPLIT_x`.

    `split` is "eval" or "predict"; rows keep the order of `metrics`.
    """
    rows = []
    for key, value in metrics.items():
        base = metrics.get(f"base_{key}")
        if not key.startswith(f"{split}_") or base is None or key.endswith(_NOT_COMPARED):
            continue
        rows.append((key[len(split) + 1 :], value, base, value - base))
    return rows


def format_comparison(rows: list[tuple[str, float, float, float]], split: str) -> str:
    """The rows as a text table: metric, prefix, base, delta (signed), 4 decimals."""
    width = max([len("metric"), *(len(name) for name, *_ in rows)])
    lines = [
        f"***** {split}: with the prefix vs the base model alone (--compare_base) *****",
        f"{'metric':<{width}}  {'prefix':>10}  {'base':>10}  {'delta':>10}",
    ]
    for name, prefix, base, delta in rows:
        lines.append(f"{name:<{width}}  {prefix:>10.4f}  {base:>10.4f}  {delta:>+10.4f}")
    return "\n".join(lines)
