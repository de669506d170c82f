"""`model`: the model a recipe aligns (a Hub id, a folder, an adapter, or the embedded SmolLM2)."""

from __future__ import annotations

from typing import Literal

from deliberate.config.base import Section


class ModelConfig(Section):
    name: str = "smollm2"
    """A Hugging Face Hub id, a local model folder, a PEFT adapter folder, or `smollm2` (the embedded
    SmolLM2-135M-Instruct)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for a Hub id."""
    base: str | None = None
    """For an adapter folder: the base model to put it on, when the path recorded in the adapter has moved."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; `auto` is bfloat16 on a GPU that supports it and float32 on CPU."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda`, `cuda:1`, ..."""
    trust_remote_code: bool = False
    """Run code shipped with the model. Off unless you trust the model's authors."""
    attn_implementation: str | None = None
    """e.g. `sdpa`, `eager`, `flash_attention_2`; the transformers default when unset."""
