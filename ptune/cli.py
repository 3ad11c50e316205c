"""`ptune VERB ...`: each verb is one typed function; `main(argv) -> int` maps errors to exit codes."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

from ptune.errors import UserError

logger = logging.getLogger("ptune")

USAGE = """usage: ptune VERB [CONFIG.json] [--flag value ...]

    ptune train   CONFIG.json [--flag value ...]   P-tune a prefix (THUDM's main.py --do_train)
    ptune eval    CONFIG.json [...]                 eval_loss (+ ROUGE/BLEU with --predict_with_generate true)
    ptune predict CONFIG.json [...]                 generated_predictions.txt + predict_results.json
    ptune score   PREDICTIONS.txt                   re-score a predictions file
    ptune chat    --model_name_or_path DIR [--ptuning_checkpoint CKPT]   talk to the model
    ptune export  CHECKPOINT --format thudm         the prefix in THUDM's layout
    ptune plot    OUTPUT_DIR                        redraw training_curves.png
    ptune bench   [--shape tiny|6b ...]             speed and memory

`ptune VERB --help` lists a verb's arguments. Bad input ends in one line on stderr and exit code 2
(`--debug` shows the traceback)."""


def _setup_logging(training_args=None) -> None:
    level = logging.INFO
    if training_args is not None and not training_args.should_log:
        level = logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_warning()
    # ptune checks data files before datasets reads them and reports problems in one line of its own; datasets'
    # ERROR lines would only print the same cause above it, less precisely.
    datasets.utils.logging.set_verbosity(logging.CRITICAL)


def _resume_target(model_args, training_args) -> str | None:
    """`resume_from_checkpoint`: a path, or true for the newest *complete* checkpoint in output_dir; checked
    file by file before anything is loaded, and against --pre_seq_len / --prefix_projection."""
    from ptune.checkpoint import newest_complete_checkpoint, verify_resumable
    from ptune.model import check_prefix_flags

    value = training_args.resume_from_checkpoint
    if value in (None, False, "false", "False", ""):
        return None
    if value in (True, "true", "True"):
        last = newest_complete_checkpoint(training_args.output_dir)
        if last is None:
            raise UserError(
                f"--resume_from_checkpoint true: no complete checkpoint-* folder in {training_args.output_dir}"
            )
        logger.info("resuming from %s, the newest complete checkpoint", last)
        value = str(last)
    elif not Path(value).is_dir():
        raise UserError(f"--resume_from_checkpoint {value}: folder not found")
    verify_resumable(value)
    check_prefix_flags(value, model_args.pre_seq_len, model_args.prefix_projection)
    return str(value)


def _check_output(model_args, training_args) -> None:
    """output_dir may not be the model or tokenizer folder, a file, read-only or full (see ptune.rundir)."""
    from ptune.rundir import check_output_dir

    check_output_dir(
        training_args.output_dir,
        {
            "--model_name_or_path": model_args.model_name_or_path,
            "--tokenizer_name": model_args.tokenizer_name,
        },
    )


def _load(model_args, training_args, pre_seq_len_needed: bool):
    """Tokenizer and model for any verb, reading prefix settings from the checkpoint where there is one."""
    from ptune.model import load_model
    from ptune.tokenizer import load_tokenizer

    if pre_seq_len_needed and not model_args.pre_seq_len and not model_args.ptuning_checkpoint:
        raise UserError("ptune train needs --pre_seq_len N (the prefix length; THUDM's recipes use 128)")
    if not pre_seq_len_needed and model_args.pre_seq_len and not model_args.ptuning_checkpoint:
        logger.warning(
            "--pre_seq_len %d without --ptuning_checkpoint: using a freshly initialised, untrained prefix",
            model_args.pre_seq_len,
        )
    tokenizer = load_tokenizer(
        model_args.tokenizer_name or model_args.model_name_or_path, model_args.chat_format
    )
    model = load_model(
        model_args.model_name_or_path,
        dtype=model_args.dtype,
        pre_seq_len=model_args.pre_seq_len,
        prefix_projection=model_args.prefix_projection,
        ptuning_checkpoint=model_args.ptuning_checkpoint,
        device=training_args.device,
        attn_implementation=model_args.attn_implementation,
        prefix_dropout=model_args.prefix_dropout,
        trust_remote_code=model_args.trust_remote_code,
        quantization_bit=model_args.quantization_bit,
        family=tokenizer.family,
    )
    return tokenizer, model


def _dataset(
    path, tokenizer, data_args, training_args, max_target, max_samples, require_response=True, cache_dir=None
):
    from ptune.data import Columns, build_dataset

    if path is None:
        return None
    for flag, value in (
        ("--prompt_column", data_args.prompt_column),
        ("--response_column", data_args.response_column),
    ):
        if value is None:
            raise UserError(f"{flag} is required: the name of the column in {path} that holds it")
    columns = Columns(data_args.prompt_column, data_args.response_column, data_args.history_column)
    with training_args.main_process_first(desc=f"tokenizing {path}"):
        return build_dataset(
            path, tokenizer, columns, data_args, max_target, max_samples, require_response, cache_dir
        )


def _trainer(
    model, tokenizer, tok_folder, training_args, gen_args, train_ds=None, eval_ds=None, sink=None, score=True
):
    from transformers import EarlyStoppingCallback
    from transformers.trainer_utils import IntervalStrategy

    from ptune.data import Collator
    from ptune.generate import GenerationSettings
    from ptune.trainer import PrefixTrainer, SaveWhenStopping, StopOnNonFiniteLoss, make_compute_metrics

    training_args.remove_unused_columns = False  # our datasets hold exactly what the collator needs
    if train_ds is None:  # eval/predict with a training config: its evaluation schedule does not apply
        training_args.eval_strategy = IntervalStrategy.NO
        training_args.load_best_model_at_end = False
    training_args.apply_logging_dir()  # THUDM-era --logging_dir: where TensorBoard logs go
    training_args.logging_nan_inf_filter = False  # let a NaN reach the log, where StopOnNonFiniteLoss sees it
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = (
            False  # the prefix, the only trained part, is used every step
        )
    if training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False  # pinning is for host-to-GPU copies; on the CPU it warns
    callbacks = [StopOnNonFiniteLoss(), SaveWhenStopping()]
    if training_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training_args.early_stopping_patience))
    return PrefixTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=Collator(tokenizer.pad_token_id, with_prompts=training_args.predict_with_generate),
        compute_metrics=make_compute_metrics(tokenizer, sink, score)
        if training_args.predict_with_generate
        else None,
        callbacks=callbacks,
        chat_tokenizer=tokenizer,
        tokenizer_files=[Path(tok_folder) / f for f in tokenizer.files],
        generation=GenerationSettings(
            max_new_tokens=gen_args.max_new_tokens,
            do_sample=gen_args.do_sample,
            top_p=gen_args.top_p,
            temperature=gen_args.temperature,
        ),
    )


def train(argv: list[str]) -> int:
    """P-tune a prefix; always ends with a final checkpoint and the prefix saved in output_dir itself.

    Exit code 0, or 128 + N when signal N (SIGTERM, SIGHUP) stopped the run after saving a checkpoint."""
    from transformers import set_seed

    from ptune.config import parse_args
    from ptune.rundir import RunLock, check_overwrite

    model_args, data_args, training_args, gen_args = parse_args("train", argv)
    _setup_logging(training_args)
    _check_output(model_args, training_args)
    with RunLock(training_args.output_dir, "train", enabled=training_args.should_save):
        resume = _resume_target(model_args, training_args)
        check_overwrite(training_args.output_dir, training_args.overwrite_output_dir, resume is not None)
        set_seed(training_args.seed)
        tokenizer, model = _load(model_args, training_args, pre_seq_len_needed=True)
        train_ds = _dataset(
            data_args.train_file, tokenizer, data_args, training_args, data_args.max_target_length,
            data_args.max_train_samples, cache_dir=model_args.cache_dir,
        )  # fmt: skip
        eval_ds = None
        if training_args.eval_strategy != "no":
            eval_ds = _dataset(
                data_args.validation_file, tokenizer, data_args, training_args,
                data_args.val_max_target_length, data_args.max_eval_samples, cache_dir=model_args.cache_dir,
            )  # fmt: skip
        tok_folder = model_args.tokenizer_name or model.source["path"]
        trainer = _trainer(model, tokenizer, tok_folder, training_args, gen_args, train_ds, eval_ds)
        return _run_training(trainer, resume, len(train_ds))


def _run_training(trainer, resume: str | None, train_samples: int) -> int:
    """trainer.train with SIGTERM/SIGHUP turned into a clean stop; then the final prefix, metrics and plot."""
    from ptune.checkpoint import checkpoint_global_step
    from ptune.trainer import StopOnSignal

    if resume is not None and checkpoint_global_step(resume) >= trainer.args.max_steps > 0:
        # The Trainer would run one more step past max_steps (and change the prefix): there is nothing to do.
        logger.warning("%s is already at max_steps %d: nothing to train", resume, trainer.args.max_steps)
        return 0
    stop = StopOnSignal()
    trainer.add_callback(stop)
    stop.install()
    logger.info(
        "training into %s; SIGTERM or SIGHUP stops after the current step, saving a checkpoint",
        trainer.args.output_dir,
    )
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        stop.uninstall()
    trainer.save_model()
    metrics = {**result.metrics, "train_samples": train_samples}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    _plot(trainer.args)
    if stop.received:
        step = trainer.state.global_step
        print(
            f"ptune train: stopped by {signal.Signals(stop.received).name} after step {step}; checkpoint-{step} "
            "is saved: continue with --resume_from_checkpoint true",
            file=sys.stderr,
        )
        return 128 + stop.received
    return 0


def _plot(training_args) -> None:
    if not training_args.should_save:
        return
    from ptune.plot import plot_run

    try:
        plot_run(training_args.output_dir)
    except UserError as e:  # a finished run must not fail over its picture
        logger.warning("no training_curves.png: %s", e)


def _refuse_overwrite(training_args, name: str) -> None:
    path = Path(training_args.output_dir) / name
    if path.exists() and not training_args.overwrite_output_dir:
        raise UserError(f"{path}: already exists; pass --overwrite_output_dir to replace it")


def evaluate(argv: list[str]) -> int:
    """Teacher-forced eval_loss on validation_file; with --predict_with_generate also ROUGE/BLEU."""
    from ptune.config import parse_args
    from ptune.rundir import RunLock

    model_args, data_args, training_args, gen_args = parse_args("eval", argv)
    _setup_logging(training_args)
    _check_output(model_args, training_args)
    with RunLock(training_args.output_dir, "eval", enabled=training_args.should_save):
        _refuse_overwrite(training_args, "eval_results.json")
        return _evaluate(model_args, data_args, training_args, gen_args)


def _evaluate(model_args, data_args, training_args, gen_args) -> int:
    tokenizer, model = _load(model_args, training_args, pre_seq_len_needed=False)
    eval_ds = _dataset(
        data_args.validation_file, tokenizer, data_args, training_args,
        data_args.val_max_target_length, data_args.max_eval_samples, cache_dir=model_args.cache_dir,
    )  # fmt: skip
    if training_args.predict_with_generate:  # metrics do not depend on the order; padding does
        from ptune.data import longest_prompt_first

        eval_ds = eval_ds.select(longest_prompt_first(eval_ds["labels"]))
    tok_folder = model_args.tokenizer_name or model.source["path"]
    trainer = _trainer(model, tokenizer, tok_folder, training_args, gen_args, eval_ds=eval_ds)
    metrics = trainer.evaluate(metric_key_prefix="eval")
    metrics["eval_samples"] = len(eval_ds)
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return 0


def predict(argv: list[str]) -> int:
    """Generate answers for test_file: generated_predictions.txt + predict_results.json."""
    from ptune.config import parse_args
    from ptune.rundir import RunLock

    model_args, data_args, training_args, gen_args = parse_args("predict", argv)
    _setup_logging(training_args)
    _check_output(model_args, training_args)
    with RunLock(training_args.output_dir, "predict", enabled=training_args.should_save):
        _refuse_overwrite(training_args, "generated_predictions.txt")
        return _predict(model_args, data_args, training_args, gen_args)


def _predict(model_args, data_args, training_args, gen_args) -> int:
    from ptune.metrics import compute_metrics

    path = data_args.test_file  # config.parse_args requires it for predict
    tokenizer, model = _load(model_args, training_args, pre_seq_len_needed=False)
    test_ds = _dataset(
        path, tokenizer, data_args, training_args, data_args.val_max_target_length,
        data_args.max_predict_samples, require_response=False, cache_dir=model_args.cache_dir,
    )  # fmt: skip
    from ptune.data import longest_prompt_first, restore_order

    order = longest_prompt_first(test_ds["labels"])
    pairs: list = []
    tok_folder = model_args.tokenizer_name or model.source["path"]
    trainer = _trainer(model, tokenizer, tok_folder, training_args, gen_args, sink=pairs, score=False)
    output = trainer.predict(test_ds.select(order), metric_key_prefix="predict")
    pairs[:] = restore_order(pairs, order)
    metrics = dict(output.metrics)
    if all(label for _, label in pairs):
        metrics.update({f"predict_{k}": v for k, v in compute_metrics(*zip(*pairs, strict=True)).items()})
    metrics["predict_samples"] = len(test_ds)
    if trainer.is_world_process_zero():
        write_predictions(Path(training_args.output_dir) / "generated_predictions.txt", pairs)
    trainer.log_metrics("predict", metrics)
    trainer.save_metrics("predict", metrics)
    return 0


def write_predictions(path: Path, pairs: list[tuple[str, str]]) -> None:
    """One JSON object per line, `{"labels": ..., "predict": ...}`, UTF-8, not escaped (THUDM's format)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for pred, label in pairs:
            f.write(json.dumps({"labels": label, "predict": pred}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def score(argv: list[str]) -> int:
    """Re-score a generated_predictions.txt: prints the metrics as JSON."""
    import argparse

    from ptune.metrics import compute_metrics

    parser = argparse.ArgumentParser(prog="ptune score", description="Re-score a predictions file.")
    parser.add_argument(
        "file", help="generated_predictions.txt: one JSON object per line with labels and predict"
    )
    args = parser.parse_args(argv)
    preds, labels = read_predictions(Path(args.file))
    print(json.dumps(compute_metrics(preds, labels), ensure_ascii=False, indent=2))
    return 0


def read_predictions(path: Path) -> tuple[list[str], list[str]]:
    """(predictions, labels) of a generated_predictions.txt; a malformed line is an error naming it."""
    from ptune.data import iter_json_lines

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    preds, labels = [], []
    for lineno, row in iter_json_lines(path):
        if not isinstance(row.get("predict"), str) or not isinstance(row.get("labels"), str):
            raise UserError(f"{path}:{lineno}: expected an object with string 'labels' and 'predict'")
        preds.append(row["predict"])
        labels.append(row["labels"])
    return preds, labels


VERBS = {"train": train, "eval": evaluate, "predict": predict, "score": score}
# Verbs in their own modules, imported only when used: (module, function taking argv and returning the exit code).
MODULE_VERBS = {
    "chat": ("ptune.chat", "main"),
    "export": ("ptune.export", "main"),
    "plot": ("ptune.plot", "main"),
    "bench": ("ptune.bench", "main"),
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
