"""`generate` and `filter`: deliberative alignment's spec-conditioned sampling and its judge filter."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from deliberate.config.base import Expected, Section
from deliberate.config.sampling import ApiConfig, SamplingConfig


class GenerateConfig(SamplingConfig, ApiConfig):
    """`generate`: the teacher's spec-conditioned sampling. The sampling fields are `generation`'s (with
    temperature 0.7 and top_p 0.95, since the k samples need some diversity); the API fields serve the `openai`
    teacher."""

    DEFAULTS = {"temperature": 0.7, "top_p": 0.95, "timeout": 120.0}

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
    reasoning_budget: int | None = Field(default=None, ge=1)
    """`hf`: at most this many tokens of reasoning; a block still open then is closed (budget forcing, as in
    s1) and the answer is generated after it. Unset: the teacher must close the block itself."""
    instructions: str | None = None
    """What the system prompt asks after the spec: a file path or the text itself. The built-in instructions
    (reason in <think>...</think>, name the category, quote the rule, choose the style, then answer; with worked
    examples) when unset."""
    answer_sees_spec: bool | list[Expected] = Field(default=True, exclude_if=lambda v: v is True)  # or styles
    """`hf` with `reasoning_budget`: whether the answer after the closed reasoning is generated with the spec and
    worked examples still in context (true, the default) or from the user's prompt and the reasoning alone (false:
    as the student answers, with no system prompt; the spec reaches the answer through the reasoning's category,
    rule and style). A list of styles keeps the spec for the prompts the spec gives those styles, e.g. `[refuse,
    safe_complete]`: a small teacher copies the worked examples' refusals into answers it should give, and answers
    well without them."""
    few_shot: bool = True
    """Show the teacher worked examples (built in) as earlier conversation turns; never part of the SFT data."""
    @model_validator(mode="after")
    def _budget_fits(self):
        if self.answer_sees_spec is not True and (self.reasoning_budget is None or self.backend != "hf"):
            raise ValueError("answer_sees_spec other than true needs backend hf and a reasoning_budget (the answer is "
                             "generated after the closed reasoning)")
        if self.reasoning_budget is not None and self.reasoning_budget >= self.max_new_tokens:
            raise ValueError(f"reasoning_budget ({self.reasoning_budget}) must be below max_new_tokens "
                             f"({self.max_new_tokens}), which also holds the answer")
        return self

    prefill: str = "<think>\n"
    """Text the assistant turn starts with (the opening reasoning tag), continued by the teacher; empty for none.
    Placeholders: `{category}` (the prompt's category id, the one whose spec is in the system prompt), `{style}`
    (the response style the spec gives the prompt: comply for a prompt to answer, else its category's style) and
    `{rule}` (the rule of that category that decides it: the allowed or disallowed rule sharing the most words
    with the prompt). A scaffold for a teacher too weak to find them itself: `"<think>\nCategory: {category}.
    The policy says: \"{rule}\". Style: {style}."` has every reasoning open with the category, the quoted rule
    and the style, and the teacher continues from there and answers."""


class FilterConfig(Section):
    threshold: float = Field(default=7.0, ge=0, le=10)
    """Keep a completion when its minimum judge score over `judge.repeats` judgments is at least this (0-10)."""
    judge_sees_reasoning: bool = True
    """Show the judge the reasoning as well as the answer (the paper's SFT filter); False judges answers only."""
    keep_per_prompt: int = Field(default=1, ge=0)
    """Keep at most this many passing completions per prompt (the best-scored first); 0 keeps all."""
    require_citation: bool = False
    """Also drop completions whose reasoning does not cite the prompt's category."""
