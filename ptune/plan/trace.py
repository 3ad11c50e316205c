"""Trace one training step, one eval batch and one generation of ptune's own code on a fake model.

The model is the real class (`GlmForCausalLM` through `convert.glm_config` for chatglm folders, any transformers
decoder through `AutoModelForCausalLM.from_config` otherwise), built on the meta device and made of fake tensors
(`FakeTensorMode`): shapes, dtypes and storages without bytes. `PrefixTunedLM.forward` + `answer_loss` +
backward + `torch.optim.AdamW` (the Trainer's optimizer), and `generate.iter_tokens`, then run through torch's
`MemTracker`, which records every storage alive at each op and splits the peak into parameters, gradients,
optimizer states, activations and temporaries.

Speed: MemTracker's cost grows with the number of modules, so the model is traced with 1 and 2 decoder layers
and every figure is extended linearly to the real depth (each layer adds the same weights, saved activations,
prefix rows and cache); tests/unit/test_plan.py checks that rule against a 3-layer trace exactly.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, replace

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType
from torch.utils._python_dispatch import TorchDispatchMode

from ptune.data.labels import IGNORE_INDEX

_INDEX_OPS = {
    torch.ops.aten.index.Tensor,
    torch.ops.aten.index_put.default,
    torch.ops.aten.index_put_.default,
    torch.ops.aten._index_put_impl_.default,
}


class FrozenAwareMemTracker(MemTracker):
    """MemTracker that also accepts frozen parameters: torch 2.13's registers a gradient hook on every
    parameter and fails with "cannot register a hook on a tensor that doesn't require gradient" on a frozen
    base. Same bookkeeping as `MemTracker._track_module_params_and_buffers`, hooks only where grads exist."""

    def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True) -> tuple[int, int]:
        def grad_hook(grad):
            self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

        param_memory = buffer_memory = 0
        for param in module.parameters():
            winfos = self._update_and_maybe_create_winfos(param, _MemRefType.PARAM)
            param_memory += sum(w.mem_consumed for w in winfos)
            if param.grad is not None:
                self._update_and_maybe_create_winfos(param.grad, _MemRefType.GRAD)
            hooked = self._param_to_grad_hook_handles.get(param) is not None
            if install_grad_hooks and param.requires_grad and not hooked:
                self._param_to_grad_hook_handles[param] = (
                    param.register_hook(grad_hook),
                    param.register_post_accumulate_grad_hook(lambda p: grad_hook(p.grad)),
                )
        for buffer in module.buffers():
            winfos = self._update_and_maybe_create_winfos(buffer, _MemRefType.BUFFER)
            buffer_memory += sum(w.mem_consumed for w in winfos)
        return param_memory, buffer_memory


class KnownSelection(TorchDispatchMode):
    """Sizes the data-dependent selections of a fake run: `answer_loss` picks the supervised rows with a
    boolean mask (`hidden[keep]`), whose size a fake tensor cannot know. The planner knows it (`selected`:
    the supervised targets of the batch), so boolean indices become `selected` long indices per mask axis."""

    def __init__(self, selected: int):
        super().__init__()
        self.selected = selected

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _INDEX_OPS and any(i is not None and i.dtype == torch.bool for i in args[1]):
            indices = []
            for i in args[1]:
                if i is not None and i.dtype == torch.bool:
                    indices += [torch.empty(self.selected, dtype=torch.long)] * i.dim()
                else:
                    indices.append(i)
            args = (args[0], indices, *args[2:])
        return func(*args, **kwargs)


@dataclass(frozen=True)
class Footprint:
    """Bytes alive at the peak of a traced phase, by kind (MemTracker's split), plus the trained bytes."""

    params: int  # every parameter, the trained prefix included
    buffers: int
    grads: int
    optimizer: int
    activations: int  # saved activations, temporaries and anything else alive at the peak
    trainable: int  # bytes of the trained parameters (the prefix)
    matmul_params: int  # N: parameters costing 2 FLOP per token (all but the input embedding)
    linear_inputs: int = 0  # train: bytes of the distinct inputs of the decoder layers' linears (one step)

    @property
    def total(self) -> int:
        return self.params + self.buffers + self.grads + self.optimizer + self.activations

    def extend(self, deeper: Footprint, layers: int) -> Footprint:
        """This 1-layer footprint extended to `layers` layers by the per-layer step to `deeper` (2 layers)."""
        fields = self.__dataclass_fields__
        return replace(
            self,
            **{f: getattr(self, f) + (layers - 1) * (getattr(deeper, f) - getattr(self, f)) for f in fields},
        )


def build_fake(cfg: dict, folder, layers: int, dtype: torch.dtype, pre_seq_len: int, projection: bool, mode):
    """A `PrefixTunedLM` of fake tensors with `layers` decoder layers, as `load_model` builds it (frozen base in
    `dtype`, float32 prefix), from a config.json dict."""
    from pathlib import Path

    from ptune.model.load import BaseSource, PrefixTunedLM
    from ptune.model.prefix import PrefixEncoder, prefix_config_for

    with torch.device("meta"):
        base = _meta_base(dict(cfg), Path(folder), layers).to(dtype)
        encoder = PrefixEncoder(prefix_config_for(base, pre_seq_len, projection)) if pre_seq_len else None
        source = BaseSource(path=str(folder), model_type=cfg.get("model_type"), dtype=str(dtype)[6:])
        model = PrefixTunedLM(base, encoder, source)
    with mode:
        model.to_empty(device="cpu")
        rotary = getattr(base.get_decoder(), "rotary_emb", None)
        if (
            rotary is not None
        ):  # a non-persistent float32 buffer computed at init: rebuild it, as load_glm does
            base.get_decoder().rotary_emb = type(rotary)(config=base.config)
    return model


def _meta_base(cfg: dict, folder, layers: int):
    from transformers import AutoConfig, AutoModelForCausalLM, GlmForCausalLM

    from ptune.model.convert import glm_config

    if cfg.get("model_type") == "chatglm":
        cfg["num_layers"] = cfg["num_hidden_layers"] = layers
        config = glm_config(cfg, folder)
        config._attn_implementation = "sdpa"
        return GlmForCausalLM(config)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)  # never runs a folder's code
    config.get_text_config().num_hidden_layers = layers
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config)


def _footprint(tracker: MemTracker, model) -> Footprint:
    from ptune.model.load import matmul_params

    snap = next(iter(tracker.get_tracker_snapshot("peak").values()))
    kinds = (_MemRefType.ACT, _MemRefType.TEMP, _MemRefType.OTH)
    return Footprint(
        params=snap[_MemRefType.PARAM],
        buffers=snap[_MemRefType.BUFFER],
        grads=snap[_MemRefType.GRAD],
        optimizer=snap[_MemRefType.OPT],
        activations=sum(snap[k] for k in kinds),
        trainable=sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
        matmul_params=matmul_params(model.base),
    )


def train_batch(batch: int, seq: int, answer: int) -> dict[str, torch.Tensor]:
    """A batch as the Collator pads it: `seq` tokens per row, the last `answer` of them supervised."""
    labels = torch.zeros(batch, seq, dtype=torch.long)
    labels[:, : seq - answer] = IGNORE_INDEX
    ids = torch.zeros(batch, seq, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def trace_train(model, batch: int, seq: int, answer: int, checkpointing: bool) -> Footprint:
    """Two optimizer steps (AdamW on the prefix) of `batch` rows, gradients kept between them as under
    gradient accumulation, so the peak has the optimizer states and gradients alive during a forward pass."""
    mode = _mode_of(model)
    with mode:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        inputs = train_batch(batch, seq, answer)
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable()
    tracker = FrozenAwareMemTracker()
    tracker.track_external(model, optimizer)
    seen: dict = {}
    with mode, _selection(model, batch * answer), tracker, _linear_inputs(model, seen):
        for _ in range(2):
            model(**inputs).loss.backward()
            optimizer.step()
            tracker.reset_mod_stats()  # per-module stats are per iteration; the overall peak is kept
        optimizer.zero_grad(set_to_none=True)
    model.activation_checkpointing_disable()
    return replace(_footprint(tracker, model), linear_inputs=sum(n for n, _ in seen.values()))


def trace_eval(model, batch: int, seq: int, answer: int) -> Footprint:
    """One teacher-forced eval batch, as `PrefixTrainer.prediction_step` runs it (no grad, no logits)."""
    mode = _mode_of(model)
    with mode:
        inputs = train_batch(batch, seq, answer)
    model.eval()
    tracker = FrozenAwareMemTracker()
    tracker.track_external(model)
    with mode, _selection(model, batch * answer), tracker, torch.no_grad(), _frozen(model):
        model(**inputs, return_logits=False)
    return _footprint(tracker, model)


def trace_generate(model, batch: int, prompt: int, new_tokens: int = 2) -> Footprint:
    """`generate.iter_tokens` on `batch` prompts of `prompt` tokens for `new_tokens` sampled tokens: the prefix
    cache, the prefill and the decode steps (the report adds the cache of later steps: tracing every step of
    a long answer costs seconds per step)."""
    from ptune.infer.generate import GenerationSettings, iter_tokens

    mode = _mode_of(model)
    settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True)
    with mode:
        ids = torch.zeros(batch, prompt, dtype=torch.long)
        mask = torch.ones_like(ids)
    model.eval()
    tracker = FrozenAwareMemTracker()
    tracker.track_external(model)
    with mode, tracker:
        tokens = []
        for token in iter_tokens(model, ids, mask, stop_ids=[0], settings=settings):
            tokens.append(token)  # kept, as generate keeps them
            tracker.reset_mod_stats()  # one decoder call per step; the overall peak is kept
        torch.stack(tokens, dim=1)
    return _footprint(tracker, model)


@contextlib.contextmanager
def _linear_inputs(model, seen: dict):
    """Records into `seen` (module -> (bytes, weak storage)) the first input of every linear of the decoder layers:
    the report adds what bitsandbytes' int8 layers keep of them (report._quantized). First call only, so
    a checkpointed layer's recomputation and the second step are not counted again; linears fed the same
    tensor (q, k, v) share one storage, counted once."""

    def hook(module, args):
        if module in seen:
            return
        st = args[0].untyped_storage()
        shared = [n for n, ref in seen.values() if ref() is st]  # weak: recording must not keep it alive
        seen[module] = (0 if shared else st.nbytes(), weakref.ref(st))

    layers = model.base.get_decoder().layers
    linears = [m for m in layers.modules() if isinstance(m, torch.nn.Linear)]
    handles = [m.register_forward_pre_hook(hook) for m in linears]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _frozen(model):
    """No parameter requires grad for the duration. Under no_grad a float32 prefix reaches the dropout module
    as a view of the parameter that still says requires_grad (no copy is made when the dtype already matches),
    and MemTracker's module hooks then fail ("Expected gradient function to be set"); nothing is computed
    differently, an eval pass keeps no gradients either way."""
    trained = [p for p in model.parameters() if p.requires_grad]
    for p in trained:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trained:
            p.requires_grad_(True)


def _mode_of(model):
    """The model's FakeTensorMode, or no mode for a real model (a measurement: the same steps, real bytes)."""
    return getattr(next(model.parameters()), "fake_mode", None) or contextlib.nullcontext()


def _selection(model, selected: int):
    """KnownSelection for a fake model; a real one selects by its real mask."""
    if hasattr(next(model.parameters()), "fake_mode"):
        return KnownSelection(selected)
    return contextlib.nullcontext()


def new_mode() -> FakeTensorMode:
    # allow_non_fake_inputs: the meta-built modules' first to_empty reads meta tensors (no data either way).
    return FakeTensorMode(allow_non_fake_inputs=True)
