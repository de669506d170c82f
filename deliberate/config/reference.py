"""The recipe's field reference, generated from the field docstrings: `deliberate recipe fields` and
`docs/recipe.md` (a test keeps that page equal to what this module generates)."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from deliberate.config.recipe import Recipe
from deliberate.errors import DeliberateError, did_you_mean


@dataclass(frozen=True)
class FieldDoc:
    path: str  # e.g. `sft.learning_rate`, `merge.merges[].alphas`
    type: str
    default: str
    doc: str


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: `float | list[float]`, `"dpo" | "kto"`, `ModelConfig`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""
    return json.dumps(value, default=str)


def _sections(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section a field holds (a section, or a list of them), and whether it is a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], True
    if origin in (typing.Union, types.UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if models:
            return models[0], False
    return None, False


def fields_of(model: type[BaseModel], prefix: str = "") -> list[FieldDoc]:
    """Every field of `model` and of the sections inside it, depth first."""
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        inner, many = _sections(field.annotation)
        doc = " ".join((field.description or "").split())
        if inner is not None:
            out.append(FieldDoc(path + ("[]" if many else ""), type_name(field.annotation), _default(field), doc))
            out += fields_of(inner, f"{path}{'[]' if many else ''}.")
        else:
            out.append(FieldDoc(path, type_name(field.annotation), _default(field), doc))
    return out


def reference(section: str | None = None) -> list[FieldDoc]:
    """The reference of the whole recipe, or of one section (`sft`, `dpo`, `judge`, ...)."""
    rows = fields_of(Recipe)
    if section is None:
        return rows
    top = list(Recipe.model_fields)
    if section not in top:
        raise DeliberateError(f"recipe: no section '{section}'; {did_you_mean(section, top)}sections: {', '.join(top)}")
    return [r for r in rows if r.path == section or r.path.startswith((f"{section}.", f"{section}[]"))]


def markdown() -> str:
    """docs/recipe.md: the top-level fields, then one table per section."""
    lines = ["# Recipe reference", "",
             "Generated from the field docstrings in `deliberate/config/` by `deliberate recipe fields --markdown`; "
             "do not edit by hand. Any field can be set in a recipe file or with `--set section.field=value` (list "
             "items as `section.list[i].field`).", ""]
    scalars = [name for name, f in Recipe.model_fields.items() if _sections(f.annotation)[0] is None]
    lines += _table("Top level", "", [r for name in scalars for r in reference(name)])
    for name, field in Recipe.model_fields.items():
        if name not in scalars:
            lines += _table(f"`{name}`", field.description or "", reference(name)[1:])
    return "\n".join(lines)


def _table(title: str, text: str, rows: list[FieldDoc]) -> list[str]:
    out = [f"## {title}", ""] + ([" ".join(text.split()), ""] if text else [])
    out += ["| field | type | default | description |", "|---|---|---|---|"]
    for r in rows:
        cells = [f"`{r.path}`", r.type.replace("|", "\\|"), f"`{r.default}`" if r.default else "",
                 r.doc.replace("|", "\\|")]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]
