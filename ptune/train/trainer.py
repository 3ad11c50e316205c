"""`PrefixTrainer`: the real `Seq2SeqTrainer`, narrowly subclassed for prefix-only checkpoints.

What changes, and why — through public hooks where transformers has one:
- `save_model` (public) writes only the prefix (+ its config and the tokenizer files), under FSDP gathered
  from every rank: a checkpoint or a finished run holds no base weights.
- `prediction_step` (public) computes the teacher-forced loss on prompt + answer and, with generation,
  generates from the left-padded prompts (the stock step compares prompt-length outputs with answer-length
  labels on decoder-only models and fails).
- `save_metrics` / `save_state` (public) write atomically and as strict JSON; `floating_point_ops` (public)
  counts the frozen base's FLOPs; callbacks (`ptune.train.callbacks`) stop on NaN or a signal, save the last
  step, print each logged line with its step and, under FSDP, report each process's share of the decoder.
Where no public hook exists, a private method is overridden and pinned, by name and signature, on the
installed transformers (tests/unit/test_trainer_private_api.py):
- `_save_checkpoint` + `_get_output_dir`: the Trainer writes a checkpoint straight into `checkpoint-N` and only
  then calls `on_save`; ptune has it written into a staging folder instead (`_get_output_dir`) and renames it
  into place, so a crash never leaves a half-written `checkpoint-N`. It refuses to save a non-finite prefix
  and rotates only exact `checkpoint-<step>` folders, never the newest nor the best one.
- `_load_from_checkpoint` / `_load_best_model`: the stock ones load a whole model's weights; ptune reads the
  prefix back (resume, `load_best_model_at_end`).
- `_save_optimizer_and_scheduler` / `_load_optimizer_and_scheduler`, under FSDP only: the prefix's Adam state
  gathered whole into `optimizer.pt` (the stock ones write FSDP's own sharded files).
Everything else — optimizer, schedules, accumulation, logging, evaluation loop, early stopping, distributed
training — is the stock Trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from transformers import PrinterCallback, ProgressCallback, Seq2SeqTrainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ptune.data.chat_format import decode_response
from ptune.data.labels import IGNORE_INDEX
from ptune.infer.generate import GenerationSettings, generate
from ptune.io.errors import UserError
from ptune.io.files import publish_dir, read_json, write_json
from ptune.score.metrics import compute_metrics
from ptune.train.callbacks import ReportDecoderShare, StepPrinter, StepProgress, nonfinite_message
from ptune.train.checkpoint import read_prefix_state, rotate_checkpoints, write_prefix_files
from ptune.train.sharding import (
    enable_on_cpu,
    full,
    full_optimizer_state,
    gathered_prefix,
    load_into,
    load_optimizer_state,
)

STAGING = ".staging"


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
        if self.is_fsdp_enabled:
            self.add_callback(ReportDecoderShare())

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if enable_on_cpu(
            self.accelerator, self.args.fsdp_plugin_args
        ):  # ptune.train.sharding: CPU tests of FSDP
            self.is_fsdp_enabled = True

    def floating_point_ops(self, inputs: dict) -> int:
        """The stock count is 6·N·tokens over every parameter, or 0 for a model that is no PreTrainedModel
        (it printed `total_flos = 0GF`); `PrefixTunedLM` counts 4·N per real token (frozen base)."""
        return self.accelerator.unwrap_model(self.model).floating_point_ops(inputs)

    # ---------------------------------------------------------------------------------------- saving
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The prefix alone into `output_dir` (default: the run's): `model.safetensors`, `prefix_config.json`
        and the tokenizer files, never the base. Every rank calls it; under FSDP every rank gathers the
        prefix (not the base, as the Trainer would), and only the writer rank writes."""
        model = self.accelerator.unwrap_model(self.model)
        prefix = gathered_prefix(model) if self.is_fsdp_enabled else None
        if self.args.should_save:  # two ranks writing the same files into the staging folder would race
            folder = Path(output_dir or self.args.output_dir)
            what = f"{folder}: could not write the prefix"
            # Inside a checkpoint save, _save_checkpoint reports the error under the checkpoint's own name.
            with contextlib.nullcontext() if self._staging_dir else write_errors_as_user_errors(what):
                folder.mkdir(parents=True, exist_ok=True)
                write_prefix_files(model, folder, self.tokenizer_files, prefix)
        if self.args.push_to_hub and not _internal_call:  # as the stock save_model
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

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
                nonfinite_message("the prefix became non-finite", self.state.global_step, run_dir)
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
