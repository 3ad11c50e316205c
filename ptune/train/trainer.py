"""`PrefixTrainer`: the real `Seq2SeqTrainer`, narrowly subclassed for prefix-only checkpoints.

What changes, and why:
- `_save` writes only the prefix (+ its config and the tokenizer files): a checkpoint holds no base weights.
- `_save_checkpoint` stages the whole checkpoint (prefix, optimizer, scheduler, RNG, trainer state) in a
  temporary folder and renames it into place, so a crash never leaves a half-written `checkpoint-N`; it
  refuses to save a non-finite prefix and rotates only exact `checkpoint-<step>` folders, never the newest
  nor the best one.
- `_load_from_checkpoint` / `_load_best_model` read the prefix back (resume, `load_best_model_at_end`).
- `prediction_step` computes the teacher-forced loss on prompt + answer and, with generation, generates
  from the left-padded prompts (the stock step compares prompt-length outputs with answer-length labels
  on decoder-only models and fails).
Logged lines carry their step (`StepPrinter`, `StepProgress`: ``step 20/100 {'loss': ...}``).
Callbacks: `SaveWhenStopping` saves the last step inside the loop (before the best prefix is loaded back),
`StopOnSignal` turns SIGTERM/SIGHUP into a clean stop with a checkpoint, `StopOnNonFiniteLoss` ends a NaN run.
Everything else — optimizer, schedules, accumulation, logging, evaluation loop, early stopping, distributed
training — is the stock Trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from transformers import PrinterCallback, ProgressCallback, Seq2SeqTrainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ptune.data.chat_format import decode_response
from ptune.data.labels import IGNORE_INDEX
from ptune.infer.generate import GenerationSettings, generate
from ptune.io.errors import UserError
from ptune.io.files import publish_dir, read_json, write_json
from ptune.score.metrics import compute_metrics
from ptune.train.checkpoint import read_prefix_state, rotate_checkpoints, write_prefix_files
from ptune.train.sharding import (
    enable_on_cpu,
    full,
    full_optimizer_state,
    gathered_prefix,
    load_into,
    load_optimizer_state,
    report_decoder_share,
)

STAGING = ".staging"


def _nonfinite_message(what: str, step: int, run_dir: str) -> str:
    from ptune.train.checkpoint import step_checkpoints

    kept = [folder.name for _, folder in step_checkpoints(run_dir)]
    last = (
        f"the checkpoints kept ({', '.join(kept[-3:])}) were saved before it"
        if kept
        else "no checkpoint was saved"
    )
    return (
        f"{what} by step {step}: lower --learning_rate, prefer bf16 to fp16 (fp16 with "
        f"--prefix_projection overflows), or check the data; {last}"
    )


class StopOnNonFiniteLoss(TrainerCallback):
    """End the run with a one-line error when the logged training loss is NaN or infinite.

    Checked at logging steps (no per-step device sync); the CLI turns off the Trainer's NaN filter so a NaN
    reaches the log instead of being averaged away. `PrefixTrainer` also checks the prefix itself before every
    save, so whatever the logging and saving intervals, no checkpoint ever holds a non-finite prefix.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise UserError(
                _nonfinite_message(f"training loss became {loss}", state.global_step, args.output_dir)
            )


class StopOnSignal(TrainerCallback):
    """SIGTERM (what schedulers send before killing a job) and SIGHUP end the run cleanly: the current step
    finishes, a checkpoint is saved as at the last step, and `ptune train` exits with 128 + the signal number.

    Under several processes each rank may see the signal at a different step; the flag is all-reduced at every
    step (one scalar) so that all ranks stop, and save, at the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def _any_rank_received(self) -> int:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.received or 0
        flag = torch.tensor([self.received or 0], device=_collective_device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.received = int(flag.item()) or None
        return self.received or 0

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_rank_received():
            control.should_training_stop = True
            control.should_save = True


class SaveWhenStopping(TrainerCallback):
    """Whatever ends training (max_steps, early stopping, a signal), its last step is saved inside the training
    loop, before `load_best_model_at_end` swaps the best prefix in: `checkpoint-<last step>` always holds the
    last step's prefix with its optimizer state (THUDM never saved after the last step)."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_training_stop:
            control.should_save = True

    def on_evaluate(self, args, state, control, **kwargs):
        if control.should_training_stop:  # EarlyStoppingCallback decides in on_evaluate, before the save
            control.should_save = True


@contextlib.contextmanager
def write_errors_as_user_errors(what: str):
    """Disk full, read-only or I/O errors while saving → one line; files already in place stay as they were
    (every file and checkpoint is written under a temporary name first)."""
    try:
        yield
    except (OSError, SafetensorError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "write" not in str(e):  # torch.save reports ENOSPC this way
            raise
        reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0]
        raise UserError(f"{what} ({reason}); the checkpoints already saved are kept") from None


def _collective_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def log_line(state, logs: dict) -> str:
    """A logged dict as the stock Trainer prints it (floats to 4 digits, no total_flos), after the step it
    was logged at while training: ``step 20/100 {'loss': '2.31', 'grad_norm': '0.52', ...}``."""
    shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in logs.items() if k != "total_flos"}
    return f"step {state.global_step}/{state.max_steps} {shown}" if state.max_steps else str(shown)


class StepPrinter(PrinterCallback):
    """The stock printer (used without a progress bar), each line with its step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs is not None:
            print(log_line(state, logs), flush=True)


class StepProgress(ProgressCallback):
    """The stock progress bar, each logged line written above it with its step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs is not None:
            self.training_bar.write(log_line(state, logs))


class PrefixTrainer(Seq2SeqTrainer):
    def __init__(self, *args, chat_tokenizer=None, tokenizer_files=(), generation=None, **kwargs):
        super().__init__(*args, **kwargs)
        for stock, ours in ((PrinterCallback, StepPrinter), (ProgressCallback, StepProgress)):
            if any(type(cb) is stock for cb in self.callback_handler.callbacks):
                self.callback_handler.remove_callback(stock)
                self.add_callback(ours)
        self.chat_tokenizer = chat_tokenizer
        self.tokenizer_files = [Path(f) for f in tokenizer_files]
        self.generation = generation or GenerationSettings()
        self._staging_dir: str | None = None
        # Rotation is ptune's (`checkpoint.rotate_checkpoints`): the Trainer's own would count exports named
        # `checkpoint-N-*` as checkpoints and, with save_total_limit 1, delete the newest complete checkpoint.
        self.save_limit, self.args.save_total_limit = self.args.save_total_limit, None

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if enable_on_cpu(
            self.accelerator, self.args.fsdp_plugin_args
        ):  # ptune.train.sharding: CPU tests of FSDP
            self.is_fsdp_enabled = True

    def _prepare_for_training(self, *args, **kwargs):
        prepared = super()._prepare_for_training(*args, **kwargs)
        if self.is_fsdp_enabled:
            report_decoder_share(self.accelerator.unwrap_model(self.model))
        return prepared

    def floating_point_ops(self, inputs: dict) -> int:
        """The stock count is 6·N·tokens over every parameter, or 0 for a model that is no PreTrainedModel
        (it printed `total_flos = 0GF`); `PrefixTunedLM` counts 4·N per real token (frozen base)."""
        return self.accelerator.unwrap_model(self.model).floating_point_ops(inputs)

    # ---------------------------------------------------------------------------------------- saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not self.args.should_save:  # the Trainer calls this on every rank; only the writer rank writes
            return
        folder = Path(output_dir or self.args.output_dir)
        what = f"{folder}: could not write the prefix"
        # Inside a checkpoint save, _save_checkpoint reports the error under the checkpoint's own name.
        with contextlib.nullcontext() if self._staging_dir else write_errors_as_user_errors(what):
            folder.mkdir(parents=True, exist_ok=True)
            model = self.accelerator.unwrap_model(self.model)
            prefix = state_dict if self.is_fsdp_enabled else None  # else: the Trainer's, not a prefix
            write_prefix_files(model, folder, self.tokenizer_files, prefix)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Under FSDP every rank gathers the prefix (not the base, as the Trainer would), rank 0 writes it."""
        if not self.is_fsdp_enabled:
            return super().save_model(output_dir, _internal_call)
        state = gathered_prefix(self.accelerator.unwrap_model(self.model))
        self._save(output_dir, state_dict=state)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Under FSDP: the prefix's Adam state gathered whole into `optimizer.pt` (no FSDP/DCP files)."""
        if not self.is_fsdp_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        state = full_optimizer_state(self.model, self.optimizer)
        if self.args.should_save:
            torch.save(state, os.path.join(output_dir, "optimizer.pt"))
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, "scheduler.pt"))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not (self.is_fsdp_enabled and checkpoint):
            return super()._load_optimizer_and_scheduler(checkpoint)
        state = torch.load(os.path.join(checkpoint, "optimizer.pt"), map_location="cpu", weights_only=True)
        load_optimizer_state(self.model, self.optimizer, state)
        self.lr_scheduler.load_state_dict(
            torch.load(os.path.join(checkpoint, "scheduler.pt"), map_location="cpu", weights_only=True)
        )

    def _get_output_dir(self, trial) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    def _check_prefix_finite(self, run_dir: str) -> None:
        encoder = self.accelerator.unwrap_model(self.model).prefix_encoder
        # full(): a sharded (FSDP) prefix is gathered, on every rank, so that all ranks decide alike
        if encoder is not None and not all(bool(torch.isfinite(full(p)).all()) for p in encoder.parameters()):
            raise UserError(
                _nonfinite_message("the prefix became non-finite", self.state.global_step, run_dir)
            )

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-N` under a staging folder, then rename it into place and rotate.

        Refused when the prefix is not finite (a NaN checkpoint would be kept as if good). A failed write
        (disk full, I/O error) removes the staging folder and ends the run with one line; the checkpoints
        already in place are untouched.
        """
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, STAGING)
        self._check_prefix_finite(run_dir)
        if self.args.should_save:  # a save killed earlier may have left files that this save would not write
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            with write_errors_as_user_errors(f"{run_dir}: could not write {name}"):
                super()._save_checkpoint(model, trial)
                self._staging_dir = None
                self.accelerator.wait_for_everyone()  # every rank's rng_state_N.pth is in before the rename
                if self.args.should_save:
                    self._publish(run_dir, staging, name)
        except BaseException:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            rotate_checkpoints(run_dir, self.save_limit, keep=(self.state.best_model_checkpoint,))

    def _publish(self, run_dir: str, staging: str, name: str) -> None:
        """Point the best checkpoint at its final place (the Trainer recorded it under the staging folder),
        re-write the staged state with that path, then rename the staged folder into place."""
        best = self.state.best_model_checkpoint
        if best and os.path.dirname(os.path.abspath(best)) == os.path.abspath(staging):
            self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
        write_state(self.state, Path(staging, name, "trainer_state.json"))  # strict JSON (see write_state)
        publish_dir(Path(staging, name), Path(run_dir, name), aside=Path(staging, "replaced"))
        shutil.rmtree(staging, ignore_errors=True)

    # --------------------------------------------------------------------------------------- results
    def save_metrics(self, split: str, metrics: dict, combined: bool = True) -> None:
        """`SPLIT_results.json`, and `all_results.json` updated with it: as the stock method, but written
        atomically and as strict JSON (the stock one writes a NaN metric as a bare `NaN`, which is not JSON)."""
        if not self.is_world_process_zero():
            return
        out = Path(self.args.output_dir)
        write_json(out / f"{split}_results.json", metrics, indent=4, sort_keys=True)
        if combined:
            merged = {**read_json(out / "all_results.json", missing_ok=True), **metrics}
            write_json(out / "all_results.json", merged, indent=4, sort_keys=True)

    def save_state(self) -> None:
        if self.is_world_process_zero():
            write_state(self.state, Path(self.args.output_dir) / "trainer_state.json")

    # --------------------------------------------------------------------------------------- loading
    def _load_prefix(self, folder: str) -> None:
        """A checkpoint of this run back into the prefix, with the position convention it was trained with (a
        run started before the convention was recorded resumes from_zero, as it trained)."""
        from dataclasses import replace

        from ptune.model.prefix import recorded_positions

        encoder = self.accelerator.unwrap_model(self.model).prefix_encoder
        state = read_prefix_state(folder)
        encoder.config = replace(encoder.config, positions=recorded_positions(folder))
        params = dict(encoder.named_parameters())
        if state.keys() != params.keys():
            encoder.load_state_dict(state)  # raises, naming the missing and unexpected keys
        for name, value in state.items():
            load_into(params[name], value.to(torch.float32))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self._load_prefix(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        if self.state.best_model_checkpoint:
            self._load_prefix(self.state.best_model_checkpoint)

    # ------------------------------------------------------------------------------------ evaluation
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        """Loss on prompt + answer; with generation, also (generated answer tokens, reference answer ids)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                labels=inputs["labels"],
                return_logits=False,
            ).loss.detach()
        if prediction_loss_only or not self.args.predict_with_generate or "prompt_ids" not in inputs:
            return loss, None, None
        tok = self.chat_tokenizer
        tokens = generate(
            self.accelerator.unwrap_model(model),
            inputs["prompt_ids"],
            inputs["prompt_mask"],
            stop_ids=tok.stop_token_ids,
            pad_id=tok.pad_token_id,
            settings=self.generation,
        )
        if tokens.shape[1] == 0:
            tokens = tokens.new_full((tokens.shape[0], 1), tok.pad_token_id)
        return loss, tokens, inputs["answer_ids"]


def write_state(state, path: Path) -> None:
    """`TrainerState.save_to_json`, atomically and as strict JSON: a NaN or infinite value in `log_history`
    (a NaN loss or grad_norm) is written as null, which `TrainerState.load_from_json` and `ptune plot` read."""
    write_json(path, dataclasses.asdict(state), indent=2, sort_keys=True)


def decode_rows(tokenizer, rows: np.ndarray, cut_at_stop: bool) -> list[str]:
    """Token rows (IGNORE_INDEX = padding from the evaluation loop) → stripped text; generated rows are cut at the
    first stop id (`chat_format.decode_response`), reference rows are decoded whole."""
    texts = []
    for row in rows:
        ids = [int(t) for t in row if t != IGNORE_INDEX]
        if cut_at_stop:
            texts.append(decode_response(tokenizer, ids))
        else:
            texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return texts


def make_compute_metrics(tokenizer, sink: list | None = None, score: bool = True):
    """`compute_metrics` for the Trainer: decode, then ROUGE/BLEU as THUDM computes them.

    `sink`, when given, receives the decoded (prediction, label) pairs so the caller can write them to disk;
    with `score=False` only that happens (predict scores afterwards, and only when every row has a label).
    """

    def compute(eval_pred) -> dict[str, float]:
        preds = decode_rows(tokenizer, eval_pred.predictions, cut_at_stop=True)
        labels = decode_rows(tokenizer, eval_pred.label_ids, cut_at_stop=False)
        if sink is not None:
            sink.clear()
            sink.extend(zip(preds, labels, strict=True))
        return compute_metrics(preds, labels) if score else {}

    return compute
