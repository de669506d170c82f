"""`--set a.b.c=value` overrides, applied to a recipe's mapping before it is validated."""

from __future__ import annotations

from typing import Any

from deliberate.config.yamlio import parse_yaml
from deliberate.errors import DeliberateError


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` assignment to nested dicts, reading the value as YAML 1.2."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DeliberateError(f"--set '{assignment}': expected section.field=value")
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise DeliberateError(f"--set '{assignment}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
