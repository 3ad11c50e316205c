"""THUDM's predictions file, `generated_predictions.txt`: one `{"labels": ..., "predict": ...}` per line."""

from __future__ import annotations

import json
from pathlib import Path

from ptune.errors import UserError
from ptune.io import replacing


def write_predictions(path: Path, pairs: list[tuple[str, str]]) -> None:
    """One JSON object per line, `{"labels": ..., "predict": ...}`, UTF-8, not escaped (THUDM's format)."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for pred, label in pairs:
            f.write(json.dumps({"labels": label, "predict": pred}, ensure_ascii=False) + "\n")


def read_predictions(path: Path) -> tuple[list[str], list[str]]:
    """(predictions, labels) of a generated_predictions.txt; a malformed line is an error naming it."""
    from ptune.data import iter_json_lines

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    preds, labels = [], []
    for lineno, row in iter_json_lines(path):
        if not isinstance(row.get("predict"), str) or not isinstance(row.get("labels"), str):
            raise UserError(f"{path}:{lineno}: expected an object with string 'labels' and 'predict'")
        preds.append(row["predict"])
        labels.append(row["labels"])
    return preds, labels
