"""How a model samples (`SamplingConfig`: the `generation` section, and the base of `generate` and `pairs`), and
how a stage talks to an OpenAI-compatible API (`ApiConfig`: the judge's and the teacher's)."""

from __future__ import annotations

from pydantic import Field

from deliberate.config.base import Dtype, Section


class SamplingConfig(Section):
    """`generation`: how `answer` and `eval` generate answers (greedy by default)."""

    max_new_tokens: int = Field(default=256, ge=1)
    """Most tokens generated per answer (reasoning and answer together); generation stops earlier at the
    model's end-of-sequence token."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature; 0 means greedy decoding."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = Field(default=0, ge=0)
    """Keep only the k most likely tokens; 0 disables top-k filtering."""
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    """Above 1, makes tokens the answer already produced less likely (against loops). Only the answer's own
    tokens count, not the prompt's: a prompt that shows refusals (worked examples) does not make refusing
    unlikely. (vLLM and most API servers also count the prompt's tokens.)"""
    batch_size: int = Field(default=16, ge=1)
    """Prompts generated together, sorted by system prompt and length so batches share prefixes and waste little
    padding. On the CPU decode loop (llama-family models) a row that ends makes room for the next prompt, so
    batches stay full."""
    dtype: Dtype | None = None
    """Weights dtype while generating; `model.dtype` when unset. bfloat16 is about 2.6x faster than float32 on
    a recent CPU."""

    def sampling(self) -> SamplingConfig:
        """The sampling fields alone (what determines a sample), from a section that extends them."""
        return SamplingConfig(**{name: getattr(self, name) for name in SamplingConfig.model_fields})


class ApiConfig(Section):
    """How a stage reaches an OpenAI-compatible API (the OpenAI API, a vLLM server, ...)."""

    base_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+")
    """Endpoint, e.g. `http://127.0.0.1:8000/v1` for a vLLM server; the OpenAI API when unset."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable that holds the API key. The key itself never goes in a recipe."""
    max_concurrency: int = Field(default=16, ge=1)
    """Requests in flight at once."""
    timeout: float = Field(default=60.0, gt=0)
    """Seconds per request."""
    max_retries: int = Field(default=6, ge=0)
    """Retries of a failed request (429, 5xx, timeout), with exponential backoff."""
    backoff_base: float = Field(default=1.0, gt=0)
    """Seconds of the first retry's backoff; it doubles per retry (with full jitter), up to `backoff_max`."""
    backoff_max: float = Field(default=60.0, gt=0)
    """Longest backoff between retries, in seconds (a longer Retry-After is still honoured)."""
