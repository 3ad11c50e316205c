"""What a trace cannot see, as stated constants with their sources: device peaks and memory, the CUDA
context, allocator slack, and the byte layouts of bitsandbytes' quantized weights.

The numbers of the CUDA side are not measured by this project yet (no GPU so far): each says where it comes
from, and `ptune bench` on a GPU prints the plan beside the measured peak to check them.
"""

from __future__ import annotations

import re

GIB = 2**30

# name: (dense bf16/fp16 tensor-core TFLOP/s without sparsity, memory GiB), from the vendors' data sheets:
# H100 SXM / H200 SXM 989 TFLOP/s (NVIDIA H100 / H200 data sheets), A100 312 (A100 data sheet), RTX 4090 165
# with fp32 accumulation as PyTorch uses (Ada whitepaper, Appendix A), L40S 362, A10 125, V100 125 (fp16),
# RTX 3090 71 (Ampere GA102 whitepaper, fp32 accumulation).
DEVICES = {
    "H200": (989.0, 141.0),
    "H100": (989.0, 80.0),
    "A100": (312.0, 80.0),
    "A100-40GB": (312.0, 40.0),
    "L40S": (362.0, 48.0),
    "A10": (125.0, 24.0),
    "4090": (165.0, 24.0),
    "3090": (71.0, 24.0),
    "V100": (125.0, 32.0),
}

# The CUDA context and the kernels' modules live outside PyTorch's allocator, so neither the trace nor
# torch.cuda.max_memory_allocated sees them ("CUDA semantics: memory management" in the PyTorch docs). 0.5 GiB
# is the order nvidia-smi shows for a process that has only initialised CUDA and cuBLAS on a Hopper/Ampere
# card with PyTorch 2.x; an assumption until measured here.
CUDA_CONTEXT_BYTES = GIB // 2
# The caching allocator rounds blocks up (512 B small, 2 MiB segments for large blocks) and fragments; 5% of
# the traced peak is the margin ptune keeps for that (PyTorch docs, "CUDA semantics": reserved >= allocated).
ALLOCATOR_SLACK = 0.05
# `ptune train` refuses to start on CUDA when the plan exceeds the free memory by more than this fraction.
REFUSE_MARGIN = 0.10


def parse_memory(text: str) -> int:
    """'24GiB', '24GB', '24G', '80' (GiB) → bytes. GB is read as GiB, as nvidia-smi and vendors mean it here."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(GiB|GB|G|MiB|MB|M)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"expected a size like 24GiB, got {text!r}")
    value, unit = float(match.group(1)), (match.group(2) or "GiB").upper()
    return int(value * (2**20 if unit.startswith("M") else GIB))


def device_spec(name: str) -> tuple[float, float]:
    """(peak TFLOP/s, memory GiB) of a device name such as 'H100', 'NVIDIA A100-SXM4-80GB' or 'RTX 4090'."""
    key = name.upper().replace("NVIDIA", "").replace("GEFORCE", "").replace("RTX", "").strip()
    for known in sorted(DEVICES, key=len, reverse=True):
        if known.upper() in key:
            return DEVICES[known]
    raise KeyError(name)


def quantized_bytes(out_features: int, in_features: int, bits: int) -> int:
    """Bytes of one decoder linear's weight as `ptune.model.quantize` stores it with bitsandbytes 0.50.

    - 8 bit (`Int8Params`, has_fp16_weights=False): the int8 matrix [out, in] plus one float32 scale per row
      (`SCB` [out]) (bitsandbytes/nn/modules.py, Int8Params._quantize).
    - 4 bit (`Params4bit`, NF4, blocksize 64, compress_statistics=True, the defaults ptune keeps): two weights
      per byte, one uint8 absmax per block of 64, one float32 absmax per 256 blocks, a 256-entry float32 code
      and a float32 offset (bitsandbytes/functional.py, quantize_4bit with nested statistics).
    """
    n = out_features * in_features
    if bits == 8:
        return n + 4 * out_features
    blocks = -(-n // 64)
    return -(-n // 2) + blocks + 4 * -(-blocks // 256) + 4 * 256 + 4
