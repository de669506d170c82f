"""`data`: where the prompts come from and how their columns are read."""

from __future__ import annotations

from pydantic import Field, model_validator

from deliberate.config.base import Expected, Section, check_name


class ColumnMap(Section):
    prompt: str = "prompt"
    """Column holding the user prompt."""
    category: str | None = None
    """Column holding the safety category (matched against the spec's ids, titles and aliases)."""
    expected: str | None = None
    """Column holding the expected behaviour or a safe/unsafe label (mapped through `label_map`)."""
    id: str | None = None
    """Column holding a stable row id; row numbers are used when unset."""


class DataSource(Section):
    source: str = "builtin:demo"
    """`builtin:demo` (the project's demo prompts), a local .csv/.json/.jsonl/.parquet file (optionally .gz),
    an http(s) URL of such a file (downloaded once into the cache), or a Hugging Face dataset id."""
    subset: str | None = None
    """Hub datasets only: the configuration name, for datasets that have several."""
    split: str | None = None
    """Hub datasets only: the split to read (`train` when unset). To pick rows of a file or of `builtin:demo` by
    a column, use `where` (e.g. `where: {split: heldout}`)."""
    revision: str | None = Field(default=None, exclude_if=lambda v: v is None)  # unset: not in fingerprints
    """Hub datasets only: the branch, tag or commit to read, so that a run can be repeated on the same rows
    (recorded in every stage's provenance.json)."""
    columns: ColumnMap = Field(default_factory=ColumnMap)
    """Which columns hold what. For `builtin:demo` and files with the standard names this can stay unset."""
    category: str | None = None
    """One category for every row (e.g. `illicit_behavior` for AdvBench), when there is no category column."""
    expected: Expected | None = None
    """One expected behaviour for every row (e.g. `refuse` for a set of harmful prompts)."""
    category_map: dict[str, str] = Field(default_factory=dict)
    """Rename dataset categories to spec categories, e.g. `{"Illegal goods and services": illicit_behavior}`;
    names the spec already knows (ids, titles, aliases) need no entry."""
    label_map: dict[str, Expected] = Field(default_factory=dict)
    """Extra mappings from label values to expected behaviours, on top of the built-in ones (safe -> comply,
    unsafe/harmful -> refuse, ...)."""
    where: dict[str, str | int | bool | list[str | int | bool]] = Field(default_factory=dict)
    """Keep only rows whose column equals the value (or one of the listed values), e.g. `{split: heldout}`."""
    limit: int | None = Field(default=None, ge=1)
    """Keep only the first N rows (after `where`)."""
    sample: int | None = Field(default=None, ge=1, exclude_if=lambda v: v is None)
    """Keep N rows drawn at random (after `where`), the same N on every machine and for every seed: rows are
    ordered by a hash of their prompt. For a large file whose first rows are not typical of it."""


class MixSource(DataSource):
    """One source of a `data.mix`: a data section of its own, with a name that prefixes its prompts' ids."""

    name: str
    """Prefix of the ids of this source's prompts (`<name>:<id>`), and its name in the counts."""

    @model_validator(mode="after")
    def _named(self) -> MixSource:
        check_name(self.name)
        return self


class DataConfig(DataSource):
    mix: list[MixSource] = Field(default_factory=list, exclude_if=lambda v: not v)
    """Several sources read as one prompt set, e.g. harmful prompts from one file and safe ones from another,
    each with its own `source`, `columns`, `expected`, `category_map`, `where`, `limit` / `sample`. A prompt that
    two sources share is kept once (the first). When set, the section's own fields must keep their defaults."""
    exclude: list[str] = Field(default_factory=list, exclude_if=lambda v: not v)
    """Benchmarks (names, as `eval.benchmarks`) or prompt files whose prompts are dropped from these prompts
    (compared with case and spacing ignored), so that a model is never trained on what it is evaluated on.
    Benchmarks are read from their mirrors in `eval.datasets_dir` when it holds them."""

    @model_validator(mode="after")
    def _mix_or_source(self) -> DataConfig:
        if self.mix:
            own = [f for f in self.model_fields_set - {"mix", "exclude"}
                   if getattr(self, f) != DataSource.model_fields[f].get_default(call_default_factory=True)]
            if own:
                raise ValueError(f"data.mix is set, so data.{sorted(own)[0]} would not be used; set it on a "
                                 "source of the mix")
            names = [m.name for m in self.mix]
            if len(set(names)) != len(names):
                raise ValueError("data.mix: two sources share a name")
        return self
