"""`ptune chat`: multi-turn chat in the terminal with a base model and, optionally, a P-Tuning v2 prefix.

    ptune chat --model_name_or_path DIR [--ptuning_checkpoint CKPT] [--system TEXT] [--max_length 2048]
               [--tools FILE.json]

Reads one question per line from stdin (a terminal or a pipe; no readline needed) and streams the answer to
stdout token by token, in the family's chat format (`chat_format.conversation_prompt`, the prompt eval, predict and
`ptune serve` build for the same conversation; turns fitted by `ptune.data.truncation.fit_prompt`). `clear` forgets the
history, `exit` / `quit` / end of input (Ctrl-D) ends the chat (exit code 0), Ctrl-C stops the answer
being written (Ctrl-C at the prompt ends ptune: `ptune.cli` prints "interrupted" and exits 130).

Each prompt holds the question and as many of the latest turns as fit in max_length - max_new_tokens
tokens; older turns are forgotten for good (said once), so the conversation the model sees only ever loses
its oldest turns and never gets one back when a later question happens to be shorter.

With --tools FILE.json (a list of OpenAI function tools) the model may call them: the call is shown and the
result asked for (ptune.infer.tool_chat).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ptune.config.fields import (
    ChatFormat,
    Dtype,
    base_model_field,
    chat_format_field,
    device_field,
    dtype_field,
    ptuning_checkpoint_field,
)
from ptune.config.generation import GenerationArguments
from ptune.config.parser import Command, parse_command
from ptune.data.chat_format import conversation_prompt, decode_response, thudm_conversation
from ptune.data.truncation import fit_prompt
from ptune.infer.generate import GenerationSettings, stream_generate
from ptune.infer.text_stream import stream_answer
from ptune.io.errors import UserError

CLEAR_COMMANDS = ("clear",)
EXIT_COMMANDS = ("exit", "quit")


@dataclass
class ChatSession:
    """The conversation state: history (question, answer) pairs, oldest first, and the length budget."""

    tokenizer: object
    max_source_length: int
    source_prefix: str = ""
    system: str = ""
    history: list[tuple[str, str]] = field(default_factory=list)
    told_about_dropping: bool = False

    def clear(self) -> None:
        self.history = []
        self.told_about_dropping = False

    def prompt(self, query: str) -> tuple[list[int], list[str]]:
        """The prompt ids for `query` and the notes to show the user (dropped turns, a cut question).

        The conversation (the system prompt, the history, the question with --source_prefix in front) loses
        its oldest turns until it fits (`fit_prompt`, as eval and predict), and the dropped ones are removed
        from the history for good; a question too long alone is cut.
        """
        tok, limit, notes = self.tokenizer, self.max_source_length, []
        conversation = thudm_conversation(tok, query, self.history, self.source_prefix, self.system)
        fitted = fit_prompt(tok, conversation, limit, cut_question=True)
        if fitted.lost and not self.told_about_dropping:
            notes.append(
                f"(the conversation no longer fits in --max_length - --max_new_tokens = {limit} tokens: "
                "the oldest turns are forgotten from now on)"
            )
            self.told_about_dropping = True
        self.history = self.history[fitted.lost :]
        if fitted.cut:
            notes.append(f"(the question is longer than {limit} tokens: only its beginning is used)")
        return fitted.ids, notes

    def bare_length(self) -> int:
        """The length of the prompt of an empty question: the template, --system and --source_prefix."""
        tok = self.tokenizer
        return len(conversation_prompt(tok, thudm_conversation(tok, "", [], self.source_prefix, self.system)))


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _read_line() -> str | None:
    """One line from stdin without its newline; None at end of input."""
    line = sys.stdin.readline()
    if not line:
        return None
    return line.rstrip("\r\n")


def answer(model, session: ChatSession, query: str, settings: GenerationSettings, name: str) -> str:
    """Stream one answer to stdout and add the turn to the history; returns the answer text.

    Ctrl-C stops the answer: what was printed so far stays in the history, as the user saw it.
    """
    tok = session.tokenizer
    ids, notes = session.prompt(query)
    for note in notes:
        _write(note + "\n")
    _write(f"\n{name}: ")
    pieces = stream_generate(model, ids, tok.stop_token_ids, settings)
    tokens, stream, stopped = stream_answer(tok, pieces, _write)
    _write(stream.flush() + (" (stopped)" if stopped else "") + "\n")
    text = decode_response(tok, tokens)
    session.history.append((query, text))
    return text


@dataclass
class ChatArguments:
    """`ptune chat`'s own arguments (the generation settings are GenerationArguments, as in eval/predict)."""

    model_name_or_path: str | None = base_model_field(
        "Base model folder (default: the base that --ptuning_checkpoint's prefix_config.json names)."
    )
    ptuning_checkpoint: str | None = ptuning_checkpoint_field()
    chat_format: ChatFormat | None = chat_format_field()
    dtype: Dtype = dtype_field()
    device: str | None = device_field()
    max_length: int = field(
        default=2048,
        metadata={
            "help": "Most tokens of prompt (question + history) plus answer; older turns are dropped to fit."
        },
    )
    source_prefix: str = field(
        default="", metadata={"help": "Text put in front of every question, as in training."}
    )
    system: str = field(
        default="",
        metadata={
            "help": "System prompt: the conversation's first message (ChatGLM2, which has no system role: plain "
            "text in front of the first round)."
        },
    )
    tools: str | None = field(
        default=None,
        metadata={
            "metavar": "FILE.json",
            "help": "A JSON list of OpenAI function tools the model may call (ChatGLM3, GLM-4, a native model "
            "whose chat template writes tools): a call is shown and its result asked for.",
        },
    )


COMMAND = Command(
    "ptune chat",
    (ChatArguments, GenerationArguments),
    "Chat with a model (and a P-Tuning v2 prefix) in the terminal; one question per line on stdin. Commands: "
    "clear (forget the history), exit / quit / Ctrl-D (end); Ctrl-C stops an answer.",
    defaults=(("max_new_tokens", 512),),  # chat has no val_max_target_length to default to
)


def _settings(args: ChatArguments, gen: GenerationArguments) -> GenerationSettings:
    if args.max_length <= gen.max_new_tokens:
        raise UserError(
            f"--max_length {args.max_length} must be larger than --max_new_tokens {gen.max_new_tokens}: "
            "the difference is what the question and history may take"
        )
    return GenerationSettings.from_arguments(gen)


def main(argv: list[str]) -> int:
    """`ptune chat`: load, then answer questions from stdin until exit / quit / end of input."""
    from ptune.config.parse import base_from_checkpoint
    from ptune.families.registry import load_tokenizer
    from ptune.model.devices import device_named
    from ptune.model.load import load_model

    args, gen = parse_command(COMMAND, argv)
    if args.model_name_or_path is None:
        args.model_name_or_path = base_from_checkpoint("chat", args.ptuning_checkpoint)
    settings = _settings(args, gen)
    tools = None
    if args.tools is not None:
        from ptune.infer.tool_chat import read_tools

        tools = read_tools(args.tools)
    tok = load_tokenizer(args.model_name_or_path, args.chat_format)
    session = ChatSession(tok, args.max_length - settings.max_new_tokens, args.source_prefix, args.system)
    tool_chat = _tool_chat(tok, tools, session) if tools is not None else None
    bare = session.bare_length()
    if bare > session.max_source_length:  # fail now, not at the first question
        raise UserError(
            f"--max_length {args.max_length} is too small: minus --max_new_tokens {settings.max_new_tokens} it "
            f"leaves {session.max_source_length} tokens for the prompt, but the chat template and "
            f"--source_prefix / --system alone take {bare}"
        )
    model = load_model(
        args.model_name_or_path,
        dtype=args.dtype,
        ptuning_checkpoint=args.ptuning_checkpoint,
        device=device_named(args.device),
        family=tok.family,
    )
    from ptune.families.registry import family_of

    name = family_of(tok).assistant_name
    prefix = f" + a {model.pre_seq_len}-token prefix" if model.pre_seq_len else ""
    _write(
        f"ptune chat: {tok.family} model{prefix} on {model.device}. Type a question and press Enter; "
        "'clear' forgets the history, 'exit' or Ctrl-D ends, Ctrl-C stops an answer.\n"
    )
    echo = not sys.stdin.isatty()  # piped input is not echoed by a terminal: show it so the transcript reads
    while True:
        _write("\n用户: ")
        query = _read_line()
        if query is None:
            _write("\n")
            return 0
        if echo:
            _write(query + "\n")
        query = query.strip()
        if not query:
            continue
        if query in EXIT_COMMANDS:
            return 0
        if query in CLEAR_COMMANDS:
            session.clear()
            if tool_chat is not None:
                tool_chat.clear()
            _write("(history cleared)\n")
            continue
        if tool_chat is not None:
            from ptune.infer.tool_chat import tool_turn

            tool_turn(model, tool_chat, session.source_prefix + query, settings, name, _read_line, _write)
            continue
        answer(model, session, query, settings, name)


def _tool_chat(tok, tools: list[dict], session: ChatSession):
    """The tool conversation of `ptune chat --tools` (UserError when the family cannot write tools)."""
    from ptune.infer.tool_chat import ToolChat

    return ToolChat(tok, tools, session.max_source_length, session.system)
