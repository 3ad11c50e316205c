"""THUDM's predictions file, `generated_predictions.txt`: one `{"labels": ..., "predict": ...}` per line
(plus `"base_predict"` with --compare_base; `ptune score` reads labels and predict)."""

from __future__ import annotations

import json
from pathlib import Path

from ptune.io.errors import UserError
from ptune.io.files import replacing


def write_predictions(path: Path, pairs: list[tuple[str, str]], base: list[str] | None = None) -> None:
    """One JSON object per line, `{"labels": ..., "predict": ...}`, UTF-8, not escaped (THUDM's format).

    `base` (--compare_base): the base model's answer to each row, written as a third field `base_predict`
    after `predict`, so that the two answers to one prompt sit on one line.
    """
    if base is not None and len(base) != len(pairs):
        raise ValueError(f"{len(base)} base answers for {len(pairs)} rows")
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, (pred, label) in enumerate(pairs):
            row = {"labels": label, "predict": pred}
            if base is not None:
                row["base_predict"] = base[i]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_predictions(path: Path) -> tuple[list[str], list[str]]:
    """(predictions, labels) of a generated_predictions.txt; a malformed line is an error naming it."""
    from ptune.data.rows import iter_json_lines

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    preds, labels = [], []
    for lineno, row in iter_json_lines(path):
        if not isinstance(row.get("predict"), str) or not isinstance(row.get("labels"), str):
            raise UserError(f"{path}:{lineno}: expected an object with string 'labels' and 'predict'")
        preds.append(row["predict"])
        labels.append(row["labels"])
    return preds, labels
