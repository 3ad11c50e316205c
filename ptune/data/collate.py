"""Encoded examples → padded batches: each batch padded to its longest sample, never to a fixed length, and the
row order that generation batches in (longest prompt first) with its inverse."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptune.data.labels import IGNORE_INDEX


def pad_right(seqs: list[list[int]], value: int) -> list[list[int]]:
    """Pad every sequence on the right to the longest one."""
    width = max(len(s) for s in seqs)
    return [s + [value] * (width - len(s)) for s in seqs]


def pad_left(seqs: list[list[int]], value: int) -> list[list[int]]:
    """Pad every sequence on the left to the longest one (generation prompts)."""
    width = max(len(s) for s in seqs)
    return [[value] * (width - len(s)) + s for s in seqs]


def prompt_length(labels: list[int]) -> int:
    """Number of leading IGNORE_INDEX labels: the prompt part of an encoded example."""
    n = 0
    while n < len(labels) and labels[n] == IGNORE_INDEX:
        n += 1
    return n


def longest_prompt_first(labels: list[list[int]]) -> list[int]:
    """Row order for generation: longest prompt first, so each batch pads little and a batch too large for
    memory fails at the start rather than at the end. Stable, so equal lengths keep the file's order."""
    return sorted(range(len(labels)), key=lambda i: -prompt_length(labels[i]))


def restore_order(items: list, order: list[int]) -> list:
    """Undo `dataset.select(order)`: items[k] belongs to row order[k]."""
    out = [None] * len(order)
    for k, row in enumerate(order):
        out[row] = items[k]
    return out


@dataclass
class Collator:
    """Pads a batch to its longest sample.

    Always: `input_ids` (pad id), `labels` (IGNORE_INDEX), `attention_mask` [B, S], right-padded (teacher-forced
    loss).
    With `with_prompts`: also `prompt_ids` / `prompt_mask` [B, S'] left-padded for generation, and
    `answer_ids` [B, T] (the supervised answer without its end id, IGNORE_INDEX-padded) as the metrics' references.
    """

    pad_id: int
    with_prompts: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [list(r["input_ids"]) for r in rows]
        labels = [list(r["labels"]) for r in rows]
        batch = {
            "input_ids": torch.tensor(pad_right(ids, self.pad_id)),
            "labels": torch.tensor(pad_right(labels, IGNORE_INDEX)),
            "attention_mask": torch.tensor(pad_right([[1] * len(s) for s in ids], 0)),
        }
        if self.with_prompts:
            cut = [prompt_length(lab) for lab in labels]
            prompts = [s[:n] for s, n in zip(ids, cut, strict=True)]
            answers = [lab[n:-1] for lab, n in zip(labels, cut, strict=True)]
            batch["prompt_ids"] = torch.tensor(pad_left(prompts, self.pad_id))
            batch["prompt_mask"] = torch.tensor(pad_left([[1] * len(p) for p in prompts], 0))
            batch["answer_ids"] = torch.tensor(pad_right(answers, IGNORE_INDEX), dtype=torch.long)
        return batch
