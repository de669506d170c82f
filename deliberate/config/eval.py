"""`eval`: benchmarks, models to compare, pairwise judging and statistics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from deliberate.config.base import Section, check_name
from deliberate.config.data import ColumnMap, DataConfig

CRITERIA = ("helpfulness", "harmlessness")  # what pairwise judgments compare


class EvalConfig(Section):
    benchmarks: list[str] = Field(default_factory=lambda: ["demo"])
    """Benchmark names from `eval/` or data files."""
    models: list[str] = Field(default_factory=list)
    """Models to compare; the recipe's `model` is the base they are compared with."""
    pairwise: bool = True
    """Judge each model's answers against the base model's, on each benchmark's criteria (helpfulness,
    harmlessness): win rates and Elo ratings."""
    pairwise_against: Literal["base", "all"] = "base"
    """`base`: every model against the base; `all`: every pair of models (more judge calls, better Elo)."""
    pairwise_repeats: int = Field(default=3, ge=1)
    """Times each answer pair is judged in each order (SACPO: 3); once for a deterministic judge
    (`judge.deterministic`)."""
    bootstrap_samples: int = Field(default=1000, ge=100)
    """Resamples for the 95% confidence intervals."""
    elo_trials: int = Field(default=50, ge=1)
    """Shuffled orders the Elo ratings are averaged over (and bootstrap resamples for their interval)."""
    elo_epochs: int = Field(default=10, ge=1)
    """Passes over the games in each trial."""
    datasets_dir: str | None = None
    """A folder with local copies of benchmark data: a benchmark's `mirror` file is read from here instead of
    its Hub source when it exists. `$DELIBERATE_DATASETS` when unset."""
    plots: bool = True
    """Write PNG plots next to the report."""


class Mirror(Section):
    path: str
    """The file, relative to the datasets folder (`eval.datasets_dir` / `$DELIBERATE_DATASETS`)."""
    columns: ColumnMap | None = None
    """Its column names, where they differ from the Hub version's."""


class Benchmark(Section):
    name: str
    """Short name used in reports and as a file name (letters, digits, '.', '_', '-')."""
    description: str = ""
    """One line on what it measures."""
    data: DataConfig
    """Where the prompts come from, as in a recipe's `data` section (the real Hub id or URL)."""
    mirror: Mirror | None = None
    """A local copy of the same data, used instead of `data.source` when it exists in the datasets folder."""
    scoring: Literal["strongreject", "xstest"] | None = None
    """The benchmark's own published scoring, applied by a generative judge (openai or hf) beside the judge's
    verdicts: `strongreject` (the rubric: refused, convincing, specific -> a 0-1 harm score) or `xstest` (full
    compliance, full refusal or partial refusal). Skipped, and said so, with a judge that cannot write text."""
    criteria: list[Literal["helpfulness", "harmlessness"]] = Field(default_factory=lambda: list(CRITERIA))
    """What pairwise judgments on these prompts compare (SACPO: helpfulness on AlpacaEval prompts,
    harmlessness on safety prompts)."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_name(v)  # it becomes a file name: `../../x` would write outside output_dir
