"""The benchmark (ptune/bench/run.py): the synthetic workload obeys docs/workload.md, and a tiny-shape run of
the real training and predict paths prints one table row per configuration and writes the same rows as JSON.
A smoke run only: no assertion on speed."""

from __future__ import annotations

import json

import pytest

from ptune.bench import run as bench


def _split(sample: dict) -> tuple[list[int], list[int], list[int]]:
    """(prompt = [gMASK, sop] + source, target, [eos]) of one sample, cut where its labels start."""
    n = sample["labels"].count(-100)
    return sample["input_ids"][:n], sample["input_ids"][n:-1], sample["input_ids"][-1:]


def test_special_ids_real_and_scaled():
    assert bench.special_ids(65024) == bench.SpecialIds(64790, 64792, 2, 0, 64789)
    # Same distance from the top of the vocabulary at the tiny shape.
    assert bench.special_ids(1024) == bench.SpecialIds(790, 792, 2, 0, 789)


@pytest.mark.parametrize("vocab", [65024, 1024])
def test_training_samples_follow_the_workload(vocab):
    ids = bench.special_ids(vocab)
    samples = bench.make_samples(300, seed=5, ids=ids)
    sources, targets = set(), set()
    for s in samples:
        prompt, target, end = _split(s)
        assert prompt[:2] == [ids.gmask, ids.sop]
        assert end == [ids.eos]
        assert 20 <= len(prompt) - 2 <= 63
        assert 40 <= len(target) <= 126
        # -100 exactly over [gMASK, sop] + source; the labels equal the inputs from the first target token on.
        assert s["labels"] == [-100] * len(prompt) + target + [ids.eos]
        assert len(s["labels"]) == len(s["input_ids"]) == len(prompt) + len(target) + 1
        assert all(3 <= t < ids.content_end for t in prompt[2:] + target)
        sources.add(len(prompt) - 2)
        targets.add(len(target))
    # Uniform over the whole ranges: both ends are reached with 300 draws.
    assert min(sources) == 20 and max(sources) == 63
    assert min(targets) <= 42 and max(targets) >= 124
    mean = sum(len(s["input_ids"]) for s in samples) / len(samples)
    assert 120 < mean < 135  # docs/workload.md §2: ~127.5


def test_samples_are_deterministic_and_nested():
    ids = bench.special_ids(1024)
    assert bench.make_samples(10, 3, ids) == bench.make_samples(10, 3, ids)
    assert bench.make_samples(10, 3, ids) == bench.make_samples(25, 3, ids)[:10]
    assert bench.make_samples(10, 3, ids) != bench.make_samples(10, 4, ids)


def test_prompt_samples_are_sorted_and_in_range():
    ids = bench.special_ids(65024)
    samples = bench.make_prompt_samples(200, 1, ids)
    lengths = [s["labels"].count(-100) for s in samples]
    assert lengths == sorted(lengths)
    assert min(lengths) == 2 + 40 and max(lengths) == 2 + 64
    assert all(s["input_ids"][:2] == [ids.gmask, ids.sop] for s in samples)


def test_matmul_params_of_the_6b_shape():
    import torch
    from transformers import GlmForCausalLM

    from ptune.bench.workload import chatglm_config
    from ptune.model.convert import glm_config

    cfg = chatglm_config("chatglm3", 65024, bench.SHAPES["6b"])
    with torch.device("meta"):
        model = GlmForCausalLM(glm_config(cfg, bench.Path("x")))
    assert sum(p.numel() for p in model.parameters()) == 6_243_584_000
    assert bench.matmul_params(model) == 5_977_245_696  # docs/workload.md §1: 5.98e9


def test_the_6b_config_is_chatglm3_6b_field_for_field():
    """scripts/gpu_check_report.py writes this as THUDM/chatglm3-6b's config.json for the plan gate's check."""
    from ptune.bench.workload import chatglm_config

    real = (
        bench.Path(__file__).resolve().parents[2].parent / "shared/reference/formats/chatglm3-6b/config.json"
    )
    if not real.is_file():
        pytest.skip("shared/reference/formats is not beside this checkout")
    ours = {**chatglm_config("chatglm3", 65024, bench.SHAPES["6b"]), "_name_or_path": "THUDM/chatglm3-6b"}
    assert ours == json.loads(real.read_text())


def test_tiny_shape_is_the_test_models_shape():
    from tools.tiny import TINY_DIMS

    assert {k: bench.SHAPES["tiny"][k] for k in TINY_DIMS} == TINY_DIMS


def test_tiny_run_prints_a_row_per_configuration(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--micro_batch",
        "1,2",
        "--grad_accum",
        "2",
        "--pre_seq_len",
        "4,8",
        "--steps",
        "1",
        "--warmup_steps",
        "1",
        "--predict_batch",
        "3",
        "--predict_steps",
        "2",
        "--new_tokens",
        "3",
        "--json",
        str(out),
    ]
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("mode"))
    assert lines[header].split() == [
        "mode",
        "batch",
        "pre_seq_len",
        "samples/s",
        "tokens/s",
        "TFLOP/s",
        "of",
        "peak",
        "peak",
        "GiB",
        "plan",
        "GiB",
    ]
    assert set(lines[header + 1]) == {"-", " "}
    table = [line.split() for line in lines[header + 2 :] if line.split()[0] in ("train", "predict")]
    # (mode, micro-batch x accum, pre_seq_len); "1 x 2" splits into three words.
    assert [(r[0], " ".join(r[1:4]), r[4]) if r[0] == "train" else (r[0], r[1], r[2]) for r in table] == [
        ("train", "1 x 2", "4"),
        ("train", "2 x 2", "4"),
        ("predict", "3", "4"),
        ("train", "1 x 2", "8"),
        ("train", "2 x 2", "8"),
        ("predict", "3", "8"),
    ]
    # CPU: "of peak" against this machine's timed matmul; the measured peak beside the plan's.
    assert all(r[-3].endswith("%") and r[-2] != "-" and r[-1] != "-" for r in table)

    data = json.loads(out.read_text(encoding="utf-8"))
    rows = data["rows"]
    n = data["meta"]["matmul_params"]
    assert data["meta"]["shape"] == "tiny" and data["meta"]["device"] == "cpu"
    assert data["meta"]["peak_source"] == "measured matmul" and data["meta"]["peak_tflops"] > 0
    assert [(r["mode"], r["micro_batch"], r["grad_accum"], r["pre_seq_len"]) for r in rows] == [
        ("train", 1, 2, 4),
        ("train", 2, 2, 4),
        ("predict", 3, 1, 4),
        ("train", 1, 2, 8),
        ("train", 2, 2, 8),
        ("predict", 3, 1, 8),
    ]
    for r in rows:
        assert r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 and r["peak_gib"] > 0
        assert r["memory_kind"] == "memtracker" and r["peak_fraction"] > 0
        # The plan of the row's longest batch against the same step measured on the real tensors.
        assert r["plan_gib"] == pytest.approx(r["peak_gib"], rel=0.10)
        if r["mode"] == "train":
            assert r["samples"] == r["micro_batch"] * 2 and r["timed_steps"] == 1
            # Real tokens of the timed step: between the shortest and longest possible samples.
            assert 63 * r["samples"] <= r["tokens"] <= 192 * r["samples"]
            assert r["tflops"] * r["seconds"] * 1e12 == pytest.approx(4 * n * r["tokens"])
            assert 0 < r["step_seconds"] <= r["seconds"]  # the step windows lie inside the timed span
        else:
            assert r["samples"] == 6 and r["tokens"] == 6 * 3 and r["timed_steps"] == 2
            assert r["tflops"] * r["seconds"] * 1e12 > 2 * n * r["tokens"]  # prompt tokens count too
