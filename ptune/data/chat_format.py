"""Prompt ids, training targets and generated text, for any family: pure functions on strings and ids.

Every function takes the family tokenizer (anything with the `ptune.families.base.ChatTokenizer` attributes:
``family``, ``encode``, ``special_ids``, ``eos_token_id``; tests pass hand-made fakes) and returns plain
``list[int]``.  How a conversation becomes ids is its family's one builder (``ptune.families``: one module per
family, where each format is written down: `conversation_ids` / `conversation_prompt`); which turns fit a
length is decided once, in ptune.data.truncation.  Here, the same for every family:

- prompts: `conversation_prompt` (a `Conversation`, ending with the cue for a new answer: what `ptune chat`,
  `ptune serve`, eval and predict send the model), `encode_messages` (role/content messages, e.g. a served
  request), and THUDM's columns (query, history as ``[[question, answer], ...]`` oldest first, source_prefix)
  as a conversation: `thudm_conversation`, `prompt_ids`, `encode_prompt` (cut to a length);
- targets: `answer_ids` cut to ``max_target_length``, then ``eos``, so a target has at most
  ``max_target_length + 1`` ids, like THUDM's; `encode_example` puts prompt and target together;
- generated ids back to text: `strip_answer`, `decode_response`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ptune.data.conversation import Conversation
from ptune.data.labels import IGNORE_INDEX
from ptune.data.truncation import (
    Encoded,
    encode_conversation,
    encode_last_answer,
    fit_prompt,
)
from ptune.families.base import Message, Turn, normalize_history
from ptune.families.registry import family_of

__all__ = [
    "answer_ids",
    "chat_messages",
    "conversation_prompt",
    "decode_response",
    "encode_example",
    "encode_messages",
    "encode_prompt",
    "encode_split_example",
    "encode_thudm",
    "prompt_ids",
    "strip_answer",
    "target_ids",
    "thudm_conversation",
    "with_source_prefix",
]


def conversation_prompt(tok: Any, conversation: Conversation) -> list[int]:
    """The conversation's prompt ids, ending with the cue for a new answer: the family's one builder."""
    return family_of(tok).conversation_prompt(tok, conversation)


def encode_messages(tok: Any, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
    """Role/content messages as the family's prompt ids (by default ending with the cue for the next
    answer): `conversation_prompt` of them."""
    return family_of(tok).conversation_prompt(tok, Conversation(tuple(messages)), add_generation_prompt)


def chat_messages(
    query: str, history: Sequence[Turn] = (), source_prefix: str = "", system: str = ""
) -> list[Message]:
    """The conversation as role/content messages (a system message first when `system` is given),
    `source_prefix` in front of the current question."""
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    for q, r in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
    messages.append({"role": "user", "content": source_prefix + query})
    return messages


def thudm_conversation(
    tok: Any, query: str, history: Any = (), source_prefix: str = "", system: str = ""
) -> Conversation:
    """THUDM's (query, history, source_prefix) as a conversation ending with the question (`source_prefix`
    placed by `with_source_prefix`)."""
    turns = normalize_history(history)
    return with_source_prefix(
        tok, Conversation(tuple(chat_messages(query, turns, "", system))), source_prefix
    )


def with_source_prefix(tok: Any, conversation: Conversation, source_prefix: str) -> Conversation:
    """THUDM's `source_prefix` put into the conversation: in front of its last question, or, for a family
    whose format has no system role (ChatGLM2: ``source_prefix_first``), after the system prompt in a leading
    system message, in front of it all, where THUDM put it."""
    if not source_prefix:
        return conversation
    messages = list(conversation.messages)
    if family_of(tok).source_prefix_first:
        system = conversation.system
        front = {"role": "system", "content": (system[0]["content"] if system else "") + source_prefix}
        return replace(conversation, messages=(front, *messages[len(system) :]))
    last = max(k for k, m in enumerate(messages) if m["role"] == "user")
    messages[last] = {**messages[last], "content": source_prefix + messages[last]["content"]}
    return replace(conversation, messages=tuple(messages))


def prompt_ids(
    tok: Any, query: str, history: Any = (), source_prefix: str = "", system: str = ""
) -> list[int]:
    """The full, untruncated prompt ids of THUDM's columns (a system message first with `system`), as THUDM
    encoded them (`Family.history_prompt`)."""
    return family_of(tok).history_prompt(tok, thudm_conversation(tok, query, history, source_prefix, system))


def answer_ids(tok: Any, response: str) -> list[int]:
    """The answer's ids without eos (chatglm3/glm4 include the newline that follows the role token)."""
    return family_of(tok).answer_ids(tok, response)


def target_ids(tok: Any, response: str, max_target_length: int) -> list[int]:
    """Answer ids cut to `max_target_length`, then eos: at most max_target_length + 1 ids (as THUDM)."""
    return answer_ids(tok, response)[: max(max_target_length, 0)] + [tok.eos_token_id]


def encode_prompt(
    tok: Any,
    query: str,
    history: Any = None,
    max_source_length: int = 1024,
    source_prefix: str = "",
    system: str = "",
) -> list[int]:
    """Prompt ids (special tokens included) of at most `max_source_length` ids, for THUDM's columns.

    Unlike THUDM's right-truncation (which cut off the current question and the "答：" cue), history turns
    are dropped oldest first until the prompt fits; if the current question alone still does not fit, it is
    cut from the right while the template's closing part is kept, so the model still sees where its answer
    starts (`ptune.data.truncation.fit_prompt`).  UserError when even an empty question with the template
    and `source_prefix` does not fit.
    """
    conversation = thudm_conversation(tok, query, history, source_prefix, system)
    return fit_prompt(tok, conversation, max_source_length, cut_question=True, history=True).ids


def encode_example(
    tok: Any,
    prompt: str,
    response: str,
    history: Any,
    max_source_length: int,
    max_target_length: int,
    source_prefix: str = "",
) -> tuple[list[int], list[int]]:
    """One training example of THUDM's columns: ``(input_ids, labels)``, no padding.

    ``input_ids = prompt_ids + target_ids`` and ``labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids``, where
    prompt_ids = `encode_prompt` (at most `max_source_length` ids, history dropped oldest first, then the
    question cut) and target_ids = `target_ids` (answer cut to `max_target_length`, then eos).
    """
    encoded = encode_thudm(
        tok, prompt, response, history, max_source_length, max_target_length, source_prefix
    )
    return encoded.input_ids, encoded.labels


def encode_thudm(
    tok: Any,
    prompt: str,
    response: str,
    history: Any,
    max_source_length: int,
    max_target_length: int,
    source_prefix: str = "",
) -> Encoded:
    """`encode_example` with what truncation did (`Encoded.lost_turns`: history turns dropped, all of them
    when the question was cut)."""
    conversation = thudm_conversation(tok, prompt, history, source_prefix)
    answered = replace(
        conversation, messages=(*conversation.messages, {"role": "assistant", "content": response})
    )
    return encode_split_example(
        tok, answered, "train", max_source_length, max_target_length, "prompt_response"
    )


TRUNCATION_POLICIES = ("conversation", "prompt_response")


def encode_split_example(
    tok: Any, conversation: Conversation, split: str, max_source: int, max_target: int, policy: str
) -> Encoded:
    """One example of `conversation` for `split` ("train", "eval" or "predict"), fitted to the lengths by
    the data format's truncation `policy` (every verb's examples come from here):

    - "conversation" (the conversation formats): training learns every assistant turn, at most
      ``max_source + max_target + 1`` ids (`encode_conversation`); eval/predict, the last answer after the
      rest (`encode_last_answer`: oldest turns dropped, else the row);
    - "prompt_response" (THUDM's columns, any split): the prompt is everything before the last assistant
      message (a row without one asks for a new answer), fitted by `fit_prompt` (oldest history turns, then
      the question cut, as THUDM's `history_prompt`), the target that message's `target_ids`.
    """
    if policy == "conversation":
        if split == "train":
            return encode_conversation(tok, conversation, max_source + max_target + 1)
        return encode_last_answer(tok, conversation, max_source, max_target)
    if policy != "prompt_response":
        raise ValueError(f"truncation policy must be one of {', '.join(TRUNCATION_POLICIES)}, not {policy!r}")
    response = ""
    if conversation.ends_with_answer():
        response = conversation.messages[-1]["content"]
        conversation = replace(conversation, messages=conversation.messages[:-1])
    fitted = fit_prompt(tok, conversation, max_source, cut_question=True, history=True)
    target = target_ids(tok, response, max_target)
    return Encoded(fitted.ids + target, [IGNORE_INDEX] * len(fitted.ids) + target, lost_turns=fitted.lost)


def strip_answer(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """The answer part of generated ids: everything before the first stop id."""
    stops = set(stop_ids)
    cut = next((k for k, i in enumerate(ids) if int(i) in stops), len(ids))
    return list(ids[:cut])


def decode_response(tok: Any, ids: Sequence[int]) -> str:
    """Text of generated ids: cut at the first of `tok.stop_token_ids`, specials skipped, whitespace stripped.

    Stripping (as THUDM's predictions are) also removes the newline chatglm3/glm4 answers start with.
    """
    return tok.decode(strip_answer(ids, tok.stop_token_ids), skip_special_tokens=True).strip()
