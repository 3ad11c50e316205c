"""Print how far ptune.load_model is from the original ChatGLM forward (tests/reference/chatglm_reference.py)
for every family, without and with a prefix (projection off/on), on a left-padded float32 batch, over every
row.

Run it as a module from the repository root, so that it imports the reference exactly as the tests do
(`from tests.reference.chatglm_reference import ...`, with the root on sys.path, as pytest's
`pythonpath = ["."]` puts it), without any sys.path edit:

    python -m scripts.parity        # tests/unit/test_model.py asserts the same within 1e-5
"""

import json
import tempfile
from pathlib import Path

import torch

from ptune.bench.workload import chatglm_config
from ptune.model.load import load_model
from tools import tiny

try:
    from tests.reference.chatglm_reference import make_random_prefix_state_dict, reference_forward
except ModuleNotFoundError as e:  # run as a file (`python scripts/parity.py`): the root is not on sys.path
    if e.name not in ("tests", "tests.reference"):
        raise
    raise SystemExit("run it from the repository root as: python -m scripts.parity") from None


def measure(family: str, projection: bool | None) -> tuple[float, float]:
    folder = Path(tempfile.mkdtemp())
    cfg = chatglm_config(family, 128, tiny.TINY_DIMS)
    (folder / "config.json").write_text(json.dumps(cfg))
    state = tiny.random_chatglm_weights(cfg, 1, std=0.2)
    tiny.write_sharded(folder, state, cfg["num_layers"], family == "glm4", torch.float32)
    kwargs, ref_cfg = {}, cfg
    if projection is not None:
        prefix = make_random_prefix_state_dict(cfg, 5, projection, 3)
        (folder / "prefix").mkdir()
        torch.save(prefix, folder / "prefix" / "pytorch_model.bin")
        kwargs, ref_cfg = (
            {"ptuning_checkpoint": folder / "prefix"},
            {**cfg, "pre_seq_len": 5, "prefix_projection": projection},
        )
        state = {**state, **prefix}
    model = load_model(folder, dtype="float32", device="cpu", **kwargs)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 128, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(ids, attention_mask=mask, labels=labels)
    ref_logits, ref_loss = reference_forward(ref_cfg, state, ids, mask, positions, labels)
    return (out.logits - ref_logits).abs().max().item(), abs(out.loss.item() - ref_loss.item())


if __name__ == "__main__":
    for family in ("chatglm2", "chatglm3", "glm4"):
        for projection in (None, False, True):
            what = (
                "no prefix" if projection is None else f"prefix, projection {'on' if projection else 'off'}"
            )
            dlogit, dloss = measure(family, projection)
            print(f"{family:9s} {what:24s} max|dlogits| {dlogit:.2e}  |dloss| {dloss:.2e}")
