"""The `deliberate` command line (`deliberate.cli.app`)."""

from deliberate.cli.app import app

__all__ = ["app"]
