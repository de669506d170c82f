"""User-facing errors: one clear line, exit code 2, no traceback.

Anything a user can cause (a bad recipe, a missing column, an unknown model, an unreachable judge) raises
`DeliberateError`; the CLI prints its message on one line and exits with `EXIT_USAGE`. Any other exception is a
bug in deliberate and keeps its traceback.
"""

EXIT_USAGE = 2


class DeliberateError(Exception):
    """An error caused by the user's input, reported as one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))
