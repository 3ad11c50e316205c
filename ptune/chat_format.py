"""Chat prompt ids and training-example encoding for each model family: pure functions on strings and ids.

Every function takes the family tokenizer (anything with the `ptune.tokenizer.ChatTokenizer` attributes:
``family``, ``encode``, ``special_ids``, ``eos_token_id``; tests pass hand-made fakes) and returns plain
``list[int]``.

Prompt formats (``history`` is ``[[question, answer], ...]``, oldest first):

- chatglm2: text ``"[Round {i}]\\n\\n问：{q}\\n\\n答：{r}\\n\\n"`` per past turn (i from 1), then
  ``"[Round {n+1}]\\n\\n问：{query}\\n\\n答："``, with ``source_prefix`` in front of the whole text;
  ids = ``[gMASK, sop] + encode(text)`` (THUDM's build_prompt + encode with special tokens).
- chatglm3: ``[gMASK, sop]``, then per message ``[<|role|>] + encode("\\n") + encode(content)``, then
  ``[<|assistant|>]`` (THUDM's build_chat_input); ``source_prefix`` goes in front of the current question.
- glm4: ``[gMASK, <sop>]``, then per message ``[<|role|>] + encode("\\n" + content)``, then
  ``[<|assistant|>]``: what GLM-4's chat template renders, tokenized between the specials as the tokenizer
  does; messages with empty content are left out, as the template does.
- native: the tokenizer's chat template with ``add_generation_prompt=True``, tokenized without adding
  specials (the template writes them).  Without a chat template: plain text ``"{q}\\n{r}\\n"`` per past turn
  then ``"{query}\\n"``, tokenized with the tokenizer's own specials (e.g. a bos).

Targets (the ids the model learns to produce after the prompt): chatglm2 / native ``encode(response)``;
chatglm3 ``encode("\\n") + encode(response)`` (the model writes the newline after the role token);
glm4 ``encode("\\n" + response)``; then cut to ``max_target_length`` and ``eos`` appended, so a target has
at most ``max_target_length + 1`` ids, like THUDM's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ptune.errors import UserError

IGNORE_INDEX = -100  # label value the loss ignores (prompt positions)

Turn = tuple[str, str]


def normalize_history(history: Any) -> list[Turn]:
    """`history` as a list of (question, answer) string pairs; None means no history.

    Raises UserError (the caller adds the file and line) when a turn is not a pair of strings.
    """
    if history is None:
        return []
    if not isinstance(history, (list, tuple)):
        raise UserError(f"history must be a list of [question, answer] pairs, got {type(history).__name__}")
    turns: list[Turn] = []
    for i, turn in enumerate(history, 1):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(x, str) for x in turn)):
            raise UserError(f"history turn {i} is not a [question, answer] pair of strings: {turn!r}")
        turns.append((turn[0], turn[1]))
    return turns


def chatglm2_prompt_text(query: str, history: Sequence[Turn] = (), source_prefix: str = "") -> str:
    """ChatGLM2's prompt text (THUDM build_prompt), with `source_prefix` in front of it all."""
    text = "".join(f"[Round {i}]\n\n问：{q}\n\n答：{r}\n\n" for i, (q, r) in enumerate(history, 1))
    return source_prefix + text + f"[Round {len(history) + 1}]\n\n问：{query}\n\n答："


def chat_messages(query: str, history: Sequence[Turn] = (), source_prefix: str = "") -> list[dict[str, str]]:
    """The conversation as role/content messages, `source_prefix` in front of the current question."""
    messages: list[dict[str, str]] = []
    for q, r in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
    messages.append({"role": "user", "content": source_prefix + query})
    return messages


def _chatglm3_message(tok: Any, role: str, content: str) -> list[int]:
    return [tok.special_ids[f"<|{role}|>"]] + tok.encode("\n") + tok.encode(content)


def _glm4_message(tok: Any, role: str, content: str) -> list[int]:
    if not content:  # GLM-4's template renders nothing for an empty message
        return []
    return [tok.special_ids[f"<|{role}|>"]] + tok.encode("\n" + content)


def _native_prompt(tok: Any, query: str, history: Sequence[Turn], source_prefix: str) -> list[int]:
    if tok.has_chat_template:
        return tok.encode(tok.render_chat(chat_messages(query, history, source_prefix)))
    text = "".join(f"{q}\n{r}\n" for q, r in history) + f"{source_prefix}{query}\n"
    return tok.encode(text, add_special_tokens=True)


def prompt_ids(tok: Any, query: str, history: Sequence[Turn] = (), source_prefix: str = "") -> list[int]:
    """The full, untruncated prompt ids for the tokenizer's family (formats in the module docstring)."""
    family = tok.family
    history = normalize_history(history)
    if family == "chatglm2":
        head = [tok.special_ids["[gMASK]"], tok.special_ids["sop"]]
        return head + tok.encode(chatglm2_prompt_text(query, history, source_prefix))
    if family == "chatglm3":
        ids = [tok.special_ids["[gMASK]"], tok.special_ids["sop"]]
        for q, r in history:
            ids += _chatglm3_message(tok, "user", q) + _chatglm3_message(tok, "assistant", r)
        return (
            ids + _chatglm3_message(tok, "user", source_prefix + query) + [tok.special_ids["<|assistant|>"]]
        )
    if family == "glm4":
        ids = [tok.special_ids["[gMASK]"], tok.special_ids["<sop>"]]
        for q, r in history:
            ids += _glm4_message(tok, "user", q) + _glm4_message(tok, "assistant", r)
        return ids + _glm4_message(tok, "user", source_prefix + query) + [tok.special_ids["<|assistant|>"]]
    if family == "native":
        return _native_prompt(tok, query, history, source_prefix)
    raise ValueError(f"unknown tokenizer family {family!r}")


def answer_ids(tok: Any, response: str) -> list[int]:
    """The answer's ids without eos (chatglm3/glm4 include the newline that follows the role token)."""
    if tok.family == "chatglm3":
        return tok.encode("\n") + tok.encode(response)
    if tok.family == "glm4":
        return tok.encode("\n" + response)
    return tok.encode(response)


def target_ids(tok: Any, response: str, max_target_length: int) -> list[int]:
    """Answer ids cut to `max_target_length`, then eos: at most max_target_length + 1 ids (as THUDM)."""
    return answer_ids(tok, response)[: max(max_target_length, 0)] + [tok.eos_token_id]


def _too_small(max_source_length: int, needed: int) -> UserError:
    return UserError(
        f"--max_source_length {max_source_length} is too small: the chat template and source_prefix alone "
        f"take {needed} tokens"
    )


def _cut_question(tok: Any, query: str, source_prefix: str, max_source_length: int) -> list[int]:
    """The prompt without history and with the question cut from the right so it fits.

    chatglm3/glm4 prompts are concatenations of separately encoded pieces, so the question's own tokens are
    cut and the closing ``<|assistant|>`` kept.  chatglm2/native prompts are one text encoded as a whole, so
    the question is cut by characters instead (keeping the most that fit, found by bisection) and the text
    re-encoded: the closing ``"\\n\\n答："`` / generation prompt stays intact and tokenized as usual.
    """
    family = tok.family
    if family in ("chatglm3", "glm4"):
        if family == "chatglm3":
            head = [tok.special_ids["[gMASK]"], tok.special_ids["sop"], tok.special_ids["<|user|>"]]
            head += tok.encode("\n")
            question = tok.encode(source_prefix + query)
        else:
            head = [tok.special_ids["[gMASK]"], tok.special_ids["<sop>"], tok.special_ids["<|user|>"]]
            question = tok.encode("\n" + source_prefix + query)
        tail = [tok.special_ids["<|assistant|>"]]
        room = max_source_length - len(head) - len(tail)
        if room < 0:
            raise _too_small(max_source_length, len(head) + len(tail))
        return head + question[:room] + tail

    def build(k: int) -> list[int]:
        return prompt_ids(tok, query[:k], (), source_prefix)

    shortest = build(0)
    if len(shortest) > max_source_length:
        raise _too_small(max_source_length, len(shortest))
    lo, hi = 0, len(query)  # invariant: build(lo) fits; build(hi) does not (the caller saw it overflow)
    best = shortest
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ids = build(mid)
        if len(ids) <= max_source_length:
            lo, best = mid, ids
        else:
            hi = mid
    return best


def encode_prompt(
    tok: Any, query: str, history: Any = None, max_source_length: int = 1024, source_prefix: str = ""
) -> list[int]:
    """Prompt ids (special tokens included) of at most `max_source_length` ids, for training and generation.

    Unlike THUDM's right-truncation (which cut off the current question and the "答：" cue), history turns
    are dropped oldest first, re-encoding each time, until the prompt fits; if the current question alone
    still does not fit, it is cut from the right while the template's closing part is kept, so the model
    still sees where its answer starts (see `_cut_question`).  UserError when even an empty question with
    the template and `source_prefix` does not fit.
    """
    turns = normalize_history(history)
    while True:
        ids = prompt_ids(tok, query, turns, source_prefix)
        if len(ids) <= max_source_length:
            return ids
        if not turns:
            return _cut_question(tok, query, source_prefix, max_source_length)
        turns = turns[1:]


def encode_example(
    tok: Any,
    prompt: str,
    response: str,
    history: Any,
    max_source_length: int,
    max_target_length: int,
    source_prefix: str = "",
) -> tuple[list[int], list[int]]:
    """One training example: ``(input_ids, labels)``, no padding.

    ``input_ids = prompt_ids + target_ids`` and ``labels = [-100] * len(prompt_ids) + target_ids``, where
    prompt_ids = `encode_prompt` (at most `max_source_length` ids, history dropped oldest first, then the
    question cut) and target_ids = `target_ids` (answer cut to `max_target_length`, then eos).
    """
    source = encode_prompt(tok, prompt, history, max_source_length, source_prefix)
    target = target_ids(tok, response, max_target_length)
    return source + target, [IGNORE_INDEX] * len(source) + target


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
