"""The one error type users see.

A `SabunError` is an expected failure caused by input (a missing file, a corrupt LoRA, a LoRA that
does not fit the model). The CLI prints its message on one line and exits with status 2, without a
traceback. The message names the file and says what to do.
"""


class SabunError(Exception):
    """A user-facing error: one line naming the file and the fix."""
