"""Continuous batching: one thread runs the model; requests join the running batch at every step and leave the
moment they are done.

Each step: rows whose client went away are dropped; waiting requests are admitted while rows are free
(`batch.admit_count`) and prefilled together, each with its own prefix (or none), and get their first token;
then every running row takes one decode step. A row ends at a stop id, a `stop` string or `max_tokens`, and
its slot is free for the next step. The queue of waiting requests is bounded: `submit` returns False past
it (the app answers 429). The request side talks to this thread only through `Job.sink` (called here,
with `Event`s) and `Job.cancelled`.

Failures belong to their request: a row whose logits are not finite or whose sampling raises, or that cannot
start (its seed), fails alone (500) and the others take their token; a forward pass that raises (out of
memory) fails the rows that were in it: the newcomers of a failed prefill, or the running rows of a failed
decode step.

Stopping: `drain()` refuses new requests (503) while the accepted ones are finished; `stop()` fails whatever
is still waiting or running and ends the thread (server shutdown).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ptune.infer.generate import GenerationSettings
from ptune.infer.text_stream import TextStream
from ptune.serve.batch import BatchCache, admit_count, keep_rows, merge
from ptune.serve.engine import Engine, pick_tokens

logger = logging.getLogger("ptune.serve")


@dataclass(frozen=True)
class Event:
    """What a request hears: kind "text" (a piece of the answer), "done" (finish_reason, usage) or "error"."""

    kind: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 200
    ids: tuple[int, ...] = ()  # "done": every generated id, the closing stop id included


@dataclass
class Job:
    """One chat completion to generate: prompt ids, the prefix name (None: the base alone), limits, sampling.
    `sink(event)` is called from the scheduler thread; setting `cancelled` frees the row at the next step."""

    prompt: list[int]
    prefix: str | None
    max_tokens: int
    sampling: GenerationSettings = GenerationSettings()
    stops: Sequence[str] = ()
    sink: Callable[[Event], None] = lambda event: None
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Row:
    """A running request: the token to feed next and its position (counted from the first prompt token, which
    is at 0 or, for a prefix recorded "after_prefix", at P: `Engine.first_position`), and the answer so far."""

    request: Job
    answer: TextStream
    next_token: int = 0
    position: int = 0
    generated: int = 0
    generator: torch.Generator | None = None


class Scheduler:
    """The batching loop (module docstring). `max_batch` rows at most run together; `max_queue` wait."""

    def __init__(
        self,
        engine: Engine,
        tokenizer,
        stop_ids: Sequence[int],
        max_batch: int = 16,
        max_queue: int = 256,
        max_prefill_tokens: int = 4096,
    ):
        self.engine, self.tokenizer, self.stop_ids = engine, tokenizer, list(stop_ids)
        self.max_batch, self.max_queue, self.max_prefill_tokens = max_batch, max_queue, max_prefill_tokens
        self.waiting: deque[Job] = deque()
        self.rows: list[Row] = []
        self.cache: BatchCache | None = None
        self.draining = False
        self._stopping = False
        self._stop_reason = "the server is shutting down"
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="ptune-scheduler", daemon=True)
        self.finished = self.failed = self.cancelled = 0

    # -------------------------------------------------------------------------------- request side
    def start(self) -> None:
        self._thread.start()

    def submit(self, request: Job) -> bool:
        """Queue a request; False when the queue is full (the caller answers 429). Refused while draining."""
        with self._wake:
            if self.draining or self._stopping:
                raise RuntimeError("draining")
            if len(self.waiting) >= self.max_queue:
                return False
            self.waiting.append(request)
            self._wake.notify()
            return True

    def stats(self) -> dict[str, int]:
        with self._wake:
            return {
                "running": len(self.rows),
                "waiting": len(self.waiting),
                "finished": self.finished,
                "failed": self.failed,
                "cancelled": self.cancelled,
            }

    def drain(self) -> None:
        """Take no new requests; those accepted are still answered."""
        with self._wake:
            self.draining = True

    def stop(self, timeout: float = 10.0, reason: str = "the server is shutting down") -> None:
        """Fail what is left (503, `reason`) and end the thread."""
        with self._wake:
            self.draining = self._stopping = True
            self._stop_reason = reason
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._fail_all(reason)  # what the loop left (nothing, if it ended)

    # -------------------------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self.waiting and not self.rows and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    break
            self.step()
        self._fail_all(self._stop_reason)

    def step(self) -> None:
        """One scheduling step: drop rows whose client left, admit and prefill waiting requests, then one
        decode step for every running row (the loop calls it; tests call it directly)."""
        with self._wake:
            lengths = [len(r.prompt) for r in self.waiting]
            count = admit_count(len(self.rows), lengths, self.max_batch, self.max_prefill_tokens)
            joining = [self.waiting.popleft() for _ in range(count)]
        self._drop_cancelled()
        self.cancelled += sum(r.cancelled.is_set() for r in joining)
        joining = self._start([r for r in joining if not r.cancelled.is_set()])
        try:
            if joining:
                self._prefill(joining)
        except Exception as e:  # the newcomers' pass (out of memory on a long prompt): the running rows go on
            self._failed_pass(joining, e)
        try:
            if self.rows:
                self._decode()
        except Exception as e:  # a failed forward pass fails its rows, not the server
            self._failed_pass(list(self.rows), e)

    def _failed_pass(self, rows: list[Row], error: Exception) -> None:
        """Fail the rows of a forward pass that raised and take them out of the batch (the newcomers of a
        failed prefill were never merged into it, unless it failed after the merge)."""
        logger.exception("generation step failed")
        for row in rows:
            self._fail(row.request, 500, f"generation failed: {type(error).__name__}: {error}")
        failed = {id(row) for row in rows}
        self._keep([i for i, row in enumerate(self.rows) if id(row) not in failed])

    def _start(self, joining: list[Job]) -> list[Row]:
        """The rows of the admitted requests; one that cannot even start (a seed torch refuses) fails alone."""
        rows = []
        for request in joining:
            try:
                rows.append(self._new_row(request))
            except Exception as e:
                self._fail(request, 500, f"generation failed: {type(e).__name__}: {e}")
        return rows

    def _prefill(self, rows: list[Row]) -> None:
        new, logits = self.engine.prefill([r.request.prompt for r in rows], [r.request.prefix for r in rows])
        self.cache = merge(self.cache, new)
        self.rows += rows
        self._advance(rows, logits, first=len(self.rows) - len(rows))

    def _decode(self) -> None:
        device = self.engine.device
        tokens = torch.tensor([row.next_token for row in self.rows], dtype=torch.long, device=device)
        positions = torch.tensor([row.position for row in self.rows], dtype=torch.long, device=device)
        self.cache, logits = self.engine.decode(self.cache, tokens, positions)
        for row in self.rows:
            row.position += 1
        self._advance(self.rows, logits, first=0)

    def _new_row(self, request: Job) -> Row:
        seed = request.sampling.seed
        generator = None
        if seed is not None:
            generator = torch.Generator(self.engine.device).manual_seed(seed)
        answer = TextStream(self.tokenizer, self.stop_ids, request.stops)
        position = self.engine.first_position(request.prefix) + len(request.prompt)
        return Row(request, answer, position=position, generator=generator)

    def _advance(self, rows: list[Row], logits: torch.Tensor, first: int) -> None:
        """Rows `rows` (batch rows first, first + 1, ...) got `logits` [n, V]: pick, send, and let the
        finished ones leave the batch."""
        tokens = pick_tokens(logits, [r.request.sampling for r in rows], [r.generator for r in rows])
        done = set()
        for k, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            if isinstance(token, str):  # its logits are not finite or its sampling raised: this row only
                logger.error("request failed alone: %s", token)
                done.add(first + k)
                self._fail(row.request, 500, f"generation failed: {token}")
                continue
            row.generated += 1
            piece = row.answer.push(token)
            reason = finish_reason(token, row, self.stop_ids)
            if reason is not None:
                piece += row.answer.finish()
            if piece:
                row.request.sink(Event("text", piece))
            if reason is not None:
                done.add(first + k)
                ids = tuple(row.answer.ids) + ((token,) if token in self.stop_ids else ())
                row.request.sink(Event("done", "", reason, len(row.request.prompt), row.generated, ids=ids))
                self.finished += 1
            row.next_token = token
        if done:
            self._keep([i for i in range(len(self.rows)) if i not in done])

    def _drop_cancelled(self) -> None:
        gone = [i for i, row in enumerate(self.rows) if row.request.cancelled.is_set()]
        self.cancelled += len(gone)
        if gone:
            self._keep([i for i in range(len(self.rows)) if i not in gone])

    def _keep(self, keep: list[int]) -> None:
        if keep == list(range(len(self.rows))):
            return
        self.rows = [self.rows[i] for i in keep]
        self.cache = keep_rows(self.cache, keep) if self.cache is not None else None

    def _fail(self, request: Job, status: int, message: str) -> None:
        self.failed += 1
        request.sink(Event("error", message, status=status))

    def _fail_all(self, message: str) -> None:
        with self._wake:
            left = [row.request for row in self.rows] + list(self.waiting)
            self.rows, self.cache = [], None
            self.waiting.clear()
        for request in left:
            self._fail(request, 503, message)


def finish_reason(token: int, row: Row, stop_ids: Sequence[int]) -> str | None:
    """Why a row ends after `token`: "stop" (a stop id or a stop string), "length" (max_tokens), or None."""
    if token in stop_ids or row.answer.stopped:
        return "stop"
    if row.generated >= row.request.max_tokens:
        return "length"
    return None
