"""The TrainerCallbacks of a ptune run: what it adds to the stock Trainer's loop through its public hooks.

- `StopOnNonFiniteLoss` ends a run whose logged loss is NaN or infinite, in one line.
- `StopOnSignal` turns SIGTERM/SIGHUP into a clean stop with a checkpoint (`ptune train` exits 128 + N).
- `SaveWhenStopping` saves the last step inside the loop, before the best prefix is loaded back.
- `ReportDecoderShare` (under FSDP) prints what each process holds of the decoder layers once training starts.
- `StepPrinter` / `StepProgress` replace the stock printer / progress bar: each logged line carries its step
  (``step 20/100 {'loss': ...}``).
"""

from __future__ import annotations

import math
import signal

import torch
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from ptune.io.errors import UserError
from ptune.train.ranks import collective_device


def nonfinite_message(what: str, step: int, run_dir: str) -> str:
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
                nonfinite_message(f"training loss became {loss}", state.global_step, args.output_dir)
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
        flag = torch.tensor([self.received or 0], device=collective_device())
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


class ReportDecoderShare(TrainerCallback):
    """Under FSDP: once the model is sharded (training begins), one line per process on stderr with the share
    of the decoder layers' weights it holds (`ptune.train.sharding.report_decoder_share`)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from accelerate.utils import extract_model_from_parallel

        from ptune.train.sharding import report_decoder_share

        report_decoder_share(extract_model_from_parallel(model))


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
