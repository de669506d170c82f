"""The policy specification: categories, response styles, and `spec_for(category)`.

A spec is a YAML file (see `resources/default_spec.yaml`). `spec_for(category)` renders what deliberative
alignment puts in the model's system prompt: the overview, a summary of every category and every response
style, and the granular policy of the one relevant category only.
"""

from __future__ import annotations

import re
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deliberate.config.yamlio import load_yaml_file, validate
from deliberate.errors import DeliberateError, closest

StyleName = Literal["comply", "refuse", "safe_complete"]
DEFAULT_SPEC = "default"
_WORD = re.compile(r"[a-z]{4,}")  # content words, roughly: short function words match everything


def normalise(name: str) -> str:
    """'Illicit behaviour' / 'illicit-behavior' / 'ILLICIT_BEHAVIOUR' all normalise alike."""
    key = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    return key.replace("behaviour", "behavior")


class Style(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str
    guidelines: list[str] = Field(default_factory=list)


class Category(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str
    definition: str
    allowed: list[str] = Field(default_factory=list)
    disallowed: list[str] = Field(default_factory=list)
    style: StyleName = Field(description="How a request that falls under `disallowed` is answered.")
    aliases: list[str] = Field(default_factory=list, description="Other names datasets use for it.")


class PolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: str = "1"
    overview: str
    styles: dict[StyleName, Style]
    categories: list[Category] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> PolicySpec:
        missing = {c.style for c in self.categories} - set(self.styles)
        if missing:
            raise ValueError(f"categories use styles not defined under 'styles': {sorted(missing)}")
        ids = [c.id for c in self.categories]
        if doubled := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"category ids given more than once: {', '.join(doubled)}")
        seen: dict[str, str] = {}
        for c in self.categories:
            for name in [c.id, c.title, *c.aliases]:
                key = normalise(name)
                if key in seen and seen[key] != c.id:
                    raise ValueError(f"name '{name}' is used by both '{seen[key]}' and '{c.id}'")
                seen[key] = c.id
        return self

    @cached_property
    def _index(self) -> dict[str, Category]:
        return {normalise(n): c for c in self.categories for n in [c.id, c.title, *c.aliases]}

    @property
    def category_ids(self) -> list[str]:
        return [c.id for c in self.categories]

    def find(self, name: str) -> Category | None:
        """The category called `name` (its id, title or an alias, in any case or spelling), or None."""
        return self._index.get(normalise(name))

    def expected_style(self, name: str) -> str | None:
        """How a request of category `name` is answered: `comply` for `safe`, else the category's style (None for
        a name the spec does not know)."""
        found = self.find(name)
        if found is None:
            return None
        return "comply" if found.id == "safe" else found.style

    def category(self, name: str) -> Category:
        found = self.find(name)
        if found is None:
            match = closest(normalise(name), self._index)
            hint = f"did you mean '{self._index[match].id}'? " if match else ""
            raise DeliberateError(
                f"unknown category '{name}' in spec '{self.name}'; {hint}known: {', '.join(self.category_ids)}"
            )
        return found

    def render_overview(self) -> str:
        lines = [f"# Safety policy: {self.name} (version {self.version})", "", self.overview.strip(), ""]
        lines += ["## Response styles"]
        for name, style in self.styles.items():
            lines.append(f"- {name}: {style.description}")
            lines += [f"  - {g}" for g in style.guidelines]
        lines += ["", "## Categories"]
        for c in self.categories:
            lines.append(f"- {c.id} ({c.title}): {c.definition} Disallowed requests: {c.style}.")
        return "\n".join(lines)

    def render_category(self, name: str) -> str:
        c = self.category(name)
        lines = [f"## Policy for this request's category: {c.id} ({c.title})", "", c.definition, ""]
        lines += ["Allowed (answer with the comply style):"] + [f"- {a}" for a in c.allowed or ["(nothing)"]]
        lines += ["", f"Disallowed (answer with the {c.style} style):"]
        lines += [f"- {d}" for d in c.disallowed or ["(nothing)"]]
        return "\n".join(lines)

    def spec_for(self, category: str) -> str:
        """The overview of all categories and styles plus the granular policy of `category` only."""
        return self.render_overview() + "\n\n" + self.render_category(category)

    def deciding_rule(self, category: str, prompt: str, style: str) -> str | None:
        """The rule of `category` that decides a request answered in `style`: among its allowed rules (for
        `comply`) or its disallowed ones, the one sharing the most words with the prompt (the first on a tie);
        None when the category has no such rule."""
        found = self.find(category)
        if found is None:
            return None
        rules = found.allowed if style == "comply" else found.disallowed
        words = set(_WORD.findall(prompt.lower()))
        scored = [(len(words & set(_WORD.findall(r.lower()))), -i, r) for i, r in enumerate(rules)]
        return max(scored)[2].rstrip(".") if scored else None

    def cited_categories(self, text: str) -> list[str]:
        """Ids of the categories a text names by id or title (any spelling), in order of first mention.

        Aliases are left out: many are ordinary words ("abuse", "none") that would count as citations.
        """
        flat = "_" + normalise(text) + "_"
        found = []
        for c in self.categories:
            positions = [flat.find(f"_{normalise(n)}_") for n in {c.id, c.title}]
            positions = [p for p in positions if p >= 0]
            if positions:
                found.append((min(positions), c.id))
        return [cid for _, cid in sorted(found)]

    def render_full(self) -> str:
        return "\n\n".join([self.render_overview()] + [self.render_category(c.id) for c in self.categories])


def load_spec(source: str | Path = DEFAULT_SPEC) -> PolicySpec:
    """Load a spec from a YAML file, or the built-in one for 'default'."""
    if str(source) == DEFAULT_SPEC:
        text_path = resources.files("deliberate.resources").joinpath("default_spec.yaml")
        with resources.as_file(text_path) as path:
            return validate(PolicySpec, load_yaml_file(path), "default spec")
    path = Path(source)
    return validate(PolicySpec, load_yaml_file(path), str(path))
