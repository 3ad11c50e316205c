"""The argument dataclasses of `ptune train|eval|predict` (also read by `data` and `plan`): the schema.

The names and defaults are those of THUDM's `ptuning/arguments.py` (ModelArguments, DataTrainingArguments) and
of transformers' `Seq2SeqTrainingArguments`, so THUDM's shell scripts and JSON configs parse unchanged. On top:
ptune-only fields (chat_format, dtype, prefix_dropout, ...). A run reads four dataclasses, `ARGUMENT_CLASSES`:
these two, `TrainingArguments` (ptune.config.training_args: transformers' Seq2SeqTrainingArguments with the
transformers 4 names THUDM's scripts use) and `GenerationArguments` (ptune.config.generation, shared with
chat). Fields other verbs declare too (chat_format, dtype, quantization_bit, ptuning_checkpoint) come from
ptune.config.fields.

Each dataclass checks its own values in `__post_init__` (also when built directly, not parsed), raising a
one-line `BadArgument` naming the flag. The THUDM / transformers 4 names that are renamed or dead are one table
in ptune.config.compat; ptune.config.parse turns a config plus flags into these dataclasses, and
`argument_reference` lists them for the README.
"""

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Literal

from transformers import Seq2SeqTrainingArguments

from ptune.config.argtypes import BadArgument, check_at_least, check_choices
from ptune.config.compat import refuse_dead
from ptune.config.fields import (
    ChatFormat,
    Dtype,
    chat_format_field,
    check_quantization_bit,
    dtype_field,
    ptuning_checkpoint_field,
    quantization_bit_field,
)
from ptune.config.generation import GenerationArguments
from ptune.config.training_args import TrainingArguments
from ptune.data.conversations import FORMATS
from ptune.io.errors import UserError

# The longest prefix any flag or config may ask for (GLM-4's 128K context); the model's own positions are
# checked when it loads (ptune.model.load.load_model).
MAX_PRE_SEQ_LEN = 131072


@dataclass
class ModelArguments:
    """Which model to tune or run, and how to load it (THUDM's ModelArguments plus ptune's loading options)."""

    _argument_group_name = "model"

    model_name_or_path: str = field(
        metadata={
            "help": "(required) Base model folder, e.g. a downloaded chatglm2-6b (ptune never downloads weights). "
            "eval/predict/chat: default the base that --ptuning_checkpoint's prefix_config.json names."
        }
    )
    ptuning_checkpoint: str | None = ptuning_checkpoint_field()
    ignore_plan: bool = field(
        default=False,
        metadata={
            "help": "train: start even when `ptune plan` predicts the run will not fit the free GPU memory."
        },
    )
    compare_base: bool = field(
        default=False,
        metadata={
            "help": "eval/predict: also run the same prompts with the prefix switched off (the base model "
            "alone) and report both: base_ metrics beside the prefix's, a prefix/base/delta table, and a "
            "base_predict answer per row of generated_predictions.txt. Needs --ptuning_checkpoint."
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "THUDM flag, unused: the model config always comes from model_name_or_path."},
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Folder to load the tokenizer from instead of model_name_or_path."},
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where `datasets` caches the loaded and tokenized data files (default: its own cache)."
        },
    )
    use_fast_tokenizer: bool = field(
        default=True,
        metadata={"help": "THUDM flag: only true is accepted (each model family has exactly one tokenizer)."},
    )
    model_revision: str = field(
        default="main",
        metadata={"help": "THUDM flag: only main is accepted; pass the folder of another revision instead."},
    )
    use_auth_token: bool = field(
        default=False,
        metadata={
            "help": "THUDM flag: only false is accepted (ptune loads local folders and never contacts the Hub)."
        },
    )
    resize_position_embeddings: bool | None = field(
        default=None,
        metadata={"help": "THUDM flag, unused: position embeddings keep the checkpoint's size."},
    )
    quantization_bit: int | None = quantization_bit_field()
    pre_seq_len: int | None = field(
        default=None,
        metadata={
            "help": "Number of prefix tokens (virtual key/value positions per layer) P-Tuning v2 trains, e.g. "
            "128. Needed to train; eval/predict read it from the checkpoint."
        },
    )
    random_prefix: bool = field(
        default=False,
        metadata={
            "help": "eval/predict with --pre_seq_len and no --ptuning_checkpoint: run a freshly initialised, "
            "untrained prefix (a baseline). Without it that combination is refused: it is usually a forgotten "
            "--ptuning_checkpoint."
        },
    )
    prefix_projection: bool | None = field(
        default=None,
        metadata={
            "help": "Reparameterize the prefix through a two-layer MLP (the paper's prefix projection) instead "
            "of training the key/value embedding directly. Default: false for a new prefix, the checkpoint's "
            "setting for --ptuning_checkpoint (a different value is an error)."
        },
    )
    chat_format: ChatFormat | None = chat_format_field()
    dtype: Dtype = dtype_field()
    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2"] = field(
        default="sdpa",
        metadata={"help": "Attention kernel of the base model (transformers' attn_implementation)."},
    )
    prefix_dropout: float = field(
        default=0.1,
        metadata={
            "help": "Dropout on the prefix keys/values during training, as in the reference (0 disables)."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Let native models run code from their hub repository (passed to AutoTokenizer and "
            "AutoModel). Never needed for ChatGLM2/3 or GLM-4: ptune has its own code for them."
        },
    )

    def __post_init__(self):
        check_choices(self)
        refuse_dead(self)  # config_name, use_fast_tokenizer, model_revision, ... (ptune.config.compat.FLAGS)
        check_quantization_bit(self)
        check_at_least(self, 1, "pre_seq_len")
        if self.random_prefix and (self.ptuning_checkpoint or not self.pre_seq_len):
            raise BadArgument(
                "--random_prefix true runs an untrained prefix of --pre_seq_len tokens: it needs --pre_seq_len "
                "and no --ptuning_checkpoint",
                "random_prefix",
            )
        if self.pre_seq_len is not None and self.pre_seq_len > MAX_PRE_SEQ_LEN:  # before any tensor exists
            raise BadArgument(
                f"--pre_seq_len {self.pre_seq_len} is more prefix tokens than any model holds (at most "
                f"{MAX_PRE_SEQ_LEN}; THUDM's recipes use 128)",
                "pre_seq_len",
            )
        if not 0 <= self.prefix_dropout < 1:
            raise BadArgument(
                f"--prefix_dropout must be at least 0 and below 1, got {self.prefix_dropout}",
                "prefix_dropout",
            )
        if self.compare_base and self.ptuning_checkpoint is None:
            raise BadArgument(
                "--compare_base compares a trained prefix with the base model alone: give the prefix as "
                "--ptuning_checkpoint",
                "compare_base",
            )
        if self.trust_remote_code and self.chat_format not in (None, "native"):
            raise BadArgument(
                f"--trust_remote_code is only for native models, but --chat_format is {self.chat_format}: "
                "ptune runs ChatGLM2/3 and GLM-4 with its own code; remove --trust_remote_code",
                "trust_remote_code",
                "chat_format",
            )


@dataclass
class DataTrainingArguments:
    """Which data to read and how to cut it (THUDM's DataTrainingArguments)."""

    _argument_group_name = "data"

    lang: str | None = field(default=None, metadata={"help": "THUDM flag, unused (the data's language)."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "THUDM flag, unused: ptune reads local files (train_file etc.)."}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "THUDM flag, unused: ptune reads local files (train_file etc.)."}
    )
    prompt_column: str | None = field(
        default=None,
        metadata={"help": "Key of the input text in each data row, e.g. content (ADGEN) or prompt."},
    )
    response_column: str | None = field(
        default=None,
        metadata={"help": "Key of the target answer in each data row, e.g. summary (ADGEN) or response."},
    )
    history_column: str | None = field(
        default=None,
        metadata={"help": "Key of the earlier turns, a list of [question, answer] pairs (multi-turn data)."},
    )
    data_format: Literal[FORMATS] | None = field(  # type: ignore[valid-type]
        default=None,
        metadata={
            "help": "Data format: prompt_response (THUDM's columns), conversations (ChatGLM3's finetune_demo), "
            "messages (GLM-4's), alpaca, sharegpt. Default: prompt_response when --prompt_column is set, else "
            "detected from the first row's keys."
        },
    )
    data_columns: dict | str | None = field(
        default=None,
        metadata={
            "help": "Other key or role names for the conversation formats, as a JSON object with "
            'LLaMA-Factory\'s dataset_info names, e.g. {"messages": "dialog", "user_tag": "human"}.'
        },
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Training data: JSON lines (.json/.jsonl) or .csv. Needed by train."}
    )
    validation_file: str | None = field(
        default=None,
        metadata={
            "help": "Validation data (same format). Needed by eval, and by train to evaluate while training."
        },
    )
    test_file: str | None = field(
        default=None, metadata={"help": "Data to generate answers for (same format). Needed by predict."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder that relative train_file, validation_file and test_file are read from (THUDM "
            "finetune_demo's DATA_DIR argument). Default: the current folder."
        },
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Redo the tokenization instead of reusing the datasets cache."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Number of processes that tokenize the data (default: one)."}
    )
    max_source_length: int = field(
        default=1024,
        metadata={"help": "Most prompt tokens kept (history is cut first, from the oldest turn)."},
    )
    max_target_length: int = field(
        default=128, metadata={"help": "Most answer tokens kept in training examples."}
    )
    val_max_target_length: int | None = field(
        default=None,
        metadata={
            "help": "Most answer tokens of the reference answers in eval/predict, and the default for "
            "max_new_tokens (default: max_target_length)."
        },
    )
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "THUDM flag, unused: batches are padded to their longest sample."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training rows (quick runs, debugging)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation rows."}
    )
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N test rows."}
    )
    num_beams: int | None = field(
        default=None, metadata={"help": "Beam search width for generation (default: 1, no beam search)."}
    )
    ignore_pad_token_for_loss: bool = field(
        default=True,
        metadata={"help": "Leave padding out of the loss and of the decoded reference answers."},
    )
    source_prefix: str = field(
        default="",
        metadata={
            "help": "Text put in front of every prompt (before the chat formatting); prompt_response data only."
        },
    )
    forced_bos_token: str | None = field(
        default=None, metadata={"help": "THUDM flag, unused (for encoder-decoder translation models)."}
    )

    def data_file(self, path: str | None) -> str | None:
        """A data file's path with data_dir applied (an absolute path stays as it is)."""
        return path if path is None or self.data_dir is None else os.path.join(self.data_dir, path)

    def __post_init__(self):
        refuse_dead(self)  # lang, dataset_name, pad_to_max_length, ... (ptune.config.compat.FLAGS)
        check_at_least(
            self,
            1,
            "max_source_length",
            "max_target_length",
            "val_max_target_length",
            "preprocessing_num_workers",
            "max_train_samples",
            "max_eval_samples",
            "max_predict_samples",
            "num_beams",
        )
        columns = [(n, getattr(self, n)) for n in ("prompt_column", "response_column", "history_column")]
        for i, (name_a, a) in enumerate(columns):
            for name_b, b in columns[i + 1 :]:
                if a is not None and a == b:
                    raise BadArgument(f"--{name_a} and --{name_b} are both {a!r}", name_a, name_b)
        if self.data_columns is not None:
            from ptune.data.conversations import Mapping, parse_data_columns

            try:
                Mapping.of("conversations", parse_data_columns(self.data_columns))
            except UserError as e:
                raise BadArgument(str(e), "data_columns") from None
        if self.val_max_target_length is None:
            # THUDM's rule: reference answers in eval are cut like training answers unless told otherwise.
            self.val_max_target_length = self.max_target_length


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, TrainingArguments, GenerationArguments)


def _default_text(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING:
        return "(required)"
    return json.dumps(f.default, ensure_ascii=False)


def argument_reference() -> list[tuple[str, str, str, str]]:
    """(group, name, default, help) for every ptune argument, for the README's configuration table.

    Groups: model, data, generation (all their fields), and training: only the fields ptune adds to
    transformers' Seq2SeqTrainingArguments (the rest are documented by transformers). Defaults are written as
    in a JSON config (null, true, "main", 0.1).
    """
    stock = {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}
    rows = []
    for group, cls in (
        ("model", ModelArguments),
        ("data", DataTrainingArguments),
        ("generation", GenerationArguments),
        ("training", TrainingArguments),
    ):
        for f in dataclasses.fields(cls):
            if f.init and f.name not in stock:
                rows.append((group, f.name, _default_text(f), f.metadata["help"]))
    return rows
