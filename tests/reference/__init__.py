"""Independent re-implementations the test suite and `scripts/parity.py` compare ptune against.

Import them as `from tests.reference.chatglm_reference import ...`, from the repository root on `sys.path`
(pytest's `pythonpath = ["."]`; `python -m scripts.parity` run from the root).
"""
