"""Model families: one module each (chatglm2, chatglm3, glm4, native), the Family interface (`base`) and the
one registry (`registry`) that finds them; see those modules' docstrings."""

from ptune.families.base import ChatTokenizer, Family, Message, ModelFolder, Turn
from ptune.families.registry import (
    FAMILIES,
    FAMILY_NAMES,
    checkpoint_family,
    detect_family,
    family_of,
    get_family,
    load_tokenizer,
    tokenizer_files,
)

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "ChatTokenizer",
    "Family",
    "Message",
    "ModelFolder",
    "Turn",
    "checkpoint_family",
    "detect_family",
    "family_of",
    "get_family",
    "load_tokenizer",
    "tokenizer_files",
]
