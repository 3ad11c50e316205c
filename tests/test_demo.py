"""The README's demo, hermetically: the demo base as scripts/demo.sh makes it, `ptune train configs/demo.json`,
then `ptune predict configs/demo.json` — ROUGE-L after training beats the step-0 evaluation."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ptune.cli import main
from ptune.tiny import make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_demo_learns(tmp_path):
    script = (REPO / "scripts" / "demo.sh").read_text(encoding="utf-8")
    steps = int(re.search(r"--pretrain_steps (\d+)", script).group(1))
    rows = [
        json.loads(line)
        for line in (REPO / "data" / "demo" / "train.json").read_text(encoding="utf-8").splitlines()
    ]
    base = make_tiny_checkpoint(tmp_path / "base", "chatglm3", 0, [r["summary"] for r in rows], steps)
    cfg = json.loads((REPO / "configs" / "demo.json").read_text(encoding="utf-8"))
    cfg = {k: (str(REPO / v) if k.endswith("_file") else v) for k, v in cfg.items()}
    cfg.update(model_name_or_path=str(base), output_dir=str(tmp_path / "out"))
    config = tmp_path / "demo.json"
    config.write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")

    assert main(["train", str(config), "--disable_tqdm", "true"]) == 0
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    evals = [h for h in history if "eval_rouge-l" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    assert evals[0]["step"] == 0 and len(evals) >= 2
    assert evals[-1]["eval_rouge-l"] > evals[0]["eval_rouge-l"]
    assert losses[-1] < losses[0]
    assert (tmp_path / "out" / "training_curves.png").is_file()

    out = str(tmp_path / "out")
    assert main(["predict", str(config), "--ptuning_checkpoint", out, "--disable_tqdm", "true"]) == 0
    results = json.loads((tmp_path / "out" / "predict_results.json").read_text())
    assert results["predict_rouge-l"] > evals[0]["eval_rouge-l"]
    assert (
        len((tmp_path / "out" / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()) == 40
    )
