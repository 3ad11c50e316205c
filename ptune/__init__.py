"""ptune: P-Tuning v2 for ChatGLM2/3, GLM-4 and native transformers decoders.

import ptune
model = ptune.load_model("/models/chatglm3-6b", ptuning_checkpoint="output/run")
tokenizer = ptune.load_tokenizer("/models/chatglm3-6b")
"""

__version__ = "0.1.0"
__all__ = ["load_model", "load_tokenizer", "__version__"]


def __getattr__(name: str):
    # Imported lazily: torch and transformers take seconds to import, and `ptune score` / `ptune plot` need neither.
    if name == "load_model":
        from ptune.model.load import load_model

        return load_model
    if name == "load_tokenizer":
        from ptune.families.registry import load_tokenizer

        return load_tokenizer
    raise AttributeError(f"module 'ptune' has no attribute {name!r}")
