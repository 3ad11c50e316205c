"""The end of a training run: `run_training` (trainer.train, a clean stop on SIGTERM/SIGHUP, then the final
prefix, metrics and curves), and a run's final files from its last checkpoint: what `--resume_from_checkpoint`
does when that checkpoint is already at `max_steps`.

A run killed (kill -9, OOM, power loss) right after `checkpoint-<max_steps>` is renamed into place has trained
every step but holds none of its final files (`model.safetensors`, `prefix_config.json`, `trainer_state.json`,
`train_results.json`, `all_results.json`, `training_curves.png`) and one checkpoint more than
`save_total_limit` (rotation runs after the save). Training on would run one step past max_steps; doing nothing
would leave the run without its results. `finish_run` writes them from the checkpoint instead, exactly as the
end of `trainer.train` would (the best prefix with `load_best_model_at_end`), and rotates. A run whose final
files are all there is left as it is, but its curves are redrawn if missing (a kill while the PNG was written).

Leftovers of atomic writes killed half-way (`.NAME.tmp`, see `ptune.io.files.replacing`) are removed by
`remove_stale_temporaries` when a run starts in the folder.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from ptune.io.errors import UserError
from ptune.io.files import read_json
from ptune.train.checkpoint import PREFIX_CONFIG_NAME, WEIGHTS_NAME, rotate_checkpoints

logger = logging.getLogger("ptune")

STATE_NAME = "trainer_state.json"
FINAL_FILES = (WEIGHTS_NAME, PREFIX_CONFIG_NAME, STATE_NAME, "train_results.json", "all_results.json")


def run_training(trainer, resume: str | None, train_samples: int) -> int:
    """trainer.train with SIGTERM/SIGHUP turned into a clean stop; then the final prefix, metrics and plot."""
    from ptune.train.callbacks import StopOnSignal
    from ptune.train.checkpoint import checkpoint_global_step

    if trainer.args.should_save:
        remove_stale_temporaries(trainer.args.output_dir, output_names(trainer))
    if resume is not None and checkpoint_global_step(resume) >= trainer.args.max_steps > 0:
        # The Trainer would run one more step past max_steps (and change the prefix): nothing to train, but
        # the run may have been killed before writing its final files.
        finish_run(trainer, resume, train_samples)
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
    plot(trainer.args)
    if stop.received:
        step = trainer.state.global_step
        print(
            f"ptune train: stopped by {signal.Signals(stop.received).name} after step {step}; checkpoint-{step} "
            "is saved: continue with --resume_from_checkpoint true",
            file=sys.stderr,
        )
        return 128 + stop.received
    return 0


def output_names(trainer) -> list[str]:
    """The names of the files ptune writes directly into output_dir."""
    from ptune.train.plot import PLOT_NAME

    results = ["eval_results.json", "predict_results.json", "generated_predictions.txt"]
    return [*FINAL_FILES, PLOT_NAME, *results, *(f.name for f in trainer.tokenizer_files)]


def plot(training_args) -> None:
    """training_curves.png in output_dir, from the writer rank; a warning, not a failure, when it cannot."""
    if not training_args.should_save:
        return
    from ptune.train.plot import plot_run

    try:
        plot_run(training_args.output_dir)
    except UserError as e:  # a finished run must not fail over its picture
        logger.warning("no training_curves.png: %s", e)


def is_finished(output_dir: str | Path, step: int) -> bool:
    """Whether `output_dir` holds every final file of a run that ended at `step`."""
    out = Path(output_dir)
    if not all((out / name).is_file() for name in FINAL_FILES):
        return False
    try:
        return read_json(out / STATE_NAME).get("global_step") == step
    except UserError:  # a damaged final state: written again from the checkpoint
        return False


def run_loss(history: list, global_step: int) -> float | None:
    """The mean training loss of steps 1..global_step from the logged `loss` entries, each the mean over the
    steps since the previous one (what the Trainer's `train_loss` is for a run trained in one go); None when
    the last logged step is not `global_step` (the losses of the steps after it are not in the log)."""
    total, last = 0.0, 0
    for entry in history:
        if isinstance(entry, dict) and isinstance(entry.get("loss"), (int, float)) and "step" in entry:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last and last == global_step else None


def finish_run(trainer, checkpoint: str, train_samples: int) -> None:
    """Write the final files of a run from `checkpoint` (at max_steps), unless they are there; rotate."""
    from transformers import TrainerState

    from ptune.train.plot import PLOT_NAME

    args = trainer.args
    state = TrainerState.load_from_json(str(Path(checkpoint) / STATE_NAME))
    if is_finished(args.output_dir, state.global_step):
        logger.info(
            "%s: the run already ended at step %d; nothing to train", args.output_dir, state.global_step
        )
        if not (Path(args.output_dir) / PLOT_NAME).is_file():
            plot(args)
    else:
        logger.warning(
            "%s is at step %d (max_steps %d): nothing left to train; writing the run's final files from it",
            checkpoint,
            state.global_step,
            args.max_steps,
        )
        write_final_files(trainer, state, checkpoint, train_samples)
        plot(args)
    if args.should_save:
        rotate_checkpoints(args.output_dir, trainer.save_limit, keep=(state.best_model_checkpoint,))


def write_final_files(trainer, state, checkpoint: str, train_samples: int) -> None:
    """The end of `trainer.train` without its loop: the final (or best) prefix, the summary log entry, the
    train metrics and the state. The killed process's runtime figures died with it: train_results.json
    holds epoch, total_flos, train_samples and, when the log covers every step, the run's train_loss."""
    trainer.state = state
    best = state.best_model_checkpoint
    use_best = trainer.args.load_best_model_at_end and best and Path(best).is_dir()
    trainer._load_prefix(best if use_best else checkpoint)
    metrics: dict = {"total_flos": state.total_flos}
    loss = run_loss(state.log_history, state.global_step)
    if loss is not None:
        metrics["train_loss"] = loss
    trainer.log(metrics)
    trainer.save_model()
    metrics = {**metrics, "train_samples": train_samples}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()


def remove_stale_temporaries(output_dir: str | Path, names: list[str]) -> list[Path]:
    """Delete `.NAME.tmp` for each of `names` in `output_dir`: what an atomic write killed half-way leaves
    (the complete file is only ever renamed into place). Returns what was deleted."""
    removed = []
    for name in names:
        tmp = Path(output_dir) / f".{name}.tmp"
        if tmp.is_file():
            logger.info("removing %s, left by an interrupted write", tmp)
            tmp.unlink()
            removed.append(tmp)
    return removed
