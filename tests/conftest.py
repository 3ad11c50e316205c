"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import pytest

from ptune.tiny import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny ChatGLM3-format checkpoint folder (real file layout, random weights)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "chatglm3", "chatglm3")


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """Keep `datasets`' cache of tokenized data under tmp, in this process and in child processes."""
    import datasets

    folder = tmp_path_factory.mktemp("hf")
    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = folder / "datasets"
    yield folder
    datasets.config.HF_DATASETS_CACHE = old
