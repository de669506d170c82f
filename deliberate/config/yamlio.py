"""YAML loading with YAML 1.2 scalars.

PyYAML implements YAML 1.1, whose implicit typing surprises people writing recipes: `1e-5` stays a string
(1.1 floats need a dot), `no`/`off`/`y` become booleans, `010` is octal and `1:30` is a base-60 integer. We use
YAML 1.2 core-schema resolution instead: `true`/`false` only, decimal/0o/0x integers, floats with or without a
dot, `.inf`, `.nan`, `null`/`~`.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml

from deliberate.errors import DeliberateError, did_you_mean


class Yaml12Loader(yaml.SafeLoader):
    pass


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in {
        "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}

_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789"))


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    value = loader.construct_scalar(node)
    if value.startswith("0o"):
        return int(value[2:], 8)
    if value.startswith("0x"):
        return int(value[2:], 16)
    return int(value, 10)


def _construct_float(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    value = loader.construct_scalar(node).lower()
    if value.endswith(".inf"):
        return float("-inf") if value.startswith("-") else float("inf")
    if value == ".nan":
        return float("nan")
    return float(value)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    """A mapping, where a key given twice is an error (PyYAML keeps the last silently: `sft:` twice loses the
    first section)."""
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, str | int | float | bool) and key in seen:
            first = seen[key].start_mark.line + 1
            raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice (also on line {first})",
                                                    key_node.start_mark)
        seen[key] = key_node
    return loader.construct_mapping(node)


Yaml12Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
Yaml12Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        raise DeliberateError(f"{where}: malformed YAML: {problem}") from None


def load_yaml_file(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DeliberateError(f"{path}: no such file")
    return parse_yaml(read_text(path), str(path))


def read_text(path: str | Path) -> str:
    """A text file's contents; a file that is not UTF-8 or cannot be read is a one-line error."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DeliberateError(f"{path}: not UTF-8 text (byte {e.start} is 0x{e.object[e.start]:02x}); save it as "
                              "UTF-8") from None
    except OSError as e:
        raise DeliberateError(f"{path}: cannot be read: {e.strerror}") from None


def _model_at(annotation: Any):
    """The pydantic model an annotation holds, through `X | None`, `list[X]` and `dict[str, X]`, or None."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _model_at(arg)) is not None:
            return found
    return None


def _field_names(cls: type, loc: tuple) -> list[str]:
    """Names of the fields allowed beside the unknown one at `loc`, for the error message."""
    model = cls
    for part in loc[:-1]:
        if not isinstance(part, str):  # a list index or a dict key: the item's model is already `model`
            continue
        field = model.model_fields.get(part)
        model = _model_at(getattr(field, "annotation", None))
        if model is None:
            return []
    return list(model.model_fields)


def field_path(loc: tuple) -> str:
    """`dpo.stages[1].beta` for the loc ("dpo", "stages", 1, "beta")."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def describe_errors(cls: type, error) -> list[str]:
    """One `field: what is wrong` line per error of a pydantic ValidationError raised by `cls`."""
    parts = []
    for err in error.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = _field_names(cls, loc)
            listed = f"expected one of: {', '.join(allowed)}" if allowed else "not a field here"
            msg = f"unknown field ({did_you_mean(loc[-1], allowed)}{listed})"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
                msg += f", got {err['input']!r}"
        parts.append(f"{field_path(loc)}: {msg}" if loc else msg)
    return parts


def validate(cls: type, data: Any, source: str):
    """Validate `data` against the pydantic model `cls`; errors name the source, the field and what was expected."""
    from pydantic import ValidationError

    if data is None:
        data = {}
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        parts = describe_errors(cls, e)
        more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
        raise DeliberateError(f"{source}: " + "; ".join(parts[:3]) + more) from None
