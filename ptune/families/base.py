"""The Family interface: what differs between model families, in one object per family.

A family (one module of ``ptune.families`` each: chatglm2, chatglm3, glm4, native) answers:

- detection: ``refusal(folder)`` says why a model folder is not of this family (None: it may be);
  ``tokenizer_code_says(code)`` tells families that share a tokenizer format apart by their remote code.
  ``ptune.families.registry.detect_family`` picks among the families with these answers.
- tokenizer: ``load_tokenizer(folder)``, the ``special_tokens`` appended after the base vocabulary,
  ``stop_token_ids(tok)`` (every id that ends a chat turn), ``tokenizer_files``.
- prompts, one builder per family, on a conversation (ptune.data.conversations.Conversation: system / user /
  assistant / observation messages, tool calls, tools): ``conversation_ids(tok, conversation)`` (ids and, per
  id, whether it is learned: every assistant turn and its end marker), ``conversation_prompt`` (the same ids up
  to the cue for a new answer: the prompt of every verb), ``conversation_pieces`` when its ids are each
  message's encoded alone (ChatGLM3's `ConversationPieces`: truncation then costs linear time),
  ``history_prompt`` (THUDM's prompt_response rows: ChatGLM2 tokenizes their [Round n] text at once),
  ``cut_question`` (a question too long alone, cut) and ``answer_ids(tok, response)`` (what the model learns
  to write after the prompt).  Which turns fit is decided once, for every verb, in ptune.data.truncation.
- checkpoint: ``model_type`` of its original folders (``ptune.model.convert`` converts "chatglm" ones; None: a model
  transformers loads natively), ``is_checkpoint(config, ...)`` (config.json alone shows this family),
  ``rope_ratio_scales_base`` (how convert reads rope_ratio), ``thudm_prefix_problem`` (export's warning).

Family objects are stateless singletons; every method that encodes takes the tokenizer ``tok`` (anything with
the `ChatTokenizer` attributes; tests pass hand-made fakes) and returns plain ``list[int]``.  Tokenizers keep
their family's name in ``tok.family``; ``registry.family_of(tok)`` gives the Family back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, TypedDict

from ptune.io.errors import UserError
from ptune.io.files import read_json

Turn = tuple[str, str]

# The files an original THUDM tokenizer consists of (copied into checkpoints when present).
CHATGLM_TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "tokenization_chatglm.py")

_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/=]+ [0-9]+\r?$")


class _MessageFields(TypedDict):
    role: str  # "system" | "user" | "assistant" | "observation" (which ones a family accepts varies)
    content: str


class Message(_MessageFields, total=False):
    """One chat message. ``metadata`` (ChatGLM3/GLM-4: the text after the role token, e.g. a tool name)."""

    metadata: str


# --------------------------------------------------------------------------------------------------------
# Conversations (family-independent)
# --------------------------------------------------------------------------------------------------------


class BadHistory(UserError):
    """A history that is not a list of [question, answer] string pairs. `turn`: the 0-based index of the
    first bad pair, None when the history is not a list at all (a data reader rewords it with file:line)."""

    def __init__(self, message: str, turn: int | None = None):
        super().__init__(message)
        self.turn = turn


def normalize_history(history: Any) -> list[Turn]:
    """`history` as a list of (question, answer) string pairs; None means no history. The one check of
    history pairs: data rows, alpaca rows, and the prompts of eval/predict/chat all go through it.

    Raises BadHistory (the caller adds the file and line) when a turn is not a pair of strings.
    """
    if history is None:
        return []
    if not isinstance(history, (list, tuple)):
        raise BadHistory(f"history must be a list of [question, answer] pairs, got {type(history).__name__}")
    turns: list[Turn] = []
    for i, turn in enumerate(history):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(x, str) for x in turn)):
            raise BadHistory(f"history turn {i + 1} is not a [question, answer] pair of strings: {turn!r}", i)
        turns.append((turn[0], turn[1]))
    return turns


def or_list(names: Sequence[str]) -> str:
    """ "a", "a or b", "a, b or c": names for a message."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def too_small(max_source_length: int, needed: int) -> UserError:
    return UserError(
        f"--max_source_length {max_source_length} is too small: the chat template and source_prefix alone "
        f"take {needed} tokens"
    )


# --------------------------------------------------------------------------------------------------------
# Tokenizers and model folders
# --------------------------------------------------------------------------------------------------------


class ChatTokenizer:
    """What every family's tokenizer exposes; each family's module fills it in.

    ``family`` (the family's name), ``encode(text) -> list[int]`` (no special tokens),
    ``decode(ids, skip_special_tokens=True) -> str``, ``pad_token_id``, ``eos_token_id`` (appended after a
    training answer), ``stop_token_ids`` (every id that ends a chat turn: the family's `stop_token_ids`),
    ``special_ids`` (name -> id), ``vocab_size`` (ids the embedding must cover) and ``files`` (tokenizer
    file names in the model folder, so a checkpoint can copy them).
    """

    family: str
    pad_token_id: int
    eos_token_id: int
    stop_token_ids: list[int]
    special_ids: dict[str, int]
    vocab_size: int
    files: list[str]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without any special tokens."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; special tokens dropped when `skip_special_tokens`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r}, vocab_size={self.vocab_size})"


def is_tiktoken_file(path: Path) -> bool:
    """True when `path` starts with a tiktoken ranks line ("base64(token) rank"), not a SentencePiece proto."""
    with open(path, "rb") as f:
        first = f.readline(4096)
    return bool(_TIKTOKEN_LINE.match(first.rstrip(b"\n")))


@dataclass
class ModelFolder:
    """A model folder as detection sees it: config.json and tokenizer_config.json ({} when absent).

    The registry sets `original` (an original THUDM folder: its model_type or tokenizer_class is a family's,
    or --chat_format names such a family), `tokenizer_formats` (tokenizer_class -> tokenizer format) and
    `families` (all of them), so that a family judging the folder never imports the registry.
    """

    path: Path
    config: dict[str, Any]
    tokenizer_config: dict[str, Any]
    original: bool = False
    tokenizer_formats: dict[str, str] = field(default_factory=dict)
    families: tuple[Family, ...] = ()  # every family, in the registry's order (for messages naming them)

    @classmethod
    def read(cls, path: str | Path) -> ModelFolder:
        """Read the folder's JSON files; UserError for a missing folder, no config at all, or bad JSON."""
        folder = Path(path)
        if not folder.is_dir():
            raise UserError(f"model folder not found: {folder} (ptune loads models from a local folder)")
        if not (folder / "config.json").is_file() and not (folder / "tokenizer_config.json").is_file():
            # Without either, AutoTokenizer would fail with advice about installing sentencepiece.
            what = "the folder is empty" if not any(folder.iterdir()) else "nor tokenizer_config.json"
            raise UserError(f"{folder / 'config.json'}: file not found ({what}; is this a model folder?)")
        return cls(
            folder,
            read_json(folder / "config.json", missing_ok=True),
            read_json(folder / "tokenizer_config.json", missing_ok=True),
        )

    @property
    def tokenizer_class(self) -> str | None:
        value = self.tokenizer_config.get("tokenizer_class")
        return value if isinstance(value, str) else None

    def require(self, name: str) -> Path:
        """The path of tokenizer file `name`; UserError when it is missing."""
        path = self.path / name
        if not path.is_file():
            raise UserError(f"tokenizer file not found: {path}")
        return path

    def present(self, names: Iterable[str]) -> list[str]:
        return [name for name in names if (self.path / name).is_file()]

    def tokenizer_format(self) -> str:
        """The tokenizer format: "tiktoken" when tokenizer_class names a tiktoken family or tokenizer.model
        is a ranks text file, else "sentencepiece" (UserError when tokenizer.model is missing)."""
        model = self.require("tokenizer.model")
        if self.tokenizer_formats.get(self.tokenizer_class) == "tiktoken" or is_tiktoken_file(model):
            return "tiktoken"
        return "sentencepiece"

    def names(self) -> list[str]:
        """Names that may say which model this is: config.json _name_or_path, tokenizer_config.json
        name_or_path, the folder's own name (in that order)."""
        found = [self.config.get("_name_or_path"), self.tokenizer_config.get("name_or_path")]
        return [n for n in found if isinstance(n, str)] + [self.path.resolve().name]


# --------------------------------------------------------------------------------------------------------
# The Family interface
# --------------------------------------------------------------------------------------------------------


class Family:
    """One model family: detection, tokenizer, chat format and checkpoint rules (module docstring)."""

    name: ClassVar[str]  # --chat_format value, tok.family, prefix_config.json "family"
    title: ClassVar[str]  # for messages: "ChatGLM3"
    model_type: ClassVar[str | None] = None  # config.json model_type of its original folders
    tokenizer_format: ClassVar[str]  # "sentencepiece" | "tiktoken" | "transformers"
    tokenizer_description: ClassVar[str] = ""  # "a SentencePiece model", for messages
    tokenizer_classes: ClassVar[tuple[str, ...]] = ()  # tokenizer_config.json classes of its original folders
    tokenizer_files: ClassVar[tuple[str, ...]] = ()
    special_tokens: ClassVar[tuple[str, ...]] = ()  # appended after the base vocabulary, in id order
    assistant_name: ClassVar[str] = "ChatGLM"  # how `ptune chat` names the model
    rope_ratio_scales_base: ClassVar[bool | None] = None  # None: convert reads it from modeling_chatglm.py

    # -- detection, tokenizer, checkpoint -------------------------------------------------------------

    def refusal(self, folder: ModelFolder) -> str | None:
        """Why `folder` cannot be of this family (a message ending in what to use instead), or None."""
        raise NotImplementedError

    def tokenizer_code_says(self, code: str) -> bool:
        """Whether the folder's tokenization_chatglm.py (read as text, never run) is this family's."""
        return False

    def load_tokenizer(self, folder: ModelFolder) -> ChatTokenizer:
        raise NotImplementedError

    def stop_token_ids(self, tok: Any) -> list[int]:
        """Ids that end a chat turn: eos by default."""
        return [tok.eos_token_id]

    def is_checkpoint(self, config: dict, tokenizer_config: dict, recorded_family: str | None = None) -> bool:
        """Whether config.json (with tokenizer_config.json, and the family a prefix_config.json records)
        shows this family by itself. False when it cannot tell (ChatGLM2 and ChatGLM3 weights look alike)."""
        return False

    def thudm_prefix_problem(self, config: dict) -> str | None:
        """Why THUDM's own code cannot load a prefix trained on this family (None: it can)."""
        return None

    # -- prompts: the one builder of each family (the module docstring) ---------------------------------

    source_prefix_first: ClassVar[bool] = False  # THUDM's source_prefix in front of it all (ChatGLM2)
    # How an answer writes a tool call (ptune.infer.tool_calls reads it back): "name+python" (the tool's name
    # on the first line, then ChatGLM3's tool_call(...) code), "name+json" (GLM-4: then JSON arguments),
    # "template" (what the chat template writes for a tool_calls entry), None (the family has no tools).
    call_format: ClassVar[str | None] = None
    bare_tools: ClassVar[bool] = (
        False  # its data holds tools as bare functions, not OpenAI's {"function": ...}
    )

    def family_messages(self, conversation: Any) -> list[Message]:
        """The conversation as this family's chat format takes it: the system message (with the tools, as
        `system_message` puts them), then every other message, tool calls written by `tool_call_message`."""
        system = conversation.system
        head = self.system_message(system[0]["content"] if system else None, conversation.tools)
        out: list[Message] = [head] if head is not None else []
        for m in conversation.messages[len(system) :]:
            call = m.get("tool_call")
            if call is not None:
                out.append(self.tool_call_message(call["name"], call["arguments"]))
            else:
                out.append({"role": m["role"], "content": m["content"], "metadata": m.get("metadata", "")})
        return out

    def system_message(self, content: str | None, tools: list | None) -> Message | None:
        """The system message for a system prompt (None: the conversation has none) and tool definitions."""
        return None if content is None else {"role": "system", "content": content}

    def tool_call_message(self, name: str, arguments: dict) -> Message:
        raise NotImplementedError(f"{type(self).__name__} writes no tool calls")

    def answer_ids(self, tok: Any, response: str) -> list[int]:
        """The answer's ids without eos: what the model writes after the generation prompt."""
        return tok.encode(response)

    def conversation_ids(self, tok: Any, conversation: Any) -> tuple[list[int], list[bool]]:
        """The whole conversation as ids, and per id whether it is learned (every assistant turn's text and
        the end marker that follows it); no truncation (ptune.data.truncation cuts)."""
        raise UserError(f"{self.title} models cannot be trained on conversations")

    def conversation_prompt(self, tok: Any, conversation: Any, cue: bool = True) -> list[int]:
        """The conversation's ids followed (with `cue`) by the cue for a new assistant answer: the prompt of
        every verb (eval/predict, chat, serve; training examples start with it)."""
        raise UserError(f"{self.title} models cannot be prompted with conversations")

    def history_prompt(self, tok: Any, conversation: Any) -> list[int]:
        """The prompt of a THUDM prompt_response row (history as a column), as THUDM's scripts built it: the
        conversation's prompt, but for ChatGLM2, which tokenized the whole [Round n] text at once."""
        return self.conversation_prompt(tok, conversation)

    def conversation_pieces(self, tok: Any, conversation: Any) -> Any:
        """The conversation message by message (`ptune.families.chatglm3.ConversationPieces`), or None when
        this family encodes only whole conversations (a message's ids depend on the others: ChatGLM2's round
        numbers, a native chat template); truncation then encodes shorter conversations whole."""
        return None

    def cut_question(self, tok: Any, conversation: Any, max_length: int, history: bool = False) -> list[int]:
        """The prompt of a one-turn `conversation` (system prompt, one question) with the question's end cut
        so that it has at most `max_length` ids (`history`: as `history_prompt`).

        Here for prompts encoded as one text: the question is cut by characters (the most that fit, found by
        bisection) and the text re-encoded, so the template's closing part stays intact and tokenized as
        usual.  UserError when not even an empty question fits.
        """
        *head, question = conversation.messages
        prompt = self.history_prompt if history else self.conversation_prompt

        def build(k: int) -> list[int]:
            cut = {**question, "content": question["content"][:k]}
            return prompt(tok, replace(conversation, messages=(*head, cut)))

        best = build(0)
        if len(best) > max_length:
            raise too_small(max_length, len(best))
        lo, hi = 0, len(question["content"])  # build(lo) fits; build(hi) does not (the caller saw that)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            ids = build(mid)
            if len(ids) <= max_length:
                lo, best = mid, ids
            else:
                hi = mid
        return best

    def __repr__(self) -> str:
        return f"<family {self.name}>"


class OriginalFamily(Family):
    """A family whose checkpoints come as original THUDM folders: config.json model_type "chatglm" (weights
    converted by `ptune.model.convert`), a ``tokenizer.model`` file ptune reads itself (no remote code)."""

    model_type = "chatglm"
    tokenizer_files = CHATGLM_TOKENIZER_FILES

    def refusal(self, folder: ModelFolder) -> str | None:
        if not folder.original:
            return f"{folder.path} is not an original {self.title} folder (model_type {self.model_type!r})"
        found = folder.tokenizer_format()
        if found == self.tokenizer_format:
            return None
        model = folder.require("tokenizer.model")
        fits = [f for f in folder.families if f.model_type == self.model_type and f.tokenizer_format == found]
        if not fits:
            return f"{model} is a {found} tokenizer, which no {self.model_type} family reads"
        return f"{model} is {fits[0].tokenizer_description}; use {or_list([f.name for f in fits])}"
