"""`ptune chat`: streaming generation equals batched generation, and the chat loop (history, clear, length
limit, Ctrl-C, errors) driven through a fake stdin on a tiny chatglm3 checkpoint with a prefix."""

from __future__ import annotations

import io
import re

import pytest
import torch

from ptune.cli import main as cli_main
from ptune.data.chat_format import answer_ids, encode_prompt, prompt_ids
from ptune.families.registry import load_tokenizer
from ptune.infer import chat
from ptune.infer.generate import GenerationSettings, generate
from ptune.infer.text_stream import TextStream
from ptune.model.load import load_model
from ptune.train.checkpoint import write_prefix_files
from tools.tiny import make_tiny_checkpoint

NEW = 8  # tokens per answer: the tiny random model practically never ends an answer by itself


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model runs several times faster on one thread than with threads fighting over 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, prefix checkpoint folder) of a tiny chatglm3 model and a fresh 4-token prefix."""
    root = tmp_path_factory.mktemp("chat")
    folder = make_tiny_checkpoint(root / "model", "chatglm3")
    torch.manual_seed(0)
    model = load_model(folder, pre_seq_len=4, device="cpu")
    model.source.family = "chatglm3"
    ckpt = root / "prefix"
    ckpt.mkdir()
    write_prefix_files(model, ckpt, [])
    return folder, ckpt


@pytest.fixture(scope="module")
def tok(tiny):
    return load_tokenizer(tiny[0])


def _run(monkeypatch, capsys, tiny, lines: str, *flags: str) -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    argv = ["--model_name_or_path", str(tiny[0]), "--ptuning_checkpoint", str(tiny[1]), "--device", "cpu"]
    code = chat.main([*argv, "--max_new_tokens", str(NEW), *flags])
    return code, capsys.readouterr().out


def _answers(out: str) -> list[str]:
    return re.findall(r"\nChatGLM: (.*?)\n\n用户: ", out, flags=re.S)


def _spy(monkeypatch) -> tuple[list[list[int]], list[str]]:
    """Record each turn's prompt ids (what stream_generate got) and answer text (what answer returned)."""
    prompts: list[list[int]] = []
    answers: list[str] = []
    real_stream, real_answer = chat.stream_generate, chat.answer

    def stream(model, prompt, *args, **kwargs):
        prompts.append(list(prompt))
        return real_stream(model, prompt, *args, **kwargs)

    def answer(*args, **kwargs):
        answers.append(real_answer(*args, **kwargs))
        return answers[-1]

    monkeypatch.setattr(chat, "stream_generate", stream)
    monkeypatch.setattr(chat, "answer", answer)
    return prompts, answers


def _contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i : i + len(part)] == part for i in range(len(ids) - len(part) + 1))


@pytest.mark.parametrize("with_prefix", [False, True])
def test_stream_generate_yields_the_tokens_of_generate(tiny, tok, with_prefix):
    model = load_model(tiny[0], ptuning_checkpoint=tiny[1] if with_prefix else None, device="cpu")
    assert model.pre_seq_len == (4 if with_prefix else 0)
    prompt = prompt_ids(tok, "你好", [("早上好", "早")])
    ids = torch.tensor([prompt])
    greedy = GenerationSettings(max_new_tokens=20)
    free = generate(model, ids, torch.ones_like(ids), tok.stop_token_ids, 0, greedy)[0].tolist()
    assert len(free) == 20  # the random model does not stop by itself
    first = free[1]  # made a stop id: the answer ends at its first occurrence, which is kept
    cases = [
        (greedy, tok.stop_token_ids, free),
        (greedy, [first], free[: free.index(first) + 1]),
        (GenerationSettings(max_new_tokens=20, min_new_tokens=3), [first], None),  # stop banned early
        (GenerationSettings(max_new_tokens=1), tok.stop_token_ids, free[:1]),
    ]
    for settings, stops, want in cases:
        expected = generate(model, ids, torch.ones_like(ids), stops, tok.pad_token_id, settings)[0].tolist()
        if want is not None:
            assert expected == want
        else:
            assert first not in expected[:3]
        assert list(chat.stream_generate(model, prompt, stops, settings)) == expected
    # Sampling draws from the generator exactly as generate does for one row.
    sample = GenerationSettings(max_new_tokens=12, do_sample=True, top_p=0.9, temperature=0.8)
    expected = generate(
        model, ids, torch.ones_like(ids), tok.stop_token_ids, 0, sample, torch.Generator().manual_seed(7)
    )[0].tolist()
    streamed = chat.stream_generate(
        model, prompt, tok.stop_token_ids, sample, torch.Generator().manual_seed(7)
    )
    assert list(streamed) == expected


def test_chat_keeps_history_and_clear_resets_it(monkeypatch, capsys, tiny, tok):
    prompts, answers = _spy(monkeypatch)
    code, out = _run(monkeypatch, capsys, tiny, "你好\n再说一次\nclear\n你好\nexit\n")
    assert code == 0
    assert out.startswith("ptune chat: chatglm3 model + a 4-token prefix on cpu.")
    shown = _answers(out)
    assert len(shown) == 3 and len(answers) == 3
    assert all(shown) and shown[0] != shown[1]
    assert [s.strip() for s in shown] == answers  # the history holds what was shown
    assert out.count("(history cleared)") == 1
    before, after = out.split("(history cleared)")
    assert len(_answers(before + "\n用户: ")) == 2 and len(_answers("\n用户: " + after)) == 1
    assert shown[2] == shown[0]  # same question, empty history again: the same greedy answer
    assert out.endswith("\n用户: exit\n")
    # The prompts: no history, then the first turn, then none again after clear.
    assert prompts[0] == prompt_ids(tok, "你好") == prompts[2]
    assert prompts[1] == prompt_ids(tok, "再说一次", [("你好", answers[0])])
    assert _contains(prompts[1], prompts[0][:-1])  # the first question...
    assert _contains(prompts[1], answer_ids(tok, answers[0]))  # ...and its answer
    assert len(answer_ids(tok, answers[0])) > 2


def test_streamed_text_is_the_answer(monkeypatch, capsys, tiny, tok):
    model = load_model(tiny[0], ptuning_checkpoint=tiny[1], device="cpu")
    tokens = list(
        chat.stream_generate(model, prompt_ids(tok, "你好"), tok.stop_token_ids, GenerationSettings(NEW))
    )
    code, out = _run(monkeypatch, capsys, tiny, "你好\n")
    assert code == 0  # end of input ends the chat like exit
    assert out.endswith(f"\nChatGLM: {tok.decode(tokens).lstrip()}\n\n用户: \n")  # what TextStream printed


def test_empty_lines_are_ignored_and_commands_are_trimmed(monkeypatch, capsys, tiny):
    prompts, _ = _spy(monkeypatch)
    code, out = _run(monkeypatch, capsys, tiny, "\n   \n你好\n  quit  \n再说一次\n")
    assert code == 0
    assert len(prompts) == 1 and len(_answers(out)) == 1


def test_history_is_cut_oldest_first_to_fit(monkeypatch, capsys, tiny, tok):
    prompts, answers = _spy(monkeypatch)
    code, out = _run(monkeypatch, capsys, tiny, "你好\n你好\nexit\n")
    assert code == 0
    limit = len(prompts[1])  # exactly room for the second prompt (one turn of history)
    history = [("你好", answers[0]), ("你好", answers[1])]
    assert len(prompt_ids(tok, "再说一次", history)) > limit

    prompts, answers = _spy(monkeypatch)
    questions = ["你好", "你好", "再说一次", "再说一次"]
    code, out = _run(monkeypatch, capsys, tiny, "\n".join(questions) + "\n", "--max_length", str(limit + NEW))
    assert code == 0
    assert len(prompts) == 4
    assert all(len(p) <= limit for p in prompts)
    assert prompts[1] == prompt_ids(tok, "你好", [("你好", answers[0])])  # still fits whole
    turns = list(zip(questions, answers, strict=True))
    assert (
        prompts[2]
        == encode_prompt(tok, "再说一次", turns[:2], limit)
        != prompt_ids(tok, "再说一次", turns[:2])
    )
    assert not _contains(prompts[2], answer_ids(tok, answers[0]))  # the oldest turn went first
    assert out.count("the oldest turns are forgotten") == 1  # said once


def test_dropped_turns_do_not_come_back(tok):
    turns, long, short = [("一", "二"), ("三", "四")], "你好" * 8, "好"
    limit = len(prompt_ids(tok, long, turns[1:]))  # room for the long question and the last turn only
    assert len(prompt_ids(tok, short, turns)) <= limit
    session = chat.ChatSession(tok, max_source_length=limit)
    session.history = list(turns)
    ids, notes = session.prompt(long)
    assert ids == prompt_ids(tok, long, turns[1:]) and len(notes) == 1 and session.history == turns[1:]
    ids, notes = session.prompt(short)  # both turns would fit again: the first one stays forgotten
    assert ids == prompt_ids(tok, short, turns[1:]) and notes == []
    session.clear()
    assert session.history == [] and not session.told_about_dropping
    ids, notes = session.prompt(long * 5)
    assert len(ids) == limit
    assert notes == [f"(the question is longer than {limit} tokens: only its beginning is used)"]


def test_ctrl_c_stops_the_answer_and_returns_to_the_prompt(monkeypatch, capsys, tiny, tok):
    calls = []

    def interrupted(model, prompt, stop_ids, settings):
        calls.append(list(prompt))
        yield from tok.encode("天气")
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(chat, "stream_generate", interrupted)
    code, out = _run(monkeypatch, capsys, tiny, "你好\n再说一次\n")
    assert code == 0
    assert "\nChatGLM: 天气 (stopped)\n\n用户: 再说一次\n\nChatGLM: 天气\n" in out
    assert calls[1] == prompt_ids(
        tok, "再说一次", [("你好", "天气")]
    )  # the partial answer stays in the history


class _BytesTokenizer:
    """Ids are UTF-8 bytes, so characters span several ids (like GLM-4's byte-level BPE)."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_holds_back_incomplete_characters():
    stream = TextStream(_BytesTokenizer())
    pieces = [stream.push(b) for b in "\n你好!".encode()]
    assert pieces == ["", "", "", "你", "", "", "好", "!"]
    stream = TextStream(_BytesTokenizer())
    assert [stream.push(b) for b in "a\xe4".encode()[:2]] == ["a", ""]
    assert stream.flush() == "\ufffd"  # an answer cut mid-character still shows that it was


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, tiny):
    cases = [
        (["--model_name_or_path", str(tmp_path / "missing")], "model folder not found"),
        (
            ["--model_name_or_path", str(tiny[0]), "--max_length", "8", "--max_new_tokens", "8"],
            "--max_length 8",
        ),
        (["--model_name_or_path", str(tiny[0]), "--max_length", "12", "--max_new_tokens", "8"], "too small"),
        (["--model_name_or_path", str(tiny[0]), "--top_p", "0.5"], "--do_sample"),
        (["--model_name_or_path", str(tiny[0]), "--bogus"], "unrecognized arguments: --bogus"),
        (["--model_name_or_path", str(tiny[0]), "--device", "gpu7"], "--device gpu7"),
    ]
    for argv, message in cases:
        assert cli_main(["chat", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ptune chat: error: ") and message in err and err.count("\n") == 1, err
