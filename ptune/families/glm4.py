"""GLM-4-9B-chat: a tiktoken tokenizer (as a native fast tokenizer) and ChatGLM3's role-token prompt.

Tokenizer: ``tokenizer.model`` = tiktoken ranks, lines "base64(token) rank", turned into a native
``PreTrainedTokenizerFast``; 14 specials follow the last rank (real: ``<|endoftext|>`` = 151329 .. 151342).
pad = eos = ``<|endoftext|>``; a turn ends at ``<|endoftext|>``, ``<|user|>`` or ``<|observation|>``.

Prompt (every verb): ``[gMASK, <sop>]``, then per message ``[<|role|>] + encode(metadata + "\\n" + content)``,
each message encoded alone: what GLM-4's chat template writes for one message (messages with empty content
are left out, as the template does), so every id is the template's as THUDM's GLM-4 finetune.py encodes it
(``apply_chat_template([message])`` without its leading ``[gMASK]<sop>``); a system message with tools is
rendered by the folder's chat template itself (it holds GLM-4's tools prompt; transformers renders it, never
remote code).  Then ``[<|assistant|>]`` for a new answer.  The answer is ``encode("\\n" + response)``.
Conversations (THUDM's finetune.py process_batch, token for token) end with ``<|user|>`` (THUDM's "EOS for
chat"); learned: each assistant message after its role token and the id after it.  A tool call is an
assistant message with the tool's name as metadata and its arguments as JSON (GLM-4's own convention).  A
folder without a chat template gets GLM-4-9B-chat's (ptune/assets/glm4_chat_template.jinja, copied from its
tokenizer_config.json).

Checkpoint: model_type ``chatglm`` like ChatGLM2/3, told apart by `is_glm4_checkpoint` (the one place that
does); rope_ratio multiplies the RoPE base; THUDM's code has no PrefixEncoder for GLM-4.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptune.families.base import ChatTokenizer, Message, ModelFolder
from ptune.families.chatglm3 import ChatGLM3
from ptune.io.errors import UserError

GLM4_CHAT_TEMPLATE = Path(__file__).parents[1] / "assets" / "glm4_chat_template.jinja"

# GLM-4's pre-tokenizer regex (tiktoken `pat_str`), from its tokenization_chatglm.py.
GLM4_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# In id order, starting right after the last rank.
GLM4_SPECIALS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
)
GLM4_VOCAB_ROWS = 151552  # padded_vocab_size of the real checkpoints


def load_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken ranks file ("base64(token) rank" lines).

    Parsed here rather than with ``tiktoken.load.load_tiktoken_bpe`` because that one caches files by *path*
    in a temp folder, so a rewritten file at the same path could be read stale.  Raises UserError naming the
    file and line for a malformed line, and for ranks that are not exactly 0..n-1.
    """
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as e:
                raise UserError(
                    f"{path}:{lineno}: not a tiktoken ranks line 'base64(token) rank': {line[:60]!r}"
                ) from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise UserError(f"{path}: tiktoken ranks must be unique and exactly 0..{len(ranks) - 1}")
    return ranks


def tiktoken_to_tokenizers(ranks: dict[bytes, int], specials: Sequence[str], pattern: str = GLM4_PATTERN):
    """A `tokenizers.Tokenizer` from parsed tiktoken ranks, via transformers' TikTokenConverter.

    `specials` get the ids right after the last rank, in order.  The backend equals tiktoken on plain text
    (regex split, then byte-level BPE merges in rank order).
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _ParsedRanksConverter(TikTokenConverter):
        def load_tiktoken_bpe(self, tiktoken_url):  # the ranks are already parsed (see load_tiktoken_ranks)
            return ranks

    converter = _ParsedRanksConverter(
        vocab_file="<parsed ranks>", pattern=pattern, extra_special_tokens=list(specials)
    )
    return converter.converted()


class GLM4Tokenizer(ChatTokenizer):
    """GLM-4's tokenizer as a native ``PreTrainedTokenizerFast`` (no remote code), in the common interface.

    Built with transformers' ``TikTokenConverter`` from the ranks file with GLM-4's regex; the 14 specials
    follow the last rank; a ``[gMASK]<sop> $A`` post-processor reproduces the original's
    build_inputs_with_special_tokens.  The wrapped tokenizer is `hf` (its chat template, when the folder's
    tokenizer_config.json has one, is the original's).
    """

    family = "glm4"

    def __init__(
        self,
        model_file: Path,
        tokenizer_config: dict[str, Any] | None = None,
        files: Sequence[str] = ("tokenizer.model",),
    ):
        from tokenizers import processors
        from transformers import PreTrainedTokenizerFast

        self.model_file = Path(model_file)
        tokenizer_config = tokenizer_config or {}
        ranks = load_tiktoken_ranks(self.model_file)
        n = len(ranks)
        self.special_ids = {name: n + k for k, name in enumerate(GLM4_SPECIALS)}
        _check_added_tokens(
            self.model_file.parent / "tokenizer_config.json", tokenizer_config, self.special_ids
        )

        backend = tiktoken_to_tokenizers(ranks, GLM4_SPECIALS)
        gmask, sop, eos = (
            self.special_ids["[gMASK]"],
            self.special_ids["<sop>"],
            self.special_ids["<|endoftext|>"],
        )
        backend.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single="[gMASK]:0 <sop>:0 $A:0",
                    pair="[gMASK]:0 <sop>:0 $A:0 $B:1 <|endoftext|>:1",
                    special_tokens=[("[gMASK]", gmask), ("<sop>", sop), ("<|endoftext|>", eos)],
                ),
            ]
        )
        self.hf = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            extra_special_tokens=list(GLM4_SPECIALS[1:]),
            padding_side="left",
            clean_up_tokenization_spaces=False,
            chat_template=tokenizer_config.get("chat_template")
            or GLM4_CHAT_TEMPLATE.read_text(encoding="utf-8"),
            model_max_length=tokenizer_config.get("model_max_length", 128000),
        )
        self.pad_token_id = eos
        self.eos_token_id = eos
        self.stop_token_ids = FAMILY.stop_token_ids(self)
        self.vocab_size = n + len(GLM4_SPECIALS)
        self.files = list(files)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The chat template rendered by transformers (jinja in its sandbox; no remote code)."""
        return self.hf.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )


def _check_added_tokens(path: Path, tokenizer_config: dict[str, Any], special_ids: dict[str, int]) -> None:
    """The ids tokenizer_config.json's added_tokens_decoder gives GLM-4's specials must be the layout's."""
    for key, entry in (tokenizer_config.get("added_tokens_decoder") or {}).items():
        name = entry.get("content") if isinstance(entry, dict) else None
        if name in special_ids and str(special_ids[name]) != str(key):
            raise UserError(
                f"{path}: added_tokens_decoder puts {name} at {key}, but the ranks file puts it at {special_ids[name]}"
            )


def is_glm4_checkpoint(
    config: dict, tokenizer_config: dict | None = None, recorded_family: str | None = None
) -> bool:
    """GLM-4 shares model_type ``chatglm`` with ChatGLM2/3; any of these signs decides: the family a prefix
    recorded, a ChatGLM4Tokenizer in tokenizer_config.json (class or auto_map), or, in a chatglm config.json,
    a list of end ids, the 151,552-row vocabulary or a ``num_hidden_layers`` alias."""
    tokenizer_config = tokenizer_config or {}
    if recorded_family == FAMILY.name or tokenizer_config.get("tokenizer_class") in FAMILY.tokenizer_classes:
        return True
    auto_map = json.dumps(tokenizer_config.get("auto_map") or {})
    if any(name in auto_map for name in FAMILY.tokenizer_classes):
        return True
    if config.get("model_type", FAMILY.model_type) != FAMILY.model_type:
        return False
    return (
        isinstance(config.get("eos_token_id"), list)
        or config.get("padded_vocab_size") == GLM4_VOCAB_ROWS
        or "num_hidden_layers" in config
    )


def without_nulls(value: Any) -> Any:
    """`value` with every object key whose value is null left out, at any depth.

    THUDM's GLM-4 finetune.py (`process_message`) drops the null properties of each tool, because datasets'
    JSON reader fills every key a row lacks with null; a file written by `datasets` has those nulls at every
    depth ("enum": null, "description": null), and the model never sees them at inference.
    """
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


class GLM4(ChatGLM3):
    """GLM-4-9B-chat (module docstring): ChatGLM3's prompt mechanics with its own tokenizer and pieces."""

    name = "glm4"
    call_format = "name+json"
    bare_tools = False
    title = "GLM-4"
    tokenizer_format = "tiktoken"
    tokenizer_description = "a GLM-4 (tiktoken) tokenizer"
    tokenizer_classes = ("ChatGLM4Tokenizer",)
    special_tokens = GLM4_SPECIALS
    begin_tokens = ("[gMASK]", "<sop>")
    rope_ratio_scales_base = True

    def tokenizer_code_says(self, code: str) -> bool:
        return False  # told by the tokenizer file's format, never by its code

    def load_tokenizer(self, folder: ModelFolder) -> GLM4Tokenizer:
        files = folder.present(self.tokenizer_files)
        return GLM4Tokenizer(folder.require("tokenizer.model"), folder.tokenizer_config, files=files)

    def message_parts(self, tok: Any, message: Message) -> tuple[list[int], list[int]]:
        text = message.get("metadata", "") + "\n" + message["content"]
        return [self.role_id(tok, message["role"])], tok.encode(text)

    def message_ids(self, tok: Any, message: Message) -> list[int]:
        if not message["content"]:  # GLM-4's template renders nothing for an empty message
            return []
        return super().message_ids(tok, message)

    def answer_ids(self, tok: Any, response: str) -> list[int]:
        return tok.encode("\n" + response)

    # -- conversations ------------------------------------------------------------------------------

    def system_message(self, content: str | None, tools: list | None) -> Message | None:
        """As GLM-4's template takes them: the tools on the system message (one with empty content when the
        conversation has none, as in THUDM's examples)."""
        if tools is None:
            return super().system_message(content, tools)
        return {"role": "system", "content": content or "", "tools": without_nulls(tools)}

    def tool_call_message(self, name: str, arguments: dict) -> Message:
        return {"role": "assistant", "metadata": name, "content": json.dumps(arguments, ensure_ascii=False)}

    def end_id(self, tok: Any) -> int:
        return tok.special_ids["<|user|>"]  # THUDM's finetune.py appends 151336, <|user|>

    def piece_ids(self, tok: Any, message: Message) -> list[int]:
        """`apply_chat_template([message])[2:]`: the message rendered alone, [gMASK]<sop> left out (the
        template's rule for a message is `message_ids`; only tool definitions need the template itself)."""
        if message.get("tools") is None:
            return self.message_ids(tok, message)
        text = tok.render_chat([message])
        start = "[gMASK]<sop>"
        if not text.startswith(start):
            raise UserError(f"GLM-4's chat template should start with {start}, it renders {text[:40]!r}")
        if message.get("tools") is not None and text == tok.render_chat(
            [{k: v for k, v in message.items() if k != "tools"}]
        ):
            raise UserError("this GLM-4 tokenizer's chat template does not write tool definitions")
        return tok.encode(text[len(start) :])

    def is_checkpoint(self, config: dict, tokenizer_config: dict, recorded_family: str | None = None) -> bool:
        return is_glm4_checkpoint(config, tokenizer_config, recorded_family)

    def thudm_prefix_problem(self, config: dict) -> str | None:
        return (
            "this is a GLM-4 prefix: GLM-4's original modeling code has no PrefixEncoder and cannot load it "
            "(ptune can: --ptuning_checkpoint)"
        )


FAMILY = GLM4()
