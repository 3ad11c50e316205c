"""The one exception type that means "the user handed us something wrong".

The CLI turns a `UserError` into a single line on stderr and exit code 2 (no traceback unless `--debug`).
Raise it with a message that names the offending file, line, column or flag, and what to do about it.
"""


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""
