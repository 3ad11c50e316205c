"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import pytest

from tools.tiny import make_tiny_checkpoint


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


def pytest_collection_modifyitems(config, items):
    """tests/e2e runs the CLI end to end (training, subprocesses): marked `slow`, so that
    `python -m pytest -m "not slow"` is the quick unit layer; several-process tests are also `multiprocess`."""
    for item in items:
        parts = item.path.parts
        if "e2e" in parts:
            item.add_marker(pytest.mark.slow)
        if item.path.name == "test_distributed.py":
            item.add_marker(pytest.mark.multiprocess)
