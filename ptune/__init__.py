"""ptune: P-Tuning v2 for ChatGLM2/3, GLM-4 and native transformers decoders.

import ptune
model = ptune.load_model("/models/chatglm3-6b", ptuning_checkpoint="output/run")
tokenizer = ptune.load_tokenizer("/models/chatglm3-6b")
"""

import logging

__version__ = "0.1.0"
__all__ = ["load_model", "load_tokenizer", "__version__"]

# transformers imports peft when it is installed, and peft imports bitsandbytes, whose CPU backend then warns on
# stderr (once per op, or on an avx512_bf16 CPU that an optional kernel for its repacked 4-bit path is missing:
# "pip install kernels") where ptune never takes that path. That is noise in every verb's output (and breaks
# "bad input is one line") and in the Python API's; bitsandbytes falls back to its own code. Set here, before any
# of them is imported, for the CLI and `ptune.load_model(..., quantization_bit=4)` alike.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def __getattr__(name: str):
    # Imported lazily: torch and transformers take seconds to import, and `ptune score` / `ptune plot` need neither.
    if name == "load_model":
        from ptune.model.load import load_model

        return load_model
    if name == "load_tokenizer":
        from ptune.families.registry import load_tokenizer

        return load_tokenizer
    raise AttributeError(f"module 'ptune' has no attribute {name!r}")
