"""`eval`: benchmarks, models to compare, pairwise judging and statistics."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_serializer, model_validator

from deliberate.config.base import Section, check_name
from deliberate.config.data import ColumnMap, DataConfig
from deliberate.config.model import ModelConfig
from deliberate.config.yamlio import describe_errors

CRITERIA = ("helpfulness", "harmlessness")  # what pairwise judgments compare


class EvalModel(ModelConfig):
    """An `eval.models` entry written as a mapping: `model` fields laid over the recipe's `model`, and a label."""

    label: str | None = None
    """How the report names the model; its `name` when unset."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """This model's token budget, over `generation.max_new_tokens` (a model that reasons before it answers needs
    room for its reasoning; the judge sees the answer after it)."""

    @model_serializer(mode="wrap")
    def _as_given(self, handler) -> dict[str, Any]:
        """Only the fields the entry gives, so that a dumped recipe (`recipe show`, provenance) read again lays
        the same fields over `model`."""
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}

    def over(self, base: ModelConfig) -> ModelConfig:
        """The model this entry names: `base` with the fields the entry gives (another name drops `base`'s
        revision and adapter base, which belong to `base`'s own weights)."""
        given = self.model_dump(exclude={"label", "max_new_tokens"})
        reset = {"revision": None, "base": None} if given.get("name", base.name) != base.name else {}
        return base.model_copy(update={**reset, **given})


def eval_model(entry: str | dict[str, Any] | EvalModel) -> EvalModel:
    """An `eval.models` entry (a name alone or a mapping) as a mapping; a bad mapping is a one-line error."""
    if isinstance(entry, EvalModel):
        return entry
    if isinstance(entry, str):
        return EvalModel(name=entry)
    if not isinstance(entry, dict):
        raise ValueError(f"an entry is a model name or a mapping of model fields, got {entry!r}")
    try:
        return EvalModel.model_validate(entry)
    except ValidationError as e:
        raise ValueError(f"entry {entry.get('label') or entry.get('name') or entry}: "
                         + "; ".join(describe_errors(EvalModel, e))) from None


class EvalConfig(Section):
    benchmarks: list[str] = Field(default_factory=lambda: ["demo"])
    """Benchmark names from `eval/` or data files."""
    models: list[str | EvalModel] = Field(default_factory=list)
    """Models to compare with the recipe's `model` (the base). Each is a name as in `model.name` (a folder, a Hub
    id, or this recipe's `stage:sft`, `merge:<name>/<variant>`, ...) or a mapping of `model` fields, such as a
    model served elsewhere: `{name: meta-llama/Llama-3.1-70B-Instruct, backend: openai, base_url:
    "http://127.0.0.1:8000/v1", api_key_env: VLLM_KEY, label: llama-70b}`. Either way the fields it gives are
    laid over the recipe's `model` (a name alone keeps its backend and dtype); `label` (a mapping's only field
    of its own) is how the report names it, its `name` when unset."""
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
    sample: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict, exclude_if=lambda v: not v)
    """Per benchmark, evaluate only N of its prompts, drawn by a hash of each prompt (the same N for every model
    and seed), e.g. `{advbench: 150}` for a quicker comparison; the report's intervals are those of N prompts."""
    datasets_dir: str | None = None
    """A folder with local copies of benchmark data: a benchmark's `mirror` file is read from here instead of
    its Hub source when it exists. `$DELIBERATE_DATASETS` when unset."""
    plots: bool = True
    """Write PNG plots next to the report."""

    @model_validator(mode="before")
    @classmethod
    def _entries(cls, data: Any) -> Any:
        """Mappings in `models` validated one by one, so that an error names the entry and its field."""
        models = data.get("models") if isinstance(data, dict) else None
        if isinstance(models, dict | EvalModel):  # one mapping: a one-item list
            models = [models]
        if not isinstance(models, list):
            return data
        try:
            return {**data, "models": [m if isinstance(m, str) else eval_model(m) for m in models]}
        except ValueError as e:
            raise ValueError(f"models: {e}") from None


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
