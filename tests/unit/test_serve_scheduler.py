"""Continuous batching in-process: rows with different prefixes (or none), prompt lengths and max_tokens join
and leave the batch at different steps, and each row's greedy answer is token for token that of
`ptune.infer.generate.generate` for its prompt alone (what `ptune predict` runs)."""

from __future__ import annotations

import pytest

from ptune.bench.serve import random_prefix
from ptune.infer.generate import GenerationSettings
from ptune.serve.cli import load
from ptune.serve.engine import Engine
from ptune.serve.scheduler import Job, Scheduler
from tests.serving import reference_answers

PROMPTS = ["你好", "hello there, how are you doing today?", "类型#上衣*材质#牛仔布*颜色#白色*风格#简约", "a"]
PREFIXES = {"p2": (2, 11), "p5": (5, 12), "p8": (8, 13)}  # name: (pre_seq_len, seed)
MAX = 12


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prefixes")
    paths = {name: random_prefix(tiny, folder / name, n, seed) for name, (n, seed) in PREFIXES.items()}
    tok, model, encoders = load(str(tiny), {name: str(p) for name, p in paths.items()})
    expected = {None: reference_answers(tiny, None, PROMPTS, MAX)}
    for name, path in paths.items():
        expected[name] = reference_answers(tiny, path, PROMPTS, MAX)
    return tok, Engine(model, encoders, tok.pad_token_id), expected


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    @property
    def done(self):
        return next((e for e in self.events if e.kind == "done"), None)

    @property
    def text(self):
        return "".join(e.text for e in self.events if e.kind == "text")


def job(tok, prefix, prompt, max_tokens, sink):
    from ptune.data.chat_format import encode_messages

    ids = encode_messages(tok, [{"role": "user", "content": prompt}])
    return Job(ids, prefix, max_tokens, GenerationSettings.from_openai(temperature=0.0), (), sink)


def test_rows_join_and_leave_with_their_own_prefix(served):
    tok, engine, expected = served
    scheduler = Scheduler(engine, tok, tok.stop_token_ids, max_batch=6, max_queue=16)
    plan = [  # (step at which it is submitted, prefix, prompt, max_tokens)
        (0, "p2", PROMPTS[0], 12),
        (0, None, PROMPTS[1], 5),
        (2, "p8", PROMPTS[2], 9),
        (2, "p5", PROMPTS[3], 12),
        (3, "p2", PROMPTS[1], 7),
        (3, None, PROMPTS[2], 12),
        (6, "p8", PROMPTS[0], 3),
        (6, "p5", PROMPTS[1], 12),  # waits: 6 rows are running at step 6
    ]
    records, sizes = [], []
    for step in range(40):
        for at, prefix, prompt, max_tokens in plan:
            if at == step:
                records.append((prefix, prompt, max_tokens, Recorder()))
                assert scheduler.submit(job(tok, prefix, prompt, max_tokens, records[-1][3]))
        scheduler.step()
        sizes.append(len(scheduler.rows))
        if step > 6 and not scheduler.rows and not scheduler.waiting:
            break
    assert max(sizes) == 6 and sizes[-1] == 0  # the batch filled up and emptied
    for prefix, prompt, max_tokens, record in records:
        text, ids = expected[prefix][prompt]
        want = ids[:max_tokens]
        assert list(record.done.ids) == want, (prefix, prompt)
        assert record.done.finish_reason == ("stop" if want[-1] in tok.stop_token_ids else "length")
        assert record.done.completion_tokens == len(want)
        if len(want) == len(ids):
            assert record.text == text


def test_cancelled_rows_leave_and_the_queue_is_bounded(served):
    tok, engine, _ = served
    scheduler = Scheduler(engine, tok, tok.stop_token_ids, max_batch=2, max_queue=1)
    a, b, c = Recorder(), Recorder(), Recorder()
    first, second = job(tok, "p2", PROMPTS[0], 50, a), job(tok, None, PROMPTS[1], 50, b)
    assert scheduler.submit(first)
    assert not scheduler.submit(job(tok, None, PROMPTS[0], 5, c))  # one may wait: full
    scheduler.step()
    assert scheduler.submit(second)
    scheduler.step()
    assert len(scheduler.rows) == 2 and scheduler.cache.rows == 2
    first.cancelled.set()
    scheduler.step()
    assert [row.request for row in scheduler.rows] == [second] and scheduler.cache.rows == 1
    assert scheduler.stats() == {"running": 1, "waiting": 0, "finished": 0, "failed": 0, "cancelled": 1}
    scheduler.drain()
    with pytest.raises(RuntimeError):
        scheduler.submit(job(tok, None, PROMPTS[0], 5, c))
    scheduler.stop()  # fails what is left
    assert b.events[-1].kind == "error" and b.events[-1].status == 503
    assert a.done is None


def test_seeded_sampling_repeats(served):
    tok, engine, _ = served
    texts = []
    for _ in range(2):
        scheduler = Scheduler(engine, tok, tok.stop_token_ids)
        record = Recorder()
        request = job(tok, "p5", PROMPTS[1], 8, record)
        scheduler.submit(
            Job(request.prompt, "p5", 8, GenerationSettings.from_openai(1.0, 0.9, seed=7), (), record)
        )
        while scheduler.rows or scheduler.waiting:
            scheduler.step()
        texts.append(record.done.ids)
    assert texts[0] == texts[1] and len(texts[0]) > 0


@pytest.mark.parametrize("bits", [8, 4])
def test_a_quantized_base_serves_what_generate_gives_on_it(tiny, bits, tmp_path):
    """`ptune serve --quantization_bit`: the batched rows (a prefix and none, together) answer token for token
    what `generate` gives for each prompt alone on the same quantized base and prefix."""
    import torch

    from ptune.infer.generate import generate
    from ptune.model.load import load_model

    prefix = random_prefix(tiny, tmp_path / "p4", 4, 21)
    tok, model, encoders = load(str(tiny), {"p4": str(prefix)}, quantization_bit=bits)
    scheduler = Scheduler(Engine(model, encoders, tok.pad_token_id), tok, tok.stop_token_ids, max_batch=4)
    plan = [(name, prompt) for name in ("p4", None) for prompt in PROMPTS[:2]]
    records = [Recorder() for _ in plan]
    for (name, prompt), record in zip(plan, records, strict=True):
        assert scheduler.submit(job(tok, name, prompt, 6, record))
    while scheduler.rows or scheduler.waiting:
        scheduler.step()
    for (name, prompt), record in zip(plan, records, strict=True):
        alone = load_model(
            tiny, ptuning_checkpoint=prefix if name else None, quantization_bit=bits, family=tok.family
        )
        ids = job(tok, name, prompt, 6, None).prompt
        want = generate(
            alone,
            torch.tensor([ids]),
            torch.ones(1, len(ids), dtype=torch.long),
            tok.stop_token_ids,
            tok.pad_token_id,
            GenerationSettings(max_new_tokens=6),
        )[0].tolist()
        assert list(record.done.ids) == want, (bits, name, prompt)


def run_until_idle(scheduler, steps: int = 100) -> None:
    for _ in range(steps):
        if not scheduler.rows and not scheduler.waiting:
            return
        scheduler.step()
    raise AssertionError("the scheduler did not finish")


@pytest.mark.parametrize(
    "bad",
    [GenerationSettings.from_openai(1e-300, 1.0, None), GenerationSettings.from_openai(1.0, 1.0, 2**70)],
    ids=["temperature-1e-300", "seed-2**70"],
)
def test_a_row_whose_sampling_fails_fails_alone(served, bad):
    """Values the API refuses (tests/e2e/test_serve_api.py) reaching the scheduler anyway: a temperature that
    turns the logits into inf/NaN (multinomial raises) or a seed torch refuses fails its own row with a 500,
    and the greedy rows beside it (admitted with it, and running before it) answer what they answer alone."""
    tok, engine, expected = served
    scheduler = Scheduler(engine, tok, tok.stop_token_ids, max_batch=4)
    early, good, victim = Recorder(), Recorder(), Recorder()
    assert scheduler.submit(job(tok, "p2", PROMPTS[0], MAX, early))
    scheduler.step()  # `early` is running when the bad one joins
    assert scheduler.submit(job(tok, None, PROMPTS[1], MAX, good))
    request = job(tok, "p5", PROMPTS[2], MAX, victim)
    assert scheduler.submit(Job(request.prompt, "p5", MAX, bad, (), victim))
    run_until_idle(scheduler)
    assert [e.kind for e in victim.events] == ["error"] and victim.events[0].status == 500
    assert list(early.done.ids) == expected["p2"][PROMPTS[0]][1][:MAX]
    assert list(good.done.ids) == expected[None][PROMPTS[1]][1][:MAX]
    assert scheduler.stats()["failed"] == 1 and scheduler.stats()["finished"] == 2


def test_a_row_whose_logits_are_not_finite_fails_alone(served, tiny):
    """A prefix holding a NaN (refused at load since; built here by hand) makes its row's logits NaN: that row
    fails (greedy: argmax of NaN would be garbage; sampled: multinomial raises), the others go on."""
    import torch

    tok, engine, expected = served
    nan = [(k.clone(), v.clone()) for k, v in engine.prefix_kv["p2"]]
    nan[0][0][0, 0, 0, 0] = float("nan")
    engine.prefix_kv["nan"] = nan
    engine.position_offsets["nan"] = engine.position_offsets["p2"]  # the engine knows each prefix's positions
    try:
        scheduler = Scheduler(engine, tok, tok.stop_token_ids, max_batch=4)
        records = {name: Recorder() for name in ("greedy-nan", "sampled-nan", "p5", "base")}
        for name, record in records.items():
            prefix = "nan" if name.endswith("nan") else None if name == "base" else name
            request = job(tok, prefix, PROMPTS[1], MAX, record)
            sampling = (
                GenerationSettings.from_openai(0.8, 0.9, 3)
                if name == "sampled-nan"
                else GenerationSettings.from_openai(0.0)
            )
            assert scheduler.submit(Job(request.prompt, prefix, MAX, sampling, (), record))
        run_until_idle(scheduler)
    finally:
        del engine.prefix_kv["nan"], engine.position_offsets["nan"]
    for name in ("greedy-nan", "sampled-nan"):
        assert [e.kind for e in records[name].events] == ["error"], name
        assert "not finite" in records[name].events[0].text
    assert list(records["p5"].done.ids) == expected["p5"][PROMPTS[1]][1][:MAX]
    assert list(records["base"].done.ids) == expected[None][PROMPTS[1]][1][:MAX]
    assert torch.isfinite(engine.prefix_kv["p2"][0][0]).all()


def test_a_prefill_that_raises_fails_only_its_newcomers(served, monkeypatch):
    """A newcomer's prefill pass that raises (out of memory on a long prompt, simulated) fails the requests in
    that pass; the row already running keeps its cache and answers what it answers alone."""
    tok, engine, expected = served
    scheduler = Scheduler(engine, tok, tok.stop_token_ids, max_batch=4)
    running, newcomer = Recorder(), Recorder()
    assert scheduler.submit(job(tok, "p2", PROMPTS[0], MAX, running))
    scheduler.step()
    poison = job(tok, "p8", PROMPTS[2], MAX, newcomer)
    real = engine.prefill

    def prefill(prompts, prefixes):
        if poison.prompt in prompts:
            raise RuntimeError("out of memory (simulated)")
        return real(prompts, prefixes)

    monkeypatch.setattr(engine, "prefill", prefill)
    assert scheduler.submit(poison)
    run_until_idle(scheduler)
    assert [e.kind for e in newcomer.events] == ["error"] and newcomer.events[0].status == 500
    assert newcomer.events[0].text == "generation failed: RuntimeError: out of memory (simulated)"
    assert list(running.done.ids) == expected["p2"][PROMPTS[0]][1][:MAX]
