"""The `deliberate` command line: `app.py` (the Typer app and what every verb shares), `stages.py` (the stage
verbs) and `tools.py` (answer, judge, data, spec, model, recipe)."""

from deliberate.cli import stages, tools  # noqa: F401  (registers the commands)
from deliberate.cli.app import app

__all__ = ["app"]
