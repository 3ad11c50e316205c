"""Native: any decoder transformers ships (glm, llama, qwen2, ...), with its own tokenizer and chat template.

Tokenizer: whatever ``AutoTokenizer`` loads from the folder, never with remote code.  eos comes from the
tokenizer; a turn also ends at the eos ids of generation_config.json / config.json (e.g. a converted GLM-4
lists <|user|> and <|observation|> there); pad falls back to eos when the tokenizer has none.

Prompt (every verb): the tokenizer's chat template with ``add_generation_prompt`` (tools passed as ``tools=``, a
tool call as an OpenAI-style ``tool_calls`` entry, an observation as a ``tool`` message), tokenized without
adding specials (the template writes them).  Without a chat template: plain text, each message's content then
``"\\n"``, tokenized with the tokenizer's own specials (e.g. a bos); conversations with tools need a template.
The answer is ``encode(response)``.

Training needs a chat template: it is rendered for ever longer prefixes of the conversation and each new piece
of text tokenized on its own (the way LLaMA-Factory encodes turns); an assistant message's piece is what the
template adds after the generation prompt: learned up to and including its first stop id (e.g.
``<|im_end|>``), anything after that (a newline) not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ptune.families.base import ChatTokenizer, Family, Message, ModelFolder, OriginalFamily, or_list
from ptune.io.errors import UserError
from ptune.io.files import read_json

# File names a native tokenizer may consist of (copied into checkpoints when present).
NATIVE_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)


class NativeTokenizer(ChatTokenizer):
    """A transformers tokenizer `hf` in the common interface; `extra_stop_ids` end a turn besides eos."""

    family = "native"

    def __init__(self, hf: Any, extra_stop_ids: Iterable[int] = (), files: Sequence[str] = ()):
        self.hf = hf
        if hf.eos_token_id is None:
            raise UserError(
                f"{hf.name_or_path}: the tokenizer defines no eos token; set eos_token in tokenizer_config.json"
            )
        self.eos_token_id = int(hf.eos_token_id)
        self.pad_token_id = int(hf.pad_token_id) if hf.pad_token_id is not None else self.eos_token_id
        self.extra_stop_ids = [int(i) for i in extra_stop_ids]
        self.stop_token_ids = FAMILY.stop_token_ids(self)
        self.special_ids = {
            str(t): int(i) for t, i in zip(hf.all_special_tokens, hf.all_special_ids, strict=True)
        }
        self.vocab_size = len(hf)
        self.files = list(files)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def render_chat(
        self, messages: Sequence[Message], add_generation_prompt: bool = True, tools: list | None = None
    ) -> str:
        """The chat template rendered as text, by default ending with the generation prompt."""
        return self.hf.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, tools=tools
        )

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)


def _eos_ids(*configs: dict[str, Any]) -> list[int]:
    ids: list[int] = []
    for config in configs:
        value = config.get("eos_token_id")
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, list):
            ids.extend(v for v in value if isinstance(v, int))
    return ids


class Native(Family):
    """Models transformers loads natively (module docstring)."""

    name = "native"
    call_format = "template"
    title = "native"
    tokenizer_format = "transformers"
    tokenizer_files = NATIVE_TOKENIZER_FILES
    assistant_name = "Assistant"

    def refusal(self, folder: ModelFolder) -> str | None:
        if not folder.original:
            return None
        originals = [f.name for f in folder.families if f.model_type is not None]
        return (
            f"{folder.path} holds a ChatGLM-format tokenizer, which transformers cannot load without remote "
            f"code; use {or_list(originals)}"
        )

    def load_tokenizer(self, folder: ModelFolder) -> NativeTokenizer:
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(folder.path), trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError) as e:
            message = " ".join(str(e).split())[:300]  # some of transformers' messages span several lines
            raise UserError(
                f"{folder.path}: transformers could not load a tokenizer from this folder: {message}"
            ) from e
        generation_config = read_json(folder.path / "generation_config.json", missing_ok=True)
        extra = _eos_ids(generation_config, folder.config)
        return NativeTokenizer(hf, extra_stop_ids=extra, files=folder.present(NATIVE_TOKENIZER_FILES))

    def stop_token_ids(self, tok: Any) -> list[int]:
        return list(dict.fromkeys([tok.eos_token_id, *getattr(tok, "extra_stop_ids", ())]))

    # -- conversations ------------------------------------------------------------------------------

    def template_messages(self, conversation: Any) -> list[dict]:
        """Messages as chat templates take them: tool calls as `tool_calls`, observations as `tool`."""
        out: list[dict] = []
        for m in conversation.messages:
            call = m.get("tool_call")
            if call is not None:
                function = {"name": call["name"], "arguments": call["arguments"]}
                out.append(
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"type": "function", "function": function}],
                    }
                )
            else:
                out.append(
                    {"role": "tool" if m["role"] == "observation" else m["role"], "content": m["content"]}
                )
        return out

    def _render(self, tok: Any, messages: list[dict], cue: bool, tools: list | None) -> str:
        if not tok.has_chat_template:
            raise UserError(
                f"{_folder(tok)}: the tokenizer has no chat template, which conversation data needs "
                "(or use --data_format prompt_response)"
            )
        return tok.render_chat(messages, add_generation_prompt=cue, tools=tools)

    def conversation_ids(self, tok: Any, conversation: Any) -> tuple[list[int], list[bool]]:
        messages, tools = self.template_messages(conversation), conversation.tools
        if tools and self._render(tok, messages, False, tools) == self._render(tok, messages, False, None):
            raise UserError(f"{_folder(tok)}: the tokenizer's chat template does not write tools")
        ids: list[int] = []
        learned: list[bool] = []
        done = ""  # the text encoded so far
        for k, message in enumerate(messages):
            if message["role"] == "assistant":
                cue = self._render(tok, messages[:k], True, tools)
                ids += tok.encode(_after(done, cue, tok))
                learned += [False] * (len(ids) - len(learned))
                done = cue
            text = self._render(tok, messages[: k + 1], False, tools)
            piece = tok.encode(_after(done, text, tok))
            if message["role"] == "assistant":
                stops = set(tok.stop_token_ids)
                end = next((i + 1 for i, t in enumerate(piece) if t in stops), len(piece))
                learned += [True] * end + [False] * (len(piece) - end)
            else:
                learned += [False] * len(piece)
            ids += piece
            done = text
        return ids, learned

    def conversation_prompt(self, tok: Any, conversation: Any, cue: bool = True) -> list[int]:
        messages = self.template_messages(conversation)
        if not tok.has_chat_template and conversation.tools is None and not _calls(conversation):
            return tok.encode("".join(f"{m['content']}\n" for m in messages), add_special_tokens=True)
        return tok.encode(self._render(tok, messages, cue, conversation.tools))

    def is_checkpoint(self, config: dict, tokenizer_config: dict, recorded_family: str | None = None) -> bool:
        """A model_type no original family has (config.json alone says so)."""
        model_type = config.get("model_type")
        return bool(config) and model_type != OriginalFamily.model_type

    def thudm_prefix_problem(self, config: dict) -> str | None:
        return (
            f"the base model is {config.get('model_type')!r}, not ChatGLM2/3: THUDM's code cannot load this "
            "prefix (ptune can: --ptuning_checkpoint)"
        )


def _calls(conversation: Any) -> bool:
    return any("tool_call" in m or m["role"] == "observation" for m in conversation.messages)


def _folder(tok: Any) -> str:
    """The tokenizer's folder, for messages."""
    return str(getattr(getattr(tok, "hf", None), "name_or_path", "") or "the tokenizer")


def _after(done: str, text: str, tok: Any) -> str:
    """What `text` adds to `done`; UserError when the template rewrites earlier turns (no prefix)."""
    if not text.startswith(done):
        raise UserError(
            f"{_folder(tok)}: the chat template renders earlier messages differently once later ones "
            "follow, so assistant turns cannot be marked in one sequence (use --data_format prompt_response)"
        )
    return text[len(done) :]


FAMILY = Native()
