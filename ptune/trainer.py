"""`PrefixTrainer`: the real `Seq2SeqTrainer`, narrowly subclassed for prefix-only checkpoints.

What changes, and why:
- `_save` writes only the prefix (+ its config and the tokenizer files): a checkpoint holds no base weights.
- `_save_checkpoint` stages the whole checkpoint (prefix, optimizer, scheduler, RNG, trainer state) in a
  temporary folder and renames it into place, so a crash never leaves a half-written `checkpoint-N`.
- `_load_from_checkpoint` / `_load_best_model` read the prefix back (resume, `load_best_model_at_end`).
- `prediction_step` computes the teacher-forced loss on prompt + answer and, with generation, generates
  from the left-padded prompts (the stock step compares prompt-length outputs with answer-length labels
  on decoder-only models and fails).
Everything else — optimizer, schedules, accumulation, logging, evaluation loop, rotation, early stopping,
distributed training — is the stock Trainer.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import Seq2SeqTrainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ptune.chat_format import decode_response
from ptune.checkpoint import _fsync_dir, read_prefix_state, write_prefix_files
from ptune.errors import UserError
from ptune.generate import GenerationSettings, generate
from ptune.metrics import compute_metrics

STAGING = ".staging"


class StopOnNonFiniteLoss(TrainerCallback):
    """End the run with a one-line error when the logged training loss is NaN or infinite.

    Checked at logging steps (no per-step device sync); the CLI turns off the Trainer's NaN filter so a NaN
    reaches the log instead of being averaged away. Checkpoints already written are kept.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise UserError(
                f"training loss became {loss} by step {state.global_step}: lower --learning_rate, prefer bf16 "
                "to fp16 (fp16 with --prefix_projection overflows), or check the data; earlier checkpoints are kept"
            )


class PrefixTrainer(Seq2SeqTrainer):
    def __init__(self, *args, chat_tokenizer=None, tokenizer_files=(), generation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.chat_tokenizer = chat_tokenizer
        self.tokenizer_files = [Path(f) for f in tokenizer_files]
        self.generation = generation or GenerationSettings()
        self._staging_dir: str | None = None

    # ---------------------------------------------------------------------------------------- saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not self.args.should_save:  # the Trainer calls this on every rank; only the writer rank writes
            return
        folder = Path(output_dir or self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        write_prefix_files(self.accelerator.unwrap_model(self.model), folder, self.tokenizer_files)

    def _get_output_dir(self, trial) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-N` under a staging folder, then rename it into place and rotate."""
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, STAGING)
        limit = self.args.save_total_limit
        if self.args.should_save:  # a save killed earlier may have left files that this save would not write
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging_dir, self.args.save_total_limit = staging, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir, self.args.save_total_limit = None, limit
        self.accelerator.wait_for_everyone()
        final = os.path.join(run_dir, name)
        if self.args.should_save:
            _fsync_dir(Path(staging, name))
            old = os.path.join(staging, "replaced")
            if os.path.exists(final):  # re-saved step: move the old copy aside so a crash keeps one of them
                os.replace(final, old)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
        if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(staging):
            self.state.best_model_checkpoint = os.path.join(
                run_dir, os.path.basename(self.state.best_model_checkpoint)
            )
        self.accelerator.wait_for_everyone()
        if self.args.should_save and limit:
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )

    def save_final_checkpoint(self) -> None:
        """THUDM never saved after the last step; ptune always leaves `checkpoint-<last step>`."""
        final = Path(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if not final.is_dir():
            self._save_checkpoint(self.model, trial=None)

    # --------------------------------------------------------------------------------------- loading
    def _load_prefix(self, folder: str) -> None:
        encoder = self.accelerator.unwrap_model(self.model).prefix_encoder
        state = read_prefix_state(folder)
        encoder.load_state_dict(
            {k: v.to(encoder.embedding.weight.device, torch.float32) for k, v in state.items()}
        )

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


def decode_rows(tokenizer, rows: np.ndarray, cut_at_stop: bool) -> list[str]:
    """Token rows (-100 = padding from the evaluation loop) → stripped text; generated rows are cut at the
    first stop id (`chat_format.decode_response`), reference rows are decoded whole."""
    texts = []
    for row in rows:
        ids = [int(t) for t in row if t != -100]
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
