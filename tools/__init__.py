"""Dev tooling, beside the runtime package and never imported by it (tests/unit/test_packaging.py checks):
the tiny checkpoints in the real formats (`tools.tiny`), their tokenizers (`tools.tiny_tokenizers`, trained on
`tools/corpus.txt`) and the demo's base. Used by the tests, the demo and `scripts/`; not installed by pip.
"""
