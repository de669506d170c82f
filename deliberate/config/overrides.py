"""`--set a.b.c=value` overrides, applied to a recipe's mapping before it is validated.

A key is a path of field names, each optionally followed by list indices: `sft.learning_rate`,
`dpo.stages[1].beta`, `merge.merges[0].alphas`. The value is read as YAML 1.2 (`1e-4` is a float, `[0.1, 0.05]`
a list, `{a: 1}` a mapping); text holding `: `, `{`, `[` or `#` must be quoted. Sections that are not in the
recipe yet are created; a list item must already exist (in the recipe or the file it extends).
"""

from __future__ import annotations

import re
from typing import Any

from deliberate.config.yamlio import parse_yaml
from deliberate.errors import DeliberateError

_STEP = re.compile(r"([^\[\]]+)((?:\[-?\d+\])*)$")  # a field or mapping key, then list indices


def override_path(key: str, assignment: str) -> list[str | int]:
    """`dpo.stages[1].beta` -> ["dpo", "stages", 1, "beta"]."""
    path: list[str | int] = []
    for piece in key.split("."):
        match = _STEP.match(piece)
        if match is None:
            raise DeliberateError(f"--set '{assignment}': '{piece}' is not a field name or key (a.b.c or a.b[0].c)")
        path.append(match.group(1))
        path += [int(i) for i in re.findall(r"\[(-?\d+)\]", match.group(2))]
    return path


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b[i].c=value` assignment to the nested mapping `data`, reading the value as YAML 1.2."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DeliberateError(f"--set '{assignment}': expected section.field=value")
    path = override_path(key, assignment)
    try:
        value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
    except DeliberateError as e:
        raise DeliberateError(f"{e}; the value is read as YAML, so quote text that holds ': ', '{{', '[' or '#', "
                              f"e.g. --set '{key}=\"<think>\\nCategory: {{category}}.\"'") from None
    node: Any = data
    for depth, part in enumerate(path[:-1]):
        node = _child(node, part, path[depth + 1], path[:depth + 1], assignment)
    _put(node, path[-1], value, path, assignment)


def _where(path: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path))


def _child(node: Any, part: str | int, following: str | int, path: list[str | int], assignment: str) -> Any:
    """The container at `part` of `node`, created (as a mapping) when a named section is missing."""
    if isinstance(part, int):
        _check_index(node, part, path, assignment)
        child = node[part]
    else:
        if not isinstance(node, dict):
            raise DeliberateError(f"--set '{assignment}': {_where(path[:-1])} is a list; give an index, e.g. "
                                  f"{_where(path[:-1])}[0].{part}")
        child = node.get(part)
        if child is None:
            if isinstance(following, int):
                raise DeliberateError(f"--set '{assignment}': {_where(path)} has no items in the recipe; set the "
                                      f"whole list, e.g. --set '{_where(path)}=[...]'")
            child = node[part] = {}
    if not isinstance(child, dict | list):
        raise DeliberateError(f"--set '{assignment}': {_where(path)} is a value, not a section")
    return child


def _put(node: Any, part: str | int, value: Any, path: list[str | int], assignment: str) -> None:
    if isinstance(part, int):
        _check_index(node, part, path, assignment)
    elif not isinstance(node, dict):
        raise DeliberateError(f"--set '{assignment}': {_where(path[:-1])} is a list; give an index")
    node[part] = value


def _check_index(node: Any, index: int, path: list[str | int], assignment: str) -> None:
    where = _where(path[:-1]) if isinstance(path[-1], int) else _where(path)
    if not isinstance(node, list):
        raise DeliberateError(f"--set '{assignment}': {where} is not a list")
    if not -len(node) <= index < len(node):
        raise DeliberateError(f"--set '{assignment}': {where} has {len(node)} item(s), so [{index}] does not exist")
