"""Config files: JSON or YAML, read into `ConfigFile` — argument names to raw values, with where each was written.

Both formats mean the same thing: a mapping of ptune argument names (THUDM's and transformers' names) to values,
keys starting with "_" and "how_to_run" being comments; ptune.config.parse checks every value by its field's rule and
lets flags override it. A key given twice is an error in either format (json and PyYAML would keep the last).

YAML is read with PyYAML's safe loader restricted to the YAML 1.2 core schema, the schema of ruamel.yaml, which
THUDM's finetune_demo scripts read their configs with. PyYAML alone implements YAML 1.1, where
`learning_rate: 5e-5` (THUDM's own value) is the *string* "5e-5", `eval_strategy: no` is the boolean false,
`save_steps: 010` is 8 and `output_dir: 2024-01-01` a date; under 1.2 these are 5e-05, "no", 10 and a string.
A boolean field still accepts yes/no/on/off (ptune.config.argtypes converts strings by the field's type).

THUDM's finetune_demo YAML (ChatGLM3 `finetune_hf.py`, GLM-4 `finetune.py`: sections `data_config`,
`max_input_length`, `max_output_length`, `training_args`, `peft_config`) is mapped onto ptune's names by
`from_finetune_demo`; what has no ptune meaning is refused with the reason (ptune trains P-Tuning v2 only).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ptune.config.argtypes import BadValue, show
from ptune.io.errors import UserError

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# Keys of a config that are comments: configs start with a key that says how to run them.
COMMENT_KEYS = ("how_to_run",)


@dataclass
class ConfigFile:
    """A config's values by ptune argument name, and for messages where each came from.

    `names`: the key as written in the file where it differs from the argument (`peft_config.num_virtual_tokens`
    for pre_seq_len); `lines`: the line of each key (YAML only); `data_dir_relative`: arguments whose relative
    paths THUDM's scripts read inside their DATA_DIR argument (finetune_demo's data_config).
    """

    path: str
    values: dict[str, Any]
    names: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    data_dir_relative: tuple[str, ...] = ()

    def where(self, key: str) -> str:
        """`file:line` of a key where known, else the file."""
        return f"{self.path}:{self.lines[key]}" if key in self.lines else self.path

    def name(self, key: str) -> str:
        return self.names.get(key, key)


def read_config(path: str) -> ConfigFile:
    """Read a JSON (*.json) or YAML (*.yaml, *.yml) config; UserError for any problem, naming file:line:column."""
    text = _read_text(path)
    if path.endswith(".json"):
        data, lines = _load_json(path, text), {}
    else:
        data, lines = _load_yaml(path, text)
    kind = "JSON object" if path.endswith(".json") else "YAML mapping"
    if not isinstance(data, dict):
        example = '{"name": value, ...}' if path.endswith(".json") else "name: value lines"
        raise UserError(f"{path}: a config must be a {kind} ({example}), not {show(data)[:40]}")
    config = ConfigFile(path, {}, lines={k[0]: v for k, v in lines.items() if len(k) == 1})
    for key, value in data.items():
        if not isinstance(key, str):
            raise UserError(f"{config.where(key)}: key {show(key)} is not an argument name")
        if not (key.startswith("_") or key in COMMENT_KEYS):
            if not _plain(value):
                raise UserError(
                    f"{config.where(key)}: '{key}' holds a {type(value).__name__}; write a plain value "
                    "(string, number, true/false, null, list or mapping)"
                )
            config.values[key] = value
    if any(key in FINETUNE_DEMO_KEYS for key in config.values):
        return from_finetune_demo(config, lines)
    return config


def _plain(value: Any) -> bool:
    """Whether a value is made of JSON's types only (YAML tags such as !!timestamp or !!binary make others)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _read_text(path: str) -> str:
    from ptune.io.files import read_text

    return read_text(path, missing="no such config file")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json `object_pairs_hook`: a key given twice is a mistake (json would silently keep the last value)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise BadValue(f"key '{key}' appears twice")
        seen.add(key)
    return dict(pairs)


def _load_json(path: str, text: str) -> Any:
    from ptune.io.files import json_error

    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as error:
        raise json_error(path, text, error, "not valid JSON") from None
    except BadValue as error:
        raise UserError(f"{path}: {error}") from None


# ---------------------------------------------------------------------------------------------------- YAML
@functools.cache
def _yaml_loader() -> type:
    """PyYAML's SafeLoader with the YAML 1.2 core schema's implicit types (null, bool, int, float) only.

    Hand-written because PyYAML implements only YAML 1.1; ruamel.yaml (1.2) would be a second YAML library
    for four regular expressions. Tags, anchors and merge keys work as in the safe loader.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        yaml_implicit_resolvers: dict = {}

    def resolve(tag: str, pattern: str, first: str) -> None:
        Loader.add_implicit_resolver(f"tag:yaml.org,2002:{tag}", re.compile(pattern), list(first))

    resolve("null", r"^(?:~|null|Null|NULL|)$", "~nN")
    Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^$"), [""])  # an empty value
    resolve("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF")
    resolve("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789")
    number = r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    resolve("float", rf"^(?:{number}|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789.")
    resolve("merge", r"^(?:<<)$", "<")

    def integer(loader, node):  # 1.2: "010" is ten (1.1 read it as octal 8)
        text = loader.construct_scalar(node)
        base = {"0o": 8, "0x": 16}.get(text[:2], 10)
        return int(text[2:] if base != 10 else text, base)

    def number_(loader, node):
        text = loader.construct_scalar(node).lower()
        if text.lstrip("+-") == ".inf":
            return float(text.replace(".inf", "inf"))
        return float("nan") if text == ".nan" else float(text)

    Loader.add_constructor("tag:yaml.org,2002:int", integer)
    Loader.add_constructor("tag:yaml.org,2002:float", number_)
    return Loader


def _mapping_lines(path: str, node: Any, prefix: tuple = ()) -> dict[tuple, int]:
    """The line of every key of the (nested) mappings under `node`, by key path; a key given twice is an error."""
    import yaml

    lines: dict[tuple, int] = {}
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
            continue
        key = (*prefix, key_node.value)
        line = key_node.start_mark.line + 1
        if key in lines:
            raise UserError(
                f"{path}:{line}: key '{'.'.join(key)}' appears twice (first on line {lines[key]}); "
                "YAML readers would silently keep the last value"
            )
        lines[key] = line
        lines.update(_mapping_lines(path, value_node, key))
    return lines


def _load_yaml(path: str, text: str) -> tuple[Any, dict[tuple, int]]:
    """The document and the lines of its keys; syntax errors are one line naming file:line:column."""
    import yaml

    loader = _yaml_loader()(text)
    try:
        node = loader.get_single_node()
        lines = _mapping_lines(path, node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = " ".join(", ".join(filter(None, (error.context, error.problem))).split())
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        raise UserError(f"{where}: not valid YAML ({problem})") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    finally:
        loader.dispose()
    return data, lines


# ------------------------------------------------------------------------------------- THUDM finetune_demo
FINETUNE_DEMO_KEYS = (
    "data_config",
    "max_input_length",
    "max_output_length",
    "training_args",
    "peft_config",
    "combine",
    "freezeV",
)
_DATA_CONFIG = {
    "train_file": "train_file",
    "val_file": "validation_file",
    "test_file": "test_file",
    "num_proc": "preprocessing_num_workers",
}
_TOP = {"max_input_length": "max_source_length", "max_output_length": "max_target_length"}
_GENERATION_CONFIG = ("max_new_tokens", "do_sample", "top_p", "temperature", "num_beams")
_PEFT_MAPPED = {"num_virtual_tokens": "pre_seq_len", "prefix_projection": "prefix_projection"}
# peft reads these from the model config when unset; ptune always does (the prefix must fit the attention).
_PEFT_FROM_MODEL = ("num_attention_heads", "token_dim", "num_layers", "num_transformer_submodules")
_PEFT_FIXED = {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM"}


def from_finetune_demo(config: ConfigFile, lines: dict[tuple, int]) -> ConfigFile:
    """Map a THUDM finetune_demo config (ChatGLM3 finetune_hf.py, GLM-4 finetune.py) onto ptune's arguments.

    data_config.{train_file, val_file, test_file, num_proc} -> train_file, validation_file, test_file,
    preprocessing_num_workers (relative paths are inside THUDM's DATA_DIR argument: ptune.config.parse asks for
    --data_dir); max_input_length -> max_source_length; max_output_length -> max_target_length;
    training_args.* -> the same training argument, its generation_config.* -> max_new_tokens, do_sample, top_p,
    temperature, num_beams; peft_config.num_virtual_tokens -> pre_seq_len. Keys outside these sections are
    ptune arguments. Refused: another peft_type (LoRA ...), no peft_config (full fine-tuning), combine false.
    """
    out = ConfigFile(config.path, {}, lines=dict(config.lines))

    def at(key: tuple) -> str:  # file:line (YAML), or the file (a JSON config in THUDM's layout)
        return f"{config.path}:{lines[key]}" if key in lines else config.path

    def put(key: tuple, value: Any, name: str) -> None:
        label = ".".join(key)
        if name in out.values:
            first = f" (line {out.lines[name]})" if name in out.lines else ""
            raise UserError(
                f"{at(key)}: '{label}' sets {name}, which '{out.name(name)}'{first} already sets; keep one"
            )
        out.values[name] = value
        if label != name:
            out.names[name] = label
        if key in lines:
            out.lines[name] = lines[key]

    def section(name: str) -> dict[str, Any]:
        value = config.values.get(name) or {}
        if not isinstance(value, dict):
            raise UserError(f"{config.where(name)}: '{name}' must be a mapping of names to values")
        return value

    def refuse(key: tuple, why: str) -> UserError:
        return UserError(f"{at(key)}: '{'.'.join(key)}' {why}")

    if "peft_config" not in config.values:
        raise UserError(
            f"{config.path}: a THUDM finetune_demo config without peft_config is full fine-tuning (sft.yaml); "
            "ptune does P-Tuning v2 only: add peft_config with peft_type PREFIX_TUNING and num_virtual_tokens"
        )
    for key, value in config.values.items():
        if key not in FINETUNE_DEMO_KEYS:
            put((key,), value, key)
        elif key in _TOP:
            put((key,), value, _TOP[key])
    for key, value in section("data_config").items():
        if key not in _DATA_CONFIG:
            raise refuse(("data_config", key), f"is not a data_config key ({', '.join(_DATA_CONFIG)})")
        put(("data_config", key), value, _DATA_CONFIG[key])
    _map_training_args(section("training_args"), put, refuse)
    _map_peft_config(section("peft_config"), put, refuse)
    if config.values.get("combine") is True:
        # GLM-4's ptuning_v2.yaml sets it: refusing would refuse THUDM's own recipe, so say what differs.
        logging.getLogger("ptune").warning(
            "%s: combine: true made THUDM's GLM-4 script learn only the last assistant turn; ptune learns "
            "every assistant turn of a conversation (THUDM's combine: false)",
            config.path,
        )
    out.data_dir_relative = tuple(
        name
        for key, name in _DATA_CONFIG.items()
        if name != "preprocessing_num_workers"
        and isinstance(out.values.get(name), str)
        and not os.path.isabs(out.values[name])
    )
    return out


def _map_training_args(training_args: dict[str, Any], put, refuse) -> None:
    """training_args.* are transformers' Seq2SeqTrainingArguments: the same names in ptune, except
    generation_config (a transformers GenerationConfig), whose settings are ptune's generation arguments."""
    from ptune.config.training_args import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for key, value in training_args.items():
        if key == "generation_config":
            if not isinstance(value, dict):
                raise refuse(("training_args", key), "must be a mapping (e.g. max_new_tokens: 512)")
            for name, setting in value.items():
                if name not in _GENERATION_CONFIG:
                    raise refuse(
                        ("training_args", key, name),
                        f"is not a generation setting ptune has ({', '.join(_GENERATION_CONFIG)})",
                    )
                put(("training_args", key, name), setting, name)
        elif key not in known:
            import difflib

            match = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean '{match[0]}'?)" if match else ""
            raise refuse(("training_args", key), f"is not a training argument{hint}")
        else:
            put(("training_args", key), value, key)


def _map_peft_config(peft: dict[str, Any], put, refuse) -> None:
    for key, value in peft.items():
        where = ("peft_config", key)
        if key in _PEFT_FIXED and value != _PEFT_FIXED[key]:
            what = "LoRA" if value == "LORA" else show(value)
            if key == "peft_type":
                raise refuse(where, f"is {what}: ptune does P-Tuning v2 only (peft_type: PREFIX_TUNING)")
            raise refuse(where, f"is {what}: ptune tunes decoder-only models (task_type: CAUSAL_LM)")
        if key in _PEFT_MAPPED:
            put(where, value, _PEFT_MAPPED[key])
        elif key not in _PEFT_FIXED and key not in _PEFT_FROM_MODEL:
            known = ", ".join([*_PEFT_FIXED, *_PEFT_MAPPED, *_PEFT_FROM_MODEL])
            raise refuse(where, f"is not a prefix-tuning setting ptune has ({known})")
    if "num_virtual_tokens" not in peft:
        raise refuse(("peft_config",), "needs num_virtual_tokens (the prefix length, ptune's pre_seq_len)")
