"""PrefixTrainer overrides private Trainer methods where transformers offers no public hook (prefix-only,
atomic checkpoints; loading the prefix back on resume and for the best model; generation in evaluation).
A transformers minor may rename or re-sign them without notice: these tests pin, on the installed version,
that each one still exists with the parameters ptune's override takes, and that the Trainer still calls it,
so that a new minor fails here, by name, instead of silently skipping ptune's checkpoint writing."""

from __future__ import annotations

import inspect

import pytest
from transformers import Seq2SeqTrainer, Trainer

from ptune.train.trainer import PrefixTrainer

# What each override does for ptune, and why no public hook does it. Gone to public hooks: `_save` (the
# prefix is written by the public `save_model`), `_prepare_for_training` (the FSDP report is a callback's
# `on_train_begin`).
PRIVATE_OVERRIDES = {
    # The Trainer writes checkpoint-N in place and calls `on_save` only after: no hook runs before the
    # writing, so the staging folder (atomic publish) needs `_get_output_dir`, the rename `_save_checkpoint`.
    "_get_output_dir": "checkpoints are written into the staging folder, then renamed into place",
    "_save_checkpoint": "prefix-only checkpoints, staged and renamed (atomic), rotation",
    # The stock loaders read a whole model's weights (model.safetensors into the whole model, or FSDP's own
    # files); no callback runs between them and the first step.
    "_load_from_checkpoint": "resume loads the prefix back (weights_only / safetensors)",
    "_load_best_model": "load_best_model_at_end loads the best prefix",
    # Under FSDP the stock ones write / read FSDP's sharded optimizer files, not optimizer.pt.
    "_save_optimizer_and_scheduler": "under FSDP, the prefix's Adam state gathered whole into optimizer.pt",
    "_load_optimizer_and_scheduler": "under FSDP, that state scattered back on resume",
}


def _parameters(function) -> list[tuple[str, object]]:
    return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()]


def test_every_private_override_is_pinned():
    overridden = {
        name
        for name, value in vars(PrefixTrainer).items()
        if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(Trainer, name)
    }
    assert overridden == set(PRIVATE_OVERRIDES)


@pytest.mark.parametrize("name", sorted(PRIVATE_OVERRIDES))
def test_private_override_matches_the_installed_trainer(name):
    ours = _parameters(getattr(PrefixTrainer, name))
    if [kind for _, kind in ours[1:]] == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]:
        return  # (self, *args, **kwargs): forwards whatever the Trainer passes, to super() unchanged
    assert ours == _parameters(getattr(Seq2SeqTrainer, name))


@pytest.mark.parametrize("name", sorted(PRIVATE_OVERRIDES))
def test_the_trainer_still_calls_the_override(name):
    source = inspect.getsource(Trainer)
    assert f"self.{name}(" in source, (
        f"transformers' Trainer no longer calls self.{name}: {PRIVATE_OVERRIDES[name]}"
    )


def test_the_checkpoint_writes_the_model_through_the_public_save_model():
    """A checkpoint's `model.safetensors` is the prefix alone only because the stock `_save_checkpoint` writes
    the model through `save_model`, which PrefixTrainer overrides (it once went through `_save`)."""
    assert "self.save_model(" in inspect.getsource(Trainer._save_checkpoint)
    assert "save_model" in vars(PrefixTrainer) and "_save" not in vars(PrefixTrainer)
