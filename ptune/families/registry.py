"""The one registry of model families: every module of ``ptune.families`` but base and registry is a family.

Adding a family is adding one module ``ptune/families/<name>.py`` that defines ``FAMILY`` (a
`ptune.families.base.Family` whose ``name`` is the module's name); the registry finds it, in module-name
order (the order names are listed in messages and --chat_format's choices).  Here, with no family named:

- `detect_family(folder, chat_format)`: which family a model folder is (or the one --chat_format names,
  checked against the files); `load_tokenizer` = that family's tokenizer.
- `checkpoint_family(config, ...)`: the family config.json alone shows (for weight conversion and export).
- `get_family(name)`, `family_of(tok)`, `FAMILY_NAMES`, `tokenizer_files()`.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from ptune.families.base import ChatTokenizer, Family, ModelFolder, or_list
from ptune.io.errors import UserError

NOT_FAMILIES = ("base", "registry")


def _discover() -> tuple[Family, ...]:
    """The FAMILY of every family module, in module-name order."""
    families = []
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name in NOT_FAMILIES or info.name.startswith("_"):
            continue
        family = importlib.import_module(f"ptune.families.{info.name}").FAMILY
        if not isinstance(family, Family) or family.name != info.name:
            raise TypeError(f"ptune/families/{info.name}.py: FAMILY must be a Family named {info.name!r}")
        families.append(family)
    return tuple(families)


FAMILIES: tuple[Family, ...] = _discover()
FAMILY_NAMES: tuple[str, ...] = tuple(f.name for f in FAMILIES)
_BY_NAME = {f.name: f for f in FAMILIES}


def get_family(name: str) -> Family:
    """The family called `name`; ValueError for an unknown one."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r} (one of {', '.join(FAMILY_NAMES)})") from None


def family_of(tok: Any) -> Family:
    """The family of a tokenizer (its ``family`` name)."""
    return get_family(tok.family)


def tokenizer_files() -> list[str]:
    """Every file name a tokenizer of any family may consist of, in family order."""
    return list(dict.fromkeys(name for f in FAMILIES for name in f.tokenizer_files))


def checkpoint_family(
    config: dict, tokenizer_config: dict | None = None, recorded_family: str | None = None
) -> Family | None:
    """The family config.json (with tokenizer_config.json and a prefix's recorded family) shows by itself,
    or None when it cannot tell (ChatGLM2 and ChatGLM3 weights look alike; no config)."""
    return next(
        (f for f in FAMILIES if f.is_checkpoint(config, tokenizer_config or {}, recorded_family)), None
    )


def detect_family(
    model_name_or_path: str | Path, chat_format: str | None = None
) -> tuple[Family, ModelFolder]:
    """The family of the model in folder `model_name_or_path` (and the folder as read).

    Original THUDM folders are recognised by a family's config.json ``model_type`` ("chatglm") or
    tokenizer_config.json ``tokenizer_class`` (also after a conversion that changed model_type), or by a
    `chat_format` naming such a family.  Families refuse folders whose tokenizer they cannot read
    (`Family.refusal`): GLM-4 has a tiktoken ``tokenizer.model`` (or class ChatGLM4Tokenizer), ChatGLM2/3 a
    SentencePiece one, native only non-original folders.  Several left (ChatGLM2 vs ChatGLM3): decided by, in
    order, a family name in config.json ``_name_or_path``, tokenizer_config.json ``name_or_path``, the folder
    name (the newest family named wins); the folder's ``tokenization_chatglm.py`` read as text; else UserError
    asking for ``--chat_format``.  An explicit `chat_format` wins, unless its family refuses the folder.

    Raises UserError for an unknown `chat_format`, a missing folder or tokenizer file, malformed JSON, an
    unknown model_type, a `chat_format` that contradicts the files, or an undecidable folder.
    """
    if chat_format is not None and chat_format not in _BY_NAME:
        raise UserError(f"--chat_format {chat_format!r}: expected one of {', '.join(FAMILY_NAMES)}")
    folder = ModelFolder.read(model_name_or_path)
    chosen = _BY_NAME.get(chat_format) if chat_format is not None else None
    folder.tokenizer_formats = {c: f.tokenizer_format for f in FAMILIES for c in f.tokenizer_classes}
    folder.families = FAMILIES
    model_type, tokenizer_class = folder.config.get("model_type"), folder.tokenizer_class
    folder.original = (
        (isinstance(model_type, str) and model_type in {f.model_type for f in FAMILIES if f.model_type})
        or (isinstance(tokenizer_class, str) and tokenizer_class in folder.tokenizer_formats)
        or (chosen is not None and chosen.model_type is not None)
    )
    _check_model_type(folder)
    if chosen is not None:
        reason = chosen.refusal(folder)
        if reason:
            raise UserError(f"--chat_format {chosen.name}: {reason}")
        return chosen, folder
    candidates = [f for f in FAMILIES if f.refusal(folder) is None]
    if len(candidates) == 1:
        return candidates[0], folder
    newest_first = candidates[::-1]
    for name in folder.names():
        for family in newest_first:
            if family.name in name.lower():
                return family, folder
    code = folder.path / "tokenization_chatglm.py"
    if code.is_file():  # read as text only, never executed
        text = code.read_text(encoding="utf-8", errors="replace")
        for family in newest_first:
            if family.tokenizer_code_says(text):
                return family, folder
    raise UserError(
        f"{folder.path}: cannot tell whether this is a {or_list([f.title for f in candidates])} checkpoint "
        f"(the prompt formats differ); pass --chat_format {'|'.join(f.name for f in candidates)}"
    )


def load_tokenizer(model_name_or_path: str | Path, chat_format: str | None = None) -> ChatTokenizer:
    """The tokenizer of the model in folder `model_name_or_path`, as its family's object (`detect_family`).

    Remote code (``tokenization_chatglm.py``) is never executed; native tokenizers load with
    ``AutoTokenizer.from_pretrained`` without ``trust_remote_code``.
    """
    family, folder = detect_family(model_name_or_path, chat_format)
    return family.load_tokenizer(folder)


def _check_model_type(folder: ModelFolder) -> None:
    """A model_type that is neither an original family's nor one transformers ships is an error naming it.

    transformers would say the folder "contains custom code" (chatglm folders declare an auto_map). Left alone:
    a native folder with an auto_map, whose custom code --trust_remote_code may run.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = folder.config.get("model_type")
    originals = {f.model_type for f in FAMILIES if f.model_type}
    if model_type is None or (
        isinstance(model_type, str) and (model_type in originals or model_type in CONFIG_MAPPING_NAMES)
    ):
        return
    if folder.original or "auto_map" not in folder.config:
        import transformers

        raise UserError(
            f"{folder.path / 'config.json'}: unknown model_type {model_type!r}: ptune loads 'chatglm' folders "
            f"(ChatGLM2/3, GLM-4) and the model types transformers {transformers.__version__} ships"
        )
