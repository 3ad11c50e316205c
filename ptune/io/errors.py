"""The one exception type that means "the user handed us something wrong".

The CLI turns a `UserError` into a single line on stderr and exit code 2 (no traceback unless `--debug`).
Raise it with a message that names the offending file, line, column or flag, and what to do about it.
"""


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


def torch_load_reason(error: Exception) -> str:
    """Why `torch.load(..., weights_only=True)` refused a file, in a few words for a one-line error.

    torch's own message opens with advice to re-run with `weights_only=False`, i.e. to execute whatever the
    pickle holds: never repeat that for a file that failed to load. Only its diagnosis is kept.
    """
    import re

    text = str(error)
    found = re.search(r"unsupported GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a Python object ({found.group(1)}), not only tensors"
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        return f"not a file torch.save writes (unsupported pickle operand {found.group(1)})"
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    if not first or "weights_only" in text:
        return f"not a file torch.save writes ({type(error).__name__})"
    return first
