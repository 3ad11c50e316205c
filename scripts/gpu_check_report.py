"""Helpers of scripts/gpu_check.sh: they read the files ptune writes; only config6b imports ptune (the
benchmark's config writer, at ChatGLM3-6B's dimensions).

    python scripts/gpu_check_report.py config6b DIR                  # ChatGLM3-6B's config.json alone in DIR
    python scripts/gpu_check_report.py e2e --train D [--train D2] [--eval D] [--predict D] [--json F]
    python scripts/gpu_check_report.py gate LOG RC SECONDS [--json F] # did `ptune train` refuse as planned?
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def train_summary(folder: Path) -> dict:
    """Losses and evaluations from a `ptune train` output folder (trainer_state.json, train_results.json)."""
    state = _read(folder / "trainer_state.json") or {}
    history = state.get("log_history", [])
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [
        (h["step"], h.get("eval_loss"), h.get("eval_rouge-l"))
        for h in history
        if "eval_rouge-l" in h or "eval_loss" in h
    ]
    return {
        "folder": str(folder),
        "losses": losses,
        "first_loss": losses[0][1] if losses else None,
        "last_loss": losses[-1][1] if losses else None,
        "evals": evals,
        "train_results": _read(folder / "train_results.json"),
    }


def _pick(results: dict | None, *names: str) -> dict:
    if not results:
        return {}
    return {k: v for k, v in results.items() if any(k.endswith(n) for n in names)}


def e2e(args) -> int:
    report: dict = {"train": [train_summary(Path(d)) for d in args.train]}
    for t in report["train"]:
        print(f"train {t['folder']}: loss {t['first_loss']} (first logged) -> {t['last_loss']} (last logged)")
        print("  losses: " + " ".join(f"{step}:{loss:.4g}" for step, loss in t["losses"]))
        for step, loss, rouge in t["evals"]:
            print(f"  eval at step {step}: eval_loss {loss}, ROUGE-L {rouge}")
        if t["train_results"]:
            tr = t["train_results"]
            print(f"  train_loss {tr.get('train_loss')}, {tr.get('train_samples_per_second')} samples/s")
    keys = ("loss", "rouge-1", "rouge-l", "bleu-4", "empty_predictions", "samples_per_second")
    for verb, folder in (("eval", args.eval), ("predict", args.predict)):
        if folder:
            picked = _pick(_read(Path(folder) / f"{verb}_results.json"), *keys)
            report[verb] = picked
            print(
                f"{verb} {folder}: " + (json.dumps(picked, sort_keys=True) if picked else "NO RESULTS FILE")
            )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


def gate(args) -> int:
    """The refusal's contract (README, Planning memory): exit 2 and one line, before any weight is read."""
    text = Path(args.log).read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("ptune")]  # the rest: libraries' warnings, if any
    verdict = {
        "rc": int(args.rc),
        "seconds": float(args.seconds),
        "ptune_lines": ours,
        "other_lines": [line for line in lines if not line.startswith("ptune")][-5:],
    }
    verdict["ok"] = (
        verdict["rc"] == 2
        and len(ours) == 1
        and ours[0].startswith("ptune train: error: the plan predicts a peak")
    )
    print(json.dumps(verdict, ensure_ascii=False, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(verdict, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return 0 if verdict["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("config6b")
    p.add_argument("dir")
    p = sub.add_parser("e2e")
    p.add_argument("--train", action="append", default=[])
    p.add_argument("--eval")
    p.add_argument("--predict")
    p.add_argument("--json")
    p = sub.add_parser("gate")
    p.add_argument("log")
    p.add_argument("rc")
    p.add_argument("seconds")
    p.add_argument("--json")
    args = parser.parse_args(argv)
    if args.what == "config6b":
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        from ptune.bench.workload import SHAPES, chatglm_config

        # THUDM/chatglm3-6b's config.json, field for field (tests/e2e/test_bench.py checks it against the real one).
        config = {**chatglm_config("chatglm3", 65024, SHAPES["6b"]), "_name_or_path": "THUDM/chatglm3-6b"}
        (Path(args.dir) / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return 0
    return e2e(args) if args.what == "e2e" else gate(args)


if __name__ == "__main__":
    sys.exit(main())
