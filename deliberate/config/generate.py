"""`generate` and `filter`: deliberative alignment's spec-conditioned sampling and its judge filter."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from deliberate.config.base import Expected, Section


class GenerateConfig(Section):
    backend: Literal["hf", "vllm", "openai"] = "hf"
    """`hf` (batched transformers generation), `vllm` (needs the `vllm` extra and a GPU) or `openai` (a
    stronger teacher behind any OpenAI-compatible API)."""
    teacher: str | None = None
    """The model that writes the reasoning and answers: a model as in `model.name` for `hf`/`vllm`, an API model
    name for `openai`. The recipe's `model` when unset (the model teaches itself, as in the paper)."""
    samples: int = Field(default=4, ge=1)
    """Completions sampled per prompt (k)."""
    samples_by_expected: dict[Expected, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    """Per expected behaviour, a different k, e.g. `{comply: 2}` for fewer samples of safe prompts."""
    samples_by_meta: dict[str, dict[str, Annotated[int, Field(ge=0)]]] = Field(default_factory=dict)
    """Per value of another prompt column, a different k; it wins over `samples_by_expected`. E.g.
    `{kind: {borderline: 3}}` samples the built-in prompts that only sound harmful three times."""
    temperature: float = Field(default=0.7, ge=0.0)
    """Sampling temperature; the k samples need some diversity (0 would make them identical)."""
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    """As `generation.repetition_penalty` (the completion's own tokens only) for the hf backend; vLLM and most
    servers also count the prompt's tokens."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Most tokens per completion, reasoning and answer together; a completion cut off before its answer is
    malformed and dropped by the filter."""
    reasoning_budget: int | None = Field(default=None, ge=1)
    """`hf`: at most this many tokens of reasoning; a block still open then is closed (budget forcing, as in
    s1) and the answer is generated after it. Unset: the teacher must close the block itself."""
    batch_size: int = Field(default=16, ge=1)
    """Completions generated together (`hf`)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Teacher weights dtype for generation; bfloat16 is about 2.6x faster than float32 on a recent CPU."""
    instructions: str | None = None
    """What the system prompt asks after the spec: a file path or the text itself. The built-in instructions
    (reason in <think>...</think>, name the category, quote the rule, choose the style, then answer; with worked
    examples) when unset."""
    few_shot: bool = True
    """Show the teacher worked examples (built in) as earlier conversation turns; never part of the SFT data."""
    prefill: str = "<think>\n"
    """Text the assistant turn starts with (the opening reasoning tag), continued by the teacher; empty for none.
    `{category}` is replaced by the prompt's category id, the one whose spec is in the system prompt, so that the
    reasoning starts by citing it (e.g. `"<think>\nCategory: {category}."`)."""
    base_url: str | None = None
    """Endpoint of the `openai` teacher; the OpenAI API when unset."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the `openai` teacher's API key."""
    max_concurrency: int = Field(default=16, ge=1)
    """Requests in flight at once (`openai`)."""
    timeout: float = Field(default=120.0, gt=0)
    """Seconds per request (`openai`)."""
    max_retries: int = Field(default=6, ge=0)
    """Retries of a failed request (`openai`)."""


class FilterConfig(Section):
    threshold: float = Field(default=7.0, ge=0, le=10)
    """Keep a completion when its minimum judge score over `judge.repeats` judgments is at least this (0-10)."""
    judge_sees_reasoning: bool = True
    """Show the judge the reasoning as well as the answer (the paper's SFT filter); False judges answers only."""
    keep_per_prompt: int = Field(default=1, ge=0)
    """Keep at most this many passing completions per prompt (the best-scored first); 0 keeps all."""
    require_citation: bool = False
    """Also drop completions whose reasoning does not cite the prompt's category."""
