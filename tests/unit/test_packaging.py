"""What the README's install line installs: every module ptune and the tests import is declared, every runtime
dependency is needed, the installed versions lie inside the declared ranges, CI installs and tests as the
README says, the shipped configs need nothing more, and ptune calls transformers' current API."""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from torch import nn

from ptune.infer.generate import GenerationSettings, generate
from ptune.model.load import load_model
from tests.imports import top_level_names

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# Modules of this repository that tests import by their own names.
LOCAL = {"ptune", "tests", "tools", "scripts"} | {p.stem for p in (REPO / "tests").rglob("*.py")}


def _declared(extra: str | None = None) -> set[str]:
    """Distribution names of [project.dependencies], or of one optional extra."""
    specs = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(s).name) for s in specs}


def _imported_distributions(folder: Path) -> set[str]:
    """The distributions providing every third-party module imported anywhere (lazily too) under `folder`."""
    modules = set().union(*(top_level_names(path) for path in folder.rglob("*.py")))
    modules -= set(sys.stdlib_module_names) | LOCAL | {"__future__"}
    provided = importlib.metadata.packages_distributions()
    # A module that is not installed here (tomli on Python >= 3.11) is named as its distribution.
    return {canonicalize_name(d) for m in modules for d in provided.get(m, [m])}


def _readme_setup() -> list[str]:
    """The commands of the README's first code block: install, demo, tests (comments dropped)."""
    block = (REPO / "README.md").read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines()]


def test_readme_install_line_installs_what_the_tests_import():
    install, _demo, test = _readme_setup()
    assert test == "python -m pytest -q"
    extras = re.fullmatch(r'pip install torch==2\.13\.0 && pip install -e "\.\[([a-z,]+)\]"', install)
    assert extras, install
    installed = _declared().union(*(_declared(e) for e in extras.group(1).split(",")))
    needed = set().union(*(_imported_distributions(REPO / d) for d in ("tests", "ptune", "tools")))
    assert {"pytest", "tiktoken", "bitsandbytes", "packaging"} <= needed
    assert needed - installed == set()


def _local_imports(path: Path) -> set[str]:
    """Top-level names of the repository's own non-runtime folders that `path` imports (lazily too)."""
    return top_level_names(path) & {"tools", "tests", "scripts"}


def test_the_runtime_never_imports_dev_tooling():
    """tools/ (tiny checkpoints and tokenizers), tests/ and scripts/ are not installed: ptune must not need them."""
    offenders = {str(p.relative_to(REPO)): _local_imports(p) for p in (REPO / "ptune").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert PROJECT.get("scripts") == {"ptune": "ptune.cli:main"}
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"] == {
        "include": ["ptune*"]
    }
    assert not list((REPO / "ptune").rglob("*.txt"))  # the tokenizer corpus lives in tools/


def test_ptune_imports_only_declared_runtime_dependencies():
    needed = _imported_distributions(REPO / "ptune")
    assert needed - _declared() == {"bitsandbytes"}  # imported only for --quantization_bit
    assert "bitsandbytes" in _declared("quant")


def test_every_runtime_dependency_is_needed():
    """tiktoken (only the tests use it) is not one; two are needed without ptune importing them."""
    not_imported = _declared() - _imported_distributions(REPO / "ptune")
    # protobuf: transformers' SentencePiece converter; tensorboard: the shipped THUDM recipes report to it (test
    # below). accelerate, which transformers' Trainer requires, ptune.train.sharding imports itself.
    assert not_imported == {"protobuf", "tensorboard"}


def test_configs_that_report_to_tensorboard_run_after_the_core_install():
    needing = set()
    from ptune.config.files import CONFIG_SUFFIXES, read_config

    for config in sorted(p for p in (REPO / "configs").iterdir() if p.name.endswith(CONFIG_SUFFIXES)):
        values = read_config(str(config)).values
        reports = values.get("report_to", [])
        reports = [reports] if isinstance(reports, str) else reports
        if "tensorboard" in reports or "all" in reports or values.get("logging_dir"):
            needing.add(config.name)
    assert needing == {
        "chatglm2-6b-adgen.json",
        "chatglm3-6b-adgen.json",
        "chatglm3-6b-adgen.yaml",
        "chatglm3-6b-chat.json",
        "chatglm3-6b-conversations.json",
        "glm-4-9b-chat-adgen.json",
        "glm-4-9b-chat-messages.json",
    }
    assert "tensorboard" in _declared()


@pytest.mark.parametrize("extra", [None, "dev"])
def test_installed_versions_lie_inside_the_declared_ranges(extra):
    specs = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    skipped = []
    for requirement in map(Requirement, specs):
        if requirement.marker is not None and not requirement.marker.evaluate():
            skipped.append(requirement.name)
            continue
        version = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)
    assert skipped == (["tomli"] if extra == "dev" and sys.version_info >= (3, 11) else [])


def test_ci_installs_and_tests_as_the_readme_says():
    install, _demo, test = _readme_setup()
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert [line for line in ci if "pip " in line] == [install]
    assert [line for line in ci if "pytest" in line] == [test + " -p no:cacheprovider"]
    assert not (REPO / "requirements-ci.txt").exists()  # no second list of versions to drift from pyproject


class _CurrentDecoder(nn.Module):
    """A decoder with transformers 5.24's signature: the cache comes as `cache`; `past_key_values` still works
    but warns, as there. It hands the call on to the real decoder under whichever name that one takes."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.inner_takes = (
            "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
        )

    def forward(self, cache=None, past_key_values=None, **kwargs):
        if past_key_values is not None:
            warnings.warn(
                "`past_key_values` is deprecated. Use `cache` instead.", FutureWarning, stacklevel=2
            )
            cache = past_key_values
        return self.inner(**kwargs, **{self.inner_takes: cache})


def test_ptune_passes_the_cache_as_the_decoder_names_it(tiny, monkeypatch):
    """transformers 5.24 renamed the decoder's `past_key_values` to `cache` (the old name prints a
    FutureWarning on every call): ptune's forward and generation must use the name the decoder declares."""
    torch.manual_seed(0)
    model = load_model(tiny, dtype="float32", device="cpu", pre_seq_len=4)
    ids = torch.tensor([[0, 0, 1000, 1002, 50, 60], [1000, 1002, 33, 44, 55, 66]])
    mask = (ids != 0).long()
    settings = GenerationSettings(max_new_tokens=5)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    tokens = generate(model, ids, mask, stop_ids=[], pad_id=0, settings=settings)
    monkeypatch.setattr(model.base, "get_decoder", lambda: _CurrentDecoder(model.base.model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            assert torch.equal(model(ids, attention_mask=mask).logits, logits)
        assert torch.equal(generate(model, ids, mask, stop_ids=[], pad_id=0, settings=settings), tokens)
