"""`generation`: how answers are sampled (answer, eval)."""

from __future__ import annotations

from pydantic import Field

from deliberate.config.base import Section


class GenerationConfig(Section):
    max_new_tokens: int = Field(default=256, ge=1)
    """Most tokens generated per answer; generation stops earlier at the model's end-of-sequence token."""
    temperature: float = Field(default=0.0, ge=0.0)
    """0 means greedy decoding."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    """0 disables top-k filtering."""
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    """Above 1, makes tokens the answer already produced less likely (against loops). Only the answer's own
    tokens count, not the prompt's: a prompt that shows refusals (worked examples) does not make refusing
    unlikely."""
    batch_size: int = Field(default=16, ge=1)
    """Prompts generated together; prompts are sorted by length first so batches waste little padding."""
    seed: int = 0
    """Sampling seed."""
