"""`--quantization_bit 4|8`: the frozen base's decoder linears as bitsandbytes int8 / NF4 layers.

THUDM's `quantize()` needed CUDA and an embedded kernel blob; bitsandbytes is maintained, runs on CUDA and on
the CPU, and its layers pass gradients to their inputs, which is all P-Tuning needs (the base is frozen, the
prefix gradients flow back through the quantized layers). As in THUDM's scheme, only the linear layers of the
decoder blocks are quantized: embeddings, norms and the output layer stay in the compute dtype, and the prefix
encoder stays float32.
"""

from __future__ import annotations

import torch
from torch import nn

from ptune.io.errors import UserError


def _quantized_linear(
    linear: nn.Linear, bits: int, compute_dtype: torch.dtype, device: torch.device
) -> nn.Module:
    import bitsandbytes as bnb

    has_bias = linear.bias is not None
    weight = linear.weight.data.to("cpu")
    if bits == 8:
        q = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False
        )
        q.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        q = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            compute_dtype=compute_dtype,
            quant_type="nf4",
        )
        q.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
        # On CPUs with avx512_bf16 (common Xeons), bitsandbytes (0.50) repacks a 4-bit weight in place for a
        # fused bf16 kernel on the layer's first eval-mode, no-grad call. ptune keeps it out of that path:
        # (1) the repacking needs in_features % blocksize (64) == 0 and out_features % 32 == 0, else it dies
        # with "shape '[64, 1]' is invalid for input of size 96" (the tiny test model is 96 wide); (2) the
        # layer stays repacked, and a later training step (train -> eval -> train) runs through a kernel
        # with no autograd formula (torch warns of "silently incorrect behavior"); (3) that kernel computes
        # in bf16 whatever the compute dtype, so results would depend on the CPU model. Every CPU then
        # dequantizes and multiplies, as CUDA does for training; GPUs are not affected by this flag.
        q.support_avx512bf16_for_cpu = False
    if has_bias:
        q.bias = nn.Parameter(linear.bias.data.to("cpu", compute_dtype), requires_grad=False)
    return q.to(device)  # bitsandbytes quantizes when the weight moves to its device


def quantize_decoder(model: nn.Module, bits: int, device: torch.device) -> int:
    """Replace every nn.Linear inside the decoder layers of `model` (a transformers CausalLM), in place,
    one layer at a time (so a full-precision copy never sits on `device`). Returns how many were replaced."""
    if bits not in (4, 8):
        raise UserError(f"--quantization_bit {bits}: use 4 or 8")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("--quantization_bit needs bitsandbytes: pip install 'ptune[quant]'") from None
    compute_dtype = model.dtype
    count = 0
    for layer in model.get_decoder().layers:
        for name, child in list(layer.named_modules()):
            if isinstance(child, nn.Linear):
                parent = layer.get_submodule(name.rsplit(".", 1)[0]) if "." in name else layer
                setattr(
                    parent, name.rsplit(".", 1)[-1], _quantized_linear(child, bits, compute_dtype, device)
                )
                count += 1
    return count
