"""ptune: P-Tuning v2 for ChatGLM2/3, GLM-4 and native transformers decoders."""

__version__ = "0.1.0"
