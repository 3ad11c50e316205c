"""Print how far ptune's logits are from PEFT's for the same prefix, both ways, on a tiny GQA Llama (4 query
heads, 2 key/value heads) in float32, and how far they would be with the other position convention:

- ptune → PEFT: a ptune prefix (positions after_prefix) through `ptune export --format peft`, loaded with
  `PeftModel.from_pretrained`, projection off and on;
- PEFT → ptune: an adapter saved by PEFT's `save_pretrained` (safetensors and .bin), read as
  `--ptuning_checkpoint`;
- from_zero: the same prefix with the real tokens numbered from 0 (what ptune computed for native prefixes
  before the convention was recorded), against PEFT.

    python -m scripts.peft_parity      # needs peft (the dev extra); tests/unit/test_peft.py asserts <= 1e-5
"""

import tempfile
import warnings
from pathlib import Path

import torch

from ptune.model.export import export_checkpoint
from ptune.model.load import load_model
from ptune.train.checkpoint import write_prefix_files
from tools import tiny

IDS = torch.tensor([[5, 17, 30, 44, 9, 80, 3, 61], [12, 60, 7, 99, 41, 8, 20, 33]])


def peft_model(base: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)


@torch.no_grad()
def logits(model, **kwargs) -> torch.Tensor:
    return model.eval()(input_ids=IDS, attention_mask=torch.ones_like(IDS), **kwargs).logits


def ptune_to_peft(base: Path, work: Path, projection: bool) -> tuple[float, float]:
    """(max |ptune - PEFT|, max |ptune from_zero - PEFT|) for a random ptune prefix (rows normal(0, 1))."""
    torch.manual_seed(0)
    model = load_model(base, dtype="float32", device="cpu", pre_seq_len=4, prefix_projection=projection)
    with torch.no_grad():
        model.prefix_encoder.embedding.weight.normal_(0.0, 1.0)
    folder = work / f"ptune-{projection}"
    folder.mkdir()
    write_prefix_files(model, folder, [])
    theirs = logits(peft_model(base, export_checkpoint(folder, "peft", work / f"peft-{projection}")))
    zero_based = logits(model, position_ids=torch.arange(IDS.shape[1]).expand_as(IDS))
    return float((logits(model) - theirs).abs().max()), float((zero_based - theirs).abs().max())


def peft_to_ptune(base: Path, work: Path, projection: bool, safe: bool) -> float:
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=projection)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), config)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in peft.prompt_encoder["default"].parameters():
            p.normal_(0.0, 1.0)
    adapter = work / f"saved-{projection}-{safe}"
    peft.save_pretrained(adapter, safe_serialization=safe)
    ours = load_model(base, dtype="float32", device="cpu", ptuning_checkpoint=adapter)
    return float((logits(ours) - logits(peft)).abs().max())


def main() -> None:
    warnings.simplefilter("ignore")  # PEFT's deprecation notices about transformers 5.24
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = tiny.make_tiny_checkpoint(work / "llama", "llama")
        for projection in (False, True):
            same, zero = ptune_to_peft(base, work, projection)
            print(
                f"ptune -> PEFT  projection {projection!s:5}: {same:.3g}   (from_zero against PEFT: {zero:.3g})"
            )
        for projection in (False, True):
            for safe in (True, False):
                name = "safetensors" if safe else ".bin"
                distance = peft_to_ptune(base, work, projection, safe)
                print(f"PEFT -> ptune projection {projection!s:5} {name:11}: {distance:.3g}")


if __name__ == "__main__":
    main()
