"""`judge`: the judge every stage uses (filtering, pair ranking, RL reward and cost, evaluation)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deliberate.config.base import Dtype
from deliberate.config.sampling import ApiConfig


class JudgeConfig(ApiConfig):
    """The judge. The API fields (`base_url`, `api_key_env`, retries, ...) apply to the `openai` backend;
    `max_concurrency` is also the batch size of the local `hf` and `classifier` backends."""

    backend: Literal["rules", "openai", "hf", "classifier", "guard"] = "rules"
    """`rules` (offline refusal detection), `openai` (any OpenAI-compatible server), `hf` (a local generative
    model), `classifier` (a local reward/cost model) or `guard` (a safety guard: Llama Guard 3, WildGuard,
    ShieldGemma, or one trained by `deliberate guard train`)."""
    model: str | None = None
    """The judge model: an API model name for `openai`, a folder or Hub id for `hf`, `classifier` and `guard`."""
    dtype: Dtype = "bfloat16"
    """Weights dtype of a local generative judge (`hf`, and a downloaded guard): bfloat16 is about 2.6x faster
    than float32 on a recent CPU, and the default on GPUs. (A trained guard keeps the dtype it was trained in.)"""
    guard_format: Literal["auto", "deliberate", "llama-guard-3", "wildguard", "shieldgemma"] = "auto"
    """`guard` backend: the guard's prompt and output format. `auto` reads it from the model: a folder written
    by `deliberate guard train` is `deliberate`; otherwise the model's name decides (llama-guard-3, wildguard,
    shieldgemma)."""
    guard_categories: dict[str, str] = {}
    """`guard` backend: the guard's category codes mapped to the spec's category ids (e.g. `S11: self_harm`).
    For the default spec the Llama Guard 3 taxonomy is mapped already; a code mapped to nothing leaves the
    category unknown (its prompt is then treated as one to refuse)."""
    repeats: int = Field(default=1, ge=1)
    """Times each item is judged (k); pointwise repeats are aggregated by `aggregate`."""
    aggregate: Literal["min", "mean"] = "min"
    """How repeated pointwise scores combine: `min` is the deliberative-alignment filter."""
    hide_reasoning: bool = True
    """`deliberate judge`: judge only the final answer, with the chain of thought removed. (Each stage decides
    for itself: the filter's `judge_sees_reasoning`, pairs' `judge_sees_reasoning`, the RL reward never sees
    the reasoning, eval judges the final answer.)"""
    temperature: float = Field(default=0.0, ge=0)
    """Sampling temperature of a generative judge."""
    deterministic: bool | None = None
    """Whether asking again gives the same judgment; a deterministic judge is asked once per item (per order of
    a pair), whatever `repeats` or `eval.pairwise_repeats` say. Unset: rules, classifier, guard and hf (greedy)
    are, openai is at temperature 0. Set `false` for an API whose temperature-0 answers still vary and should
    be sampled `repeats` times."""
    max_tokens: int = Field(default=512, ge=16)
    """Longest judge output (a generative judge's JSON verdict and rationale)."""
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"
    """How the openai backend asks for JSON: a strict JSON schema, JSON mode, or the prompt alone (for servers
    that support neither). The output is parsed strictly in every case."""
    cache: str | None = None
    """Judgment cache (SQLite file); `~/.cache/deliberate/judge_cache.sqlite` when unset, `none` to disable."""
    higher_is_better: bool = True
    """For a classifier judge: True for a reward model, False for a cost model."""
    max_failures: float = Field(default=0.0, ge=0, le=1)
    """The fraction of its judgments a stage (`judge`, `filter`, `pairs`, `eval`) may lose to failures and still
    write its outputs; with a served model (`model.backend: openai`), failed answers of `answer`, `pairs` and
    `eval` count too. Beyond it the stage writes what it has to `<stage folder>/incomplete/`, leaves the
    earlier outputs as they were and exits with code 3; 0 (the default) allows none."""
    max_calls: int | None = Field(default=None, ge=0)
    """Budget: the most judgments one command may ask the backend for (cache hits are free). A batch that would
    go over it is not sent; the command stops with an error, keeping what is already judged (and cached)."""
