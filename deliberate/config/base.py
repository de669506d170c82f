"""What every recipe section shares: unknown fields are errors, and field docstrings are the documentation."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

Expected = Literal["comply", "refuse", "safe_complete"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


def check_name(v: str) -> str:
    """A name that becomes a folder and a `stage:` / `merge:` reference."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
        raise ValueError("use letters, digits, '.', '_' and '-'")
    return v
