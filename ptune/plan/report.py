"""The plan of one run: per phase, the traced peak at full depth split into what the user can act on, the
largest micro-batch that fits, FLOPs and the time per epoch at a device's peak; printed and as JSON.

Split of a phase's peak (bytes alive at the traced peak, `trace.Footprint`):
- weights: frozen base parameters and buffers (decoder linears at their bitsandbytes size when quantized);
- prefix: the float32 prefix, its gradients and AdamW's two states;
- logits: the answer rows' logits in the compute dtype and their float32 copy (train/eval: B·answer·V, generate:
  B·V), attributed from the shapes inside the traced activations;
- kv_cache: generation's cache, 2·L·G·hn values per token and row, P + prompt + new tokens (formula: the trace
  runs 2 decode steps, later steps only grow the cache);
- activations: everything else the trace found alive at the peak (saved activations, temporaries);
- cuda: CUDA context + allocator slack (devices.py), only for --device cuda.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ptune.plan import devices
from ptune.plan.trace import Footprint, build_fake, new_mode, trace_eval, trace_generate, trace_train

PARTS = ("weights", "prefix", "activations", "logits", "kv_cache", "cuda")


@dataclass
class PlanInputs:
    """Everything a plan depends on, read from ptune's parsed arguments (ptune.plan.cli)."""

    cfg: dict
    folder: str
    dtype: torch.dtype
    pre_seq_len: int
    projection: bool
    bits: int | None
    train_batch: int
    eval_batch: int
    seq: int  # longest training sample: prompt + answer tokens
    answer: int  # supervised tokens of that sample
    prompt: int  # longest generation prompt
    new_tokens: int
    checkpointing: bool
    device: str = "cuda"
    grad_accum: int = 1
    serve_batch: int = 16
    serve_length: int = 2048
    gpu_memory: int | None = None
    device_name: str | None = None
    samples: int | None = None  # training samples in an epoch (with a data file)
    tokens: int | None = None  # their tokens
    lengths_from: str = "max_source_length + max_target_length"
    phases: tuple[str, ...] = ("train", "eval", "predict", "serve")
    cache: dict = field(default_factory=dict)

    @classmethod
    def of_model(
        cls,
        cfg: dict,
        folder: str | Path,
        dtype: torch.dtype,
        *,
        pre_seq_len: int,
        seq: int,
        answer: int,
        prompt: int,
        new_tokens: int,
        batch: int = 1,
        eval_batch: int | None = None,
        bits: int | None = None,
        checkpointing: bool = False,
        device: str = "cuda",
    ) -> PlanInputs:
        """The inputs for one model and setting given directly rather than by a `ptune` command line (the
        tables of scripts/plan_table.py, the benchmark's check, the tests): `batch` sequences of `seq` tokens
        (`answer` of them supervised) per training step, `eval_batch` (default: `batch`) per evaluation one,
        generation of `new_tokens` after a `prompt`-token prompt; no prefix projection (`dataclasses.replace`
        changes any field, sharing the traces already made)."""
        return cls(
            cfg=cfg,
            folder=str(folder),
            dtype=dtype,
            pre_seq_len=pre_seq_len,
            projection=False,
            bits=bits,
            train_batch=batch,
            eval_batch=batch if eval_batch is None else eval_batch,
            seq=seq,
            answer=answer,
            prompt=prompt,
            new_tokens=new_tokens,
            checkpointing=checkpointing,
            device=device,
        )

    @property
    def layers(self) -> int:
        c = self.cfg
        return c.get("num_layers") or c.get("num_hidden_layers") or c["text_config"]["num_hidden_layers"]


def traced(inputs: PlanInputs, what: str, *args) -> Footprint:
    """A phase traced with 1 and 2 layers and extended to the real depth (a model of 1 or 2 layers is traced as
    it is); memoized per arguments in `inputs.cache`."""
    key = (what, *args)
    if key not in inputs.cache:
        run = {"train": trace_train, "eval": trace_eval, "generate": trace_generate}[what]
        depths = (inputs.layers,) if inputs.layers <= 2 else (1, 2)
        shallow = []
        for layers in depths:
            model = build_fake(
                inputs.cfg,
                inputs.folder,
                layers,
                inputs.dtype,
                inputs.pre_seq_len,
                inputs.projection,
                new_mode(),
            )
            shallow.append(run(model, *args))
            inputs.cache.setdefault(("model", 1), model)  # read for the layouts of one layer
        inputs.cache[key] = shallow[0] if len(shallow) == 1 else shallow[0].extend(shallow[1], inputs.layers)
    return inputs.cache[key]


def split(inputs: PlanInputs, fp: Footprint, logits: int, kv_cache: int, tokens: int) -> dict[str, int]:
    """Bytes by part (PARTS) for a full-depth footprint of a batch of `tokens` tokens (all rows)."""
    weights = fp.params + fp.buffers - fp.trainable
    activations = fp.activations
    if inputs.bits:
        old, new, widest = _quantized(inputs, tokens)
        weights += (new - old) * inputs.layers
        activations += widest
    if inputs.bits == 8:
        # Kept past the backward's start by bitsandbytes 0.50 (autograd/_functions.py): MatMul8bitFp (CPU/XPU
        # training) stores its input on the autograd context (`ctx.A = A`), MatMul8bitLt (CUDA) as
        # `ctx.tensors = (CAt, subA, A)`; a ctx attribute is not a saved tensor, so neither the frozen
        # nn.Linear of the trace (which saves no input) nor activation checkpointing frees it.
        activations += fp.linear_inputs
    logits = min(logits, activations)
    kv_cache = min(kv_cache, activations - logits)
    parts = {
        "weights": weights,
        "prefix": fp.trainable + fp.grads + fp.optimizer,
        "activations": activations - logits - kv_cache,
        "logits": logits,
        "kv_cache": kv_cache,
    }
    traced_total = sum(parts.values())
    parts["cuda"] = 0
    if inputs.device == "cuda":
        parts["cuda"] = devices.CUDA_CONTEXT_BYTES + int(devices.ALLOCATOR_SLACK * traced_total)
    return parts


def _quantized(inputs: PlanInputs, tokens: int) -> tuple[int, int, int]:
    """(bytes of one decoder layer's linear weights in the compute dtype, the same quantized, the largest
    transient of one quantized matmul), read off the 1-layer fake model. The transient (bitsandbytes 0.50,
    bitsandbytes/autograd/_functions.py): MatMul4Bit dequantizes the whole weight to the compute dtype
    (forward and backward); MatMul8bitLt quantizes its input as a float16 copy plus an int8 copy ([tokens, in],
    3 bytes per value) and its backward dequantizes the int8 weight to the compute dtype."""
    model = inputs.cache[("model", 1)]
    size = torch.empty((), dtype=inputs.dtype).element_size()
    linears = [m for m in model.base.get_decoder().layers[0].modules() if isinstance(m, torch.nn.Linear)]
    old = sum(m.weight.numel() * size for m in linears)
    new = sum(devices.quantized_bytes(m.out_features, m.in_features, inputs.bits) for m in linears)
    widest = max(m.weight.numel() * size for m in linears)
    if inputs.bits == 8:
        widest = max(widest, 3 * tokens * max(m.in_features for m in linears))
    return old, new, widest


def _vocab_kv(inputs: PlanInputs) -> tuple[int, int, int]:
    """(vocabulary rows, bytes of one token's cache per row over all layers, dtype bytes)."""
    model = inputs.cache[("model", 1)]
    c = model.prefix_encoder.config if model.prefix_encoder is not None else None
    size = torch.empty((), dtype=inputs.dtype).element_size()
    vocab = model.base.get_output_embeddings().weight.shape[0]
    if c is None:
        from ptune.model.prefix import prefix_config_for

        c = prefix_config_for(model.base, 1, False)
    return vocab, 2 * c.num_kv_heads * c.head_dim * size * inputs.layers, size


def train_parts(inputs: PlanInputs, batch: int, checkpointing: bool) -> dict[str, int]:
    fp = traced(inputs, "train", batch, inputs.seq, inputs.answer, checkpointing)
    vocab, _, size = _vocab_kv(inputs)
    return split(inputs, fp, batch * inputs.answer * vocab * (size + 4), 0, batch * inputs.seq)


def eval_parts(inputs: PlanInputs) -> dict[str, int]:
    fp = traced(inputs, "eval", inputs.eval_batch, inputs.seq, inputs.answer)
    vocab, _, size = _vocab_kv(inputs)
    return split(
        inputs, fp, inputs.eval_batch * inputs.answer * vocab * (size + 4), 0, inputs.eval_batch * inputs.seq
    )


def generate_parts(inputs: PlanInputs, batch: int, prompt: int, new_tokens: int) -> dict[str, int]:
    fp = traced(inputs, "generate", batch, prompt, 2)
    vocab, per_token, size = _vocab_kv(inputs)
    grown = batch * per_token * max(new_tokens - 2, 0)
    cache = batch * per_token * (inputs.pre_seq_len + prompt + min(new_tokens, 2))
    fp = Footprint(**{**fp.__dict__, "activations": fp.activations + grown})
    return split(inputs, fp, batch * vocab * (size + 4), cache + grown, batch * prompt)


def max_micro_batch(inputs: PlanInputs, checkpointing: bool) -> int:
    """The largest training micro-batch whose peak fits --gpu_memory: the peak is affine in the batch (every
    activation is per row), so two traced batches (1 and 2) give it (tests/unit/test_plan.py checks a third)."""
    one = sum(train_parts(inputs, 1, checkpointing).values())
    two = sum(train_parts(inputs, 2, checkpointing).values())
    per_row = max(two - one, 1)
    return max(0, int((inputs.gpu_memory - (one - per_row)) // per_row))


def make_plan(inputs: PlanInputs) -> dict:
    """The plan as a JSON-ready dict: per phase the parts and peak in GiB, and the training FLOPs."""
    gib = devices.GIB
    plan: dict = {"inputs": describe(inputs)}
    phases = {
        "train": lambda: train_parts(inputs, inputs.train_batch, inputs.checkpointing),
        "eval": lambda: eval_parts(inputs),
        "predict": lambda: generate_parts(inputs, inputs.eval_batch, inputs.prompt, inputs.new_tokens),
        "serve": lambda: generate_parts(inputs, inputs.serve_batch, inputs.serve_length - 2, 2),
    }
    for name in inputs.phases:
        parts = phases[name]()
        plan[name] = {f"{k}_gib": v / gib for k, v in parts.items()} | {"peak_gib": sum(parts.values()) / gib}
    if "train" in plan:
        train = plan["train"]
        if inputs.gpu_memory is not None:
            train["max_micro_batch"] = max_micro_batch(inputs, inputs.checkpointing)
            train["max_micro_batch_checkpointing"] = max_micro_batch(inputs, True)
            train["max_micro_batch_no_checkpointing"] = max_micro_batch(inputs, False)
        n = traced(inputs, "train", inputs.train_batch, inputs.seq, inputs.answer, inputs.checkpointing)
        train["matmul_params"] = n.matmul_params
        per_sample = inputs.tokens / inputs.samples if inputs.tokens else inputs.seq  # mean, else the longest
        train["tokens_per_sample"] = per_sample
        train["flops_per_sample"] = 4 * n.matmul_params * per_sample
        peak = _peak_tflops(inputs)
        if peak is not None:
            samples = inputs.samples or 1000
            train["epoch_samples"] = samples
            train["epoch_seconds_lower_bound"] = train["flops_per_sample"] * samples / (peak * 1e12)
            train["peak_tflops"] = peak
    return plan


def _peak_tflops(inputs: PlanInputs) -> float | None:
    if not inputs.device_name:
        return None
    return devices.device_spec(inputs.device_name)[0]


def describe(inputs: PlanInputs) -> dict:
    return {
        k: (str(v)[6:] if isinstance(v, torch.dtype) else v)
        for k, v in inputs.__dict__.items()
        if k not in ("cfg", "cache")
    }
