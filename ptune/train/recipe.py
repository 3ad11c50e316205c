"""`PTuningRecipe`: one P-Tuning v2 run, read top to bottom — check, set up, then train / evaluate / predict.

    ptune train CFG.json  →  PTuningRecipe.from_argv("train", argv).run()
        check_output      output_dir is no model folder, is writable, has space      (ptune.train.rundir)
        lock              one process per output_dir                                   (ptune.train.rundir)
        resume_target     the checkpoint to continue from, verified file by file        (ptune.train.checkpoint)
        load              tokenizer + frozen base + float32 prefix                      (ptune.model.load)
        dataset           rows read and checked, then tokenized and cached              (ptune.data.rows)
        trainer_arguments every TrainingArguments value ptune decides, in one place
        trainer           the stock Seq2SeqTrainer, subclassed for prefix-only checkpoints (ptune.train.trainer)
        train             trainer.train, a clean stop on SIGTERM/SIGHUP, the final files  (ptune.train.finish)

A config value's path to disk: `--pre_seq_len 128` → `ModelArguments.pre_seq_len` (ptune.config.args) →
`load_model(pre_seq_len=128)` builds a `PrefixEncoder` [128, L·2·G·hn] → the Trainer optimizes it →
`PrefixTrainer.save_model` → `checkpoint.write_prefix_files` writes `model.safetensors` and `prefix_config.json`
(`"pre_seq_len": 128`), which eval / predict / chat / export read back.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from ptune.io.errors import UserError

logger = logging.getLogger("ptune")


class PTuningRecipe:
    """The four parsed argument groups of one verb (`train`, `eval`, `predict`) and what they set up."""

    def __init__(self, verb: str, model_args, data_args, training_args, gen_args):
        self.verb = verb
        self.model_args, self.data_args = model_args, data_args
        self.training_args, self.gen_args = training_args, gen_args
        self.tokenizer = self.model = None

    @classmethod
    def from_argv(cls, verb: str, argv: list[str]) -> PTuningRecipe:
        from ptune.config.parse import parse_args
        from ptune.io.logs import setup_logging

        recipe = cls(verb, *parse_args(verb, argv))
        setup_logging(recipe.training_args)
        return recipe

    def run(self) -> int:
        """Check the output folder, hold its lock, and run the verb."""
        from ptune.train.rundir import RunLock

        self.check_output()
        with RunLock(self.training_args.output_dir, self.verb, enabled=self.training_args.should_save):
            return {"train": self.train, "eval": self.evaluate, "predict": self.predict}[self.verb]()

    # ------------------------------------------------------------------------------------------ setup
    def check_output(self) -> None:
        """output_dir may not be the model or tokenizer folder, a file, read-only or full."""
        from ptune.train.rundir import check_output_dir, model_folders

        check_output_dir(self.training_args.output_dir, model_folders(self.model_args))

    def resume_target(self) -> str | None:
        """`resume_from_checkpoint`: a path, or true for the newest *complete* checkpoint in output_dir;
        verified file by file before anything is loaded, and against --pre_seq_len / --prefix_projection."""
        from ptune.model.prefix import check_prefix_flags
        from ptune.train.checkpoint import newest_complete_checkpoint, verify_resumable
        from ptune.train.ranks import common_checkpoint

        args = self.training_args
        value = args.resume_from_checkpoint
        if value in (None, False, "false", "False", ""):
            return None
        if value in (True, "true", "True"):
            last = common_checkpoint(args.output_dir, newest_complete_checkpoint(args.output_dir))
            if last is None:
                raise UserError(
                    f"--resume_from_checkpoint true: no complete checkpoint-* folder in {args.output_dir}"
                )
            logger.info("resuming from %s, the newest complete checkpoint", last)
            value = str(last)
        elif not Path(value).is_dir():
            raise UserError(f"--resume_from_checkpoint {value}: folder not found")
        verify_resumable(value)
        check_prefix_flags(value, self.model_args.pre_seq_len, self.model_args.prefix_projection)
        return str(value)

    def load(self) -> None:
        """Tokenizer and model, reading prefix settings from the checkpoint where there is one."""
        from ptune.families.registry import load_tokenizer
        from ptune.model.load import load_model

        m = self.model_args
        if self.verb == "train" and not m.pre_seq_len and not m.ptuning_checkpoint:
            raise UserError("ptune train needs --pre_seq_len N (the prefix length; THUDM's recipes use 128)")
        if self.verb != "train" and m.pre_seq_len and not m.ptuning_checkpoint:
            if not m.random_prefix:  # answers of a random prefix, exit 0: a forgotten checkpoint looks fine
                raise UserError(
                    f"--pre_seq_len {m.pre_seq_len} without --ptuning_checkpoint would {self.verb} with an "
                    "untrained, random prefix: give the trained prefix as --ptuning_checkpoint (or ask for a "
                    "random one with --random_prefix true)"
                )
            logger.warning(
                "--pre_seq_len %d --random_prefix true: using a freshly initialised, untrained prefix",
                m.pre_seq_len,
            )
        self.tokenizer = load_tokenizer(m.tokenizer_name or m.model_name_or_path, m.chat_format)
        self.model = load_model(
            m.model_name_or_path,
            dtype=m.dtype,
            pre_seq_len=m.pre_seq_len,
            prefix_projection=m.prefix_projection,
            ptuning_checkpoint=m.ptuning_checkpoint,
            device=self.training_args.device,
            attn_implementation=m.attn_implementation,
            prefix_dropout=m.prefix_dropout,
            trust_remote_code=m.trust_remote_code,
            quantization_bit=m.quantization_bit,
            family=self.tokenizer.family,
        )

    def dataset(self, path: str | None, max_target: int, max_samples: int | None, split: str = "train"):
        """Rows of `path`, checked and encoded for this model as `split` (train: every assistant turn of a
        conversation learned; eval / predict: its last answer), None without a path; rank 0 goes first so
        the other ranks read its cache."""
        from ptune.data.chat_data import build_split

        if path is None:
            return None
        path = self.data_args.data_file(path)
        with self.training_args.main_process_first(desc=f"tokenizing {path}"):
            return build_split(
                path,
                self.tokenizer,
                self.data_args,
                max_target,
                max_samples,
                split,
                self.model_args.cache_dir,
            )

    def trainer_arguments(self, training: bool):
        """Every TrainingArguments value ptune decides rather than the user, each with its reason."""
        from transformers.trainer_utils import IntervalStrategy

        args = self.training_args
        args.remove_unused_columns = False  # our datasets hold exactly what the collator needs
        if not training:  # eval/predict with a training config: its evaluation schedule does not apply
            args.eval_strategy = IntervalStrategy.NO
            args.load_best_model_at_end = False
        args.apply_logging_dir()  # THUDM-era --logging_dir: where TensorBoard logs go
        args.logging_nan_inf_filter = False  # let a NaN reach the log, where StopOnNonFiniteLoss sees it
        if args.ddp_find_unused_parameters is None:
            args.ddp_find_unused_parameters = False  # the prefix, the only trained part, is used every step
        if args.device.type == "cpu":
            args.dataloader_pin_memory = False  # pinning is for host-to-GPU copies; on the CPU it warns
        return args

    def trainer(self, train_ds=None, eval_ds=None, score: bool = True):
        """The PrefixTrainer over this run's model, data and generation settings."""
        from transformers import EarlyStoppingCallback

        from ptune.data.rows import Collator
        from ptune.infer.generate import GenerationSettings
        from ptune.train.callbacks import SaveWhenStopping, StopOnNonFiniteLoss
        from ptune.train.trainer import PrefixTrainer, make_compute_metrics

        args = self.trainer_arguments(training=train_ds is not None)
        callbacks = [StopOnNonFiniteLoss(), SaveWhenStopping()]
        if args.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
        tok = self.tokenizer
        tok_folder = Path(self.model_args.tokenizer_name or self.model.source.path)
        return PrefixTrainer(
            model=self.model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            data_collator=Collator(tok.pad_token_id, with_prompts=args.predict_with_generate),
            compute_metrics=make_compute_metrics(tok, None, score) if args.predict_with_generate else None,
            callbacks=callbacks,
            chat_tokenizer=tok,
            tokenizer_files=[tok_folder / f for f in tok.files],
            generation=GenerationSettings.from_arguments(self.gen_args),
        )

    # ------------------------------------------------------------------------------------------ verbs
    def train(self) -> int:
        """P-tune a prefix; always ends with a final checkpoint and the prefix saved in output_dir itself.
        Exit code 0, or 128 + N when signal N (SIGTERM, SIGHUP) stopped the run after saving a checkpoint."""
        from transformers import set_seed

        from ptune.plan.gate import check_training_plan
        from ptune.train.finish import run_training
        from ptune.train.rundir import check_overwrite, set_aside_results

        args, d = self.training_args, self.data_args
        resume = self.resume_target()
        check_overwrite(args.output_dir, args.overwrite_output_dir, resume is not None)
        set_seed(args.seed)
        plan_line = check_training_plan(self.model_args, self.data_args, args)
        self.load()
        if resume is not None:
            from ptune.model.prefix import check_resumable_prefix

            check_resumable_prefix(resume, self.model)
        train_ds = self.dataset(d.train_file, d.max_target_length, d.max_train_samples)
        eval_ds = None
        if args.eval_strategy != "no":
            eval_ds = self.dataset(d.validation_file, d.val_max_target_length, d.max_eval_samples, "eval")
        trainer = self.trainer(train_ds, eval_ds)
        if plan_line:
            logger.info(plan_line)
        if args.overwrite_output_dir and resume is None and args.should_save:
            set_aside_results(
                args.output_dir
            )  # only now: a run refused until here leaves every file in place
        code = run_training(trainer, resume, len(train_ds))
        self.say_where(
            ("prefix", "model.safetensors"),
            ("curves", "training_curves.png"),
            ("metrics", "train_results.json"),
        )
        return code

    def evaluate(self) -> int:
        """Teacher-forced eval_loss on validation_file; with --predict_with_generate also ROUGE/BLEU.
        With --compare_base the same again with the prefix off, under base_eval_*."""
        from ptune.data.rows import longest_prompt_first

        refuse_overwrite(self.training_args, "eval_results.json")
        self.load()
        d = self.data_args
        eval_ds = self.dataset(d.validation_file, d.val_max_target_length, d.max_eval_samples, "eval")
        if self.training_args.predict_with_generate:  # metrics do not depend on the order; padding does
            eval_ds = eval_ds.select(longest_prompt_first(eval_ds["labels"]))
        trainer = self.trainer(eval_ds=eval_ds)
        metrics = trainer.evaluate(metric_key_prefix="eval")
        if self.model_args.compare_base:
            with self.base_alone():
                metrics.update(trainer.evaluate(metric_key_prefix="base_eval"))
        metrics["eval_samples"] = len(eval_ds)
        self.report(trainer, "eval", metrics)
        self.say_where(("metrics", "eval_results.json"))
        return 0

    def predict(self) -> int:
        """Generate answers for test_file: generated_predictions.txt + predict_results.json. With
        --compare_base the same prompts again with the prefix off: base_predict_* metrics, and a
        base_predict answer on every row of generated_predictions.txt."""
        from ptune.score.predictions import write_predictions

        refuse_overwrite(self.training_args, "generated_predictions.txt")
        self.load()
        d = self.data_args  # config.parse_args requires test_file for predict
        test_ds = self.dataset(d.test_file, d.val_max_target_length, d.max_predict_samples, "predict")
        trainer = self.trainer(score=False)
        pairs, metrics = self.predict_pass(trainer, test_ds, "predict")
        base_answers = None
        if self.model_args.compare_base:
            with self.base_alone():
                base_pairs, base_metrics = self.predict_pass(trainer, test_ds, "base_predict")
            metrics.update(base_metrics)
            base_answers = [pred for pred, _ in base_pairs]
        metrics["predict_samples"] = len(test_ds)
        if trainer.is_world_process_zero():
            path = Path(self.training_args.output_dir) / "generated_predictions.txt"
            write_predictions(path, pairs, base_answers)
        self.report(trainer, "predict", metrics)
        self.say_where(("predictions", "generated_predictions.txt"), ("metrics", "predict_results.json"))
        return 0

    def say_where(self, *outputs: tuple[str, str]) -> None:
        """The run's closing line: where each of its outputs (label, file name in output_dir) is; those a run
        did not write (stopped early, nothing to train) are left out."""
        if not self.training_args.should_save:  # one line, from the process that writes the files
            return
        out = Path(self.training_args.output_dir)
        found = [f"{label}: {out / name}" for label, name in outputs if (out / name).is_file()]
        if found:
            print(f"ptune {self.verb}: " + "  ".join(found), flush=True)

    def predict_pass(self, trainer, test_ds, prefix: str) -> tuple[list[tuple[str, str]], dict]:
        """Generate for every row (longest prompts first, for less padding), in file order: the (answer,
        reference) pairs and the metrics, ROUGE/BLEU included when every row has a reference."""
        from ptune.data.rows import longest_prompt_first, restore_order
        from ptune.score.metrics import compute_metrics
        from ptune.train.trainer import make_compute_metrics

        order = longest_prompt_first(test_ds["labels"])
        pairs: list = []
        trainer.compute_metrics = make_compute_metrics(self.tokenizer, pairs, score=False)
        output = trainer.predict(test_ds.select(order), metric_key_prefix=prefix)
        pairs[:] = restore_order(pairs, order)
        metrics = dict(output.metrics)
        if all(label for _, label in pairs):
            metrics.update(
                {f"{prefix}_{k}": v for k, v in compute_metrics(*zip(*pairs, strict=True)).items()}
            )
        return pairs, metrics

    @contextlib.contextmanager
    def base_alone(self):
        """--compare_base: the same model with its prefix off, from the same seed as the prefix's pass (the
        Trainer seeds on creation), so that sampled answers are what a run on the base alone would draw."""
        from transformers import set_seed

        with self.model.without_prefix():
            set_seed(self.training_args.seed)
            yield

    def report(self, trainer, split: str, metrics: dict) -> None:
        """Log and save `SPLIT_results.json`; with --compare_base also print the prefix/base/delta table."""
        from ptune.score.compare import comparison_rows, format_comparison

        trainer.log_metrics(split, metrics)
        trainer.save_metrics(split, metrics)
        if self.model_args.compare_base and trainer.is_world_process_zero():
            print(format_comparison(comparison_rows(metrics, split), split), flush=True)


def refuse_overwrite(training_args, name: str) -> None:
    from ptune.io.paths import refuse_existing

    refuse_existing(Path(training_args.output_dir) / name, training_args.overwrite_output_dir)
