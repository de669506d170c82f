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


def closest(word: str, choices) -> str | None:
    """The choice closest to a mistyped `word`, or None when none is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return close[0] if close else None


def did_you_mean(word: str, choices) -> str:
    """`did you mean 'x'? ` for the closest of `choices` to a mistyped `word`, or '' when none is close."""
    match = closest(word, choices)
    return f"did you mean '{match}'? " if match else ""
