"""`judge`: the judge every stage uses (filtering, pair ranking, RL reward and cost, evaluation)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deliberate.config.base import Section


class JudgeConfig(Section):
    backend: Literal["rules", "openai", "hf", "classifier"] = "rules"
    """`rules` (offline refusal detection), `openai` (any OpenAI-compatible server), `hf` (a local generative
    model) or `classifier` (a local reward/cost model)."""
    model: str | None = None
    """The judge model: an API model name for `openai`, a folder or Hub id for `hf` and `classifier`."""
    base_url: str | None = None
    """Endpoint for `openai` (e.g. a vLLM server); the OpenAI API when unset."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable that holds the API key. The key itself never goes in a recipe."""
    max_concurrency: int = Field(default=16, ge=1)
    """Requests in flight at once."""
    timeout: float = Field(default=60.0, gt=0)
    """Seconds per request."""
    max_retries: int = Field(default=6, ge=0)
    """Retries of a failed request (429, 5xx, timeout), with exponential backoff."""
    repeats: int = Field(default=1, ge=1)
    """Times each item is judged (k); pointwise repeats are aggregated by `aggregate`."""
    aggregate: Literal["min", "mean"] = "min"
    """How repeated pointwise scores combine: `min` is the deliberative-alignment filter."""
    hide_reasoning: bool = True
    """Judge only the final answer, with the chain of thought removed."""
    temperature: float = Field(default=0.0, ge=0)
    """Sampling temperature of a generative judge."""
    max_tokens: int = Field(default=512, ge=16)
    """Longest judge output (a generative judge's JSON verdict and rationale)."""
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"
    """How the openai backend asks for JSON: a strict JSON schema, JSON mode, or the prompt alone (for servers
    that support neither). The output is parsed strictly in every case."""
    backoff_base: float = Field(default=1.0, gt=0)
    """Seconds of the first retry's backoff; it doubles per retry (with full jitter), up to `backoff_max`."""
    backoff_max: float = Field(default=60.0, gt=0)
    """Longest backoff between retries, in seconds (a longer Retry-After is still honoured)."""
    cache: str | None = None
    """Judgment cache (SQLite file); `~/.cache/deliberate/judge_cache.sqlite` when unset, `none` to disable."""
    higher_is_better: bool = True
    """For a classifier judge: True for a reward model, False for a cost model."""
    max_calls: int | None = Field(default=None, ge=0)
    """Budget: the most judgments one command may ask the backend for (cache hits are free). A batch that would
    go over it is not sent; the command stops with an error, keeping what is already judged (and cached)."""
