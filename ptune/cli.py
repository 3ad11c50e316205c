"""`ptune VERB ...`: each verb is one typed function; `main(argv) -> int` maps errors to exit codes."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ptune.config.parser import Command, parse_command
from ptune.io.errors import UserError
from ptune.io.files import dumps_json

logger = logging.getLogger("ptune")

USAGE = """usage: ptune VERB [CONFIG.json|CONFIG.yaml] [--flag value ...]

    ptune train   CONFIG.json [--flag value ...]   P-tune a prefix (THUDM's main.py --do_train)
    ptune eval    CONFIG.json [...]                 eval_loss (+ ROUGE/BLEU with --predict_with_generate true)
    ptune predict CONFIG.json [...]                 generated_predictions.txt + predict_results.json
    ptune data    CONFIG.json [--write_encoded F]   look at the data: counts, lengths, encoded examples
    ptune score   PREDICTIONS.txt                   re-score a predictions file
    ptune chat    --model_name_or_path DIR [--ptuning_checkpoint CKPT]   talk to the model
    ptune export  CHECKPOINT --format thudm         the prefix in THUDM's layout
    ptune plot    OUTPUT_DIR                        redraw training_curves.png
    ptune plan    CONFIG.json [--gpu_memory 24GiB] [--device_name H100]   predicted peak memory and FLOPs
    ptune bench   [--shape tiny|6b ...]             speed and memory (--serve: of a live server)
    ptune serve   --model_name_or_path DIR --prefix NAME=CKPT ...   OpenAI-compatible API + chat page

`ptune VERB --help` lists a verb's arguments. Bad input ends in one line on stderr and exit code 2
(`--debug` shows the traceback)."""


def train(argv: list[str]) -> int:
    """P-tune a prefix (THUDM's main.py --do_train): see ptune.train.recipe."""
    from ptune.train.recipe import PTuningRecipe

    return PTuningRecipe.from_argv("train", argv).run()


def evaluate(argv: list[str]) -> int:
    """Teacher-forced eval_loss on validation_file; with --predict_with_generate also ROUGE/BLEU."""
    from ptune.train.recipe import PTuningRecipe

    return PTuningRecipe.from_argv("eval", argv).run()


def predict(argv: list[str]) -> int:
    """Generate answers for test_file: generated_predictions.txt + predict_results.json."""
    from ptune.train.recipe import PTuningRecipe

    return PTuningRecipe.from_argv("predict", argv).run()


@dataclass
class ScoreArguments:
    """`ptune score`'s arguments."""

    file: str = field(
        metadata={
            "positional": True,
            "help": "generated_predictions.txt: one JSON object per line with labels and predict",
        }
    )


SCORE = Command("ptune score", (ScoreArguments,), "Re-score a predictions file.")


def score(argv: list[str]) -> int:
    """Re-score a generated_predictions.txt: prints the metrics as JSON."""
    from ptune.score.metrics import compute_metrics
    from ptune.score.predictions import read_predictions

    (args,) = parse_command(SCORE, argv)
    preds, labels = read_predictions(Path(args.file))
    print(dumps_json(compute_metrics(preds, labels)))
    return 0


VERBS = {"train": train, "eval": evaluate, "predict": predict, "score": score}
# Verbs in their own modules, imported only when used: (module, function taking argv and returning the exit code).
# Each module's COMMAND (ptune.config.parser.Command) declares the verb's arguments.
MODULE_VERBS = {
    "chat": ("ptune.infer.chat", "main"),
    "data": ("ptune.data.report", "main"),
    "export": ("ptune.model.export", "main"),
    "plot": ("ptune.train.plot", "main"),
    "bench": ("ptune.bench.run", "main"),
    "plan": ("ptune.plan.cli", "main"),
    "serve": ("ptune.serve.cli", "main"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ptune` and `python -m ptune`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS and verb not in MODULE_VERBS:
        print(
            f"ptune: error: unknown verb {verb!r} (train, eval, predict, score, {', '.join(MODULE_VERBS)})",
            file=sys.stderr,
        )
        return 2
    try:
        if verb in VERBS:
            return VERBS[verb](rest)
        import importlib

        module, func = MODULE_VERBS[verb]
        return getattr(importlib.import_module(module), func)(rest)
    except UserError as e:
        if debug:
            raise
        print(f"ptune {verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ptune {verb}: interrupted", file=sys.stderr)
        return 130
