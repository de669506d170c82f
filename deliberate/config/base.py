"""What every recipe section shares: unknown fields are errors, and field docstrings are the documentation.

A section that reuses another's fields with other defaults (the teacher samples at temperature 0.7, answers are
greedy) subclasses it and lists the new defaults in `DEFAULTS`, so that each field is declared and documented
once. Where a field holds a list, one value is read as a one-item list (`--set eval.models=stage:sft`).
"""

from __future__ import annotations

import copy
import re
import types
import typing
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, model_validator

Expected = Literal["comply", "refuse", "safe_complete"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)

    DEFAULTS: ClassVar[dict[str, Any]] = {}
    """Defaults this section gives inherited fields (the field itself, its type and its docs stay the parent's)."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        own = cls.__dict__.get("DEFAULTS")
        if own:
            for name, value in own.items():
                field = copy.copy(cls.model_fields[name])  # the parent's FieldInfo stays as it is
                field.default, field.default_factory = value, None
                cls.model_fields[name] = field
            cls.model_rebuild(force=True)

    @model_validator(mode="before")
    @classmethod
    def _one_value_is_a_list(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        wrapped = {}
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is not None and value is not None and not isinstance(value, list | tuple) \
                    and _list_only(field.annotation):
                value = [value]
            wrapped[name] = value
        return {**data, **wrapped}


def _list_only(annotation: Any) -> bool:
    """True for `list[X]` (or `list[X] | None`), where a lone value can only mean a one-item list."""
    if typing.get_origin(annotation) is list:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(args) == 1 and typing.get_origin(args[0]) is list
    return False


def check_name(v: str) -> str:
    """A name that becomes a folder and a `stage:` / `merge:` reference."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
        raise ValueError("use letters, digits, '.', '_' and '-'")
    return v
