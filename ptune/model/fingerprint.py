"""Which base model a prefix was trained on, by content: a fingerprint recorded in `prefix_config.json`.

A prefix only works with the base it was trained on, and two bases of the same family and shape (a ChatGLM3-6B
and a fine-tuned ChatGLM3-6B, or two tiny test models) load each other's prefixes without any error. The path
recorded beside the fingerprint cannot tell them apart (a moved or copied folder is the same model; another
model may sit at the old path), so the fingerprint hashes what the model *is*:

- `config.json`'s content, its keys sorted, without the keys that change when a folder is copied, re-saved or
  loaded another way (`_name_or_path`, `transformers_version`, `torch_dtype` / `dtype`);
- the sign bits of 16 rows of the input embedding [16, H], spread over the vocabulary. Sign bits and not the
  values: one file loaded as float32, bfloat16 or float16 rounds its values differently but keeps every sign,
  so the same model gives the same fingerprint whatever `--dtype` (and `--quantization_bit`, which leaves
  the embedding alone), while two different trainings of one shape differ in thousands of signs. Reading 16
  rows costs nothing next to loading the model; no file is hashed whole.
"""

from __future__ import annotations

import hashlib
import json

import torch

IGNORED_CONFIG_KEYS = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype"})
ROWS = 16


def base_fingerprint(config: dict, embedding: torch.Tensor) -> str:
    """ "sha256:<hex>" of a base's config.json (a dict) and its input embedding weight [V, H] (module docstring)."""
    digest = hashlib.sha256()
    kept = {key: value for key, value in config.items() if key not in IGNORED_CONFIG_KEYS}
    digest.update(json.dumps(kept, sort_keys=True, ensure_ascii=False).encode())
    rows = torch.linspace(0, embedding.shape[0] - 1, ROWS).long().to(embedding.device)
    signs = torch.signbit(embedding.detach().index_select(0, rows)).to(torch.uint8).flatten().cpu()
    digest.update(bytes(signs.tolist()))
    return "sha256:" + digest.hexdigest()
