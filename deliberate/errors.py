"""User-facing errors: one clear line, exit code 2, no traceback.

Anything a user can cause (a bad recipe, a missing column, an unknown model, an unreachable judge) raises
`DeliberateError`; the CLI prints its message on one line and exits with its `exit_code`: `EXIT_USAGE` (2) for
bad input or nothing to do, `EXIT_FAILED` (3) when a stage ran but more of its judgments or generations failed
than the recipe allows (`StageFailed`; what succeeded is kept, the earlier outputs are untouched). Any other
exception is a bug in deliberate and keeps its traceback.
"""

import re

EXIT_USAGE = 2
EXIT_FAILED = 3


class DeliberateError(Exception):
    """An error caused by the user's input, reported as one line."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str):
        super().__init__(redact(" ".join(message.split())))


class StageFailed(DeliberateError):
    """A stage ran, but more of its judgments or generations failed than `judge.max_failures` allows."""

    exit_code = EXIT_FAILED


def closest(word: str, choices) -> str | None:
    """The choice closest to a mistyped `word`, or None when none is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return close[0] if close else None


def did_you_mean(word: str, choices) -> str:
    """`did you mean 'x'? ` for the closest of `choices` to a mistyped `word`, or '' when none is close."""
    match = closest(word, choices)
    return f"did you mean '{match}'? " if match else ""


_TOKEN = None
_CREDENTIALS = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/\s\"'@]+@", re.IGNORECASE)
_SECRETS: set[str] = set()  # values known to be secret (an API key read for a client), whatever their variable
_SECRET_NAME = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")


def redact(text: str) -> str:
    """`text` with secrets replaced by `[redacted]`: the values of environment variables whose names say they
    hold one (`*_API_KEY`, `*TOKEN*`, `*SECRET*`, ...) and anything shaped like an API token (`sk-...`,
    `hf_...`, `Bearer ...`). Every stored or printed error goes through here: a server may echo the key back."""
    import os

    global _TOKEN
    if _TOKEN is None:
        _TOKEN = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}|\bhf_[A-Za-z0-9]{16,}|(?<=Bearer )[^\s\"',;]{8,}",
                            re.IGNORECASE)
    for value in _SECRETS:
        text = text.replace(value, "[redacted]")
    for name, value in os.environ.items():
        if len(value) >= 8 and any(part in name.upper() for part in _SECRET_NAME) and value in text:
            text = text.replace(value, "[redacted]")
    text = _CREDENTIALS.sub(r"\1[redacted]@", text)  # a user name and password in a URL
    return _TOKEN.sub("[redacted]", text)


def register_secret(value: str) -> None:
    """Redact `value` from every error from now on (for a key held in a variable whose name does not say so)."""
    if len(value) >= 8:
        _SECRETS.add(value)
