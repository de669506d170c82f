"""What the training verbs share (`TrainingOptions`), and `sft`."""

from __future__ import annotations

from pydantic import Field

from deliberate.config.base import Section


class TrainingOptions(Section):
    """Fields every training verb (sft, dpo, rl) shares."""

    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    lora_target_modules: list[str] | str = "all-linear"
    """Modules that get LoRA weights: `all-linear` or a list of module names."""
    bf16: bool | None = None
    """bfloat16 mixed precision: unset means on a GPU that supports it; `true` also on a CPU (about 2.5x faster
    training on a recent x86 CPU with bfloat16 instructions, at bfloat16's precision)."""
    logging_steps: int = Field(default=5, ge=1)
    """Optimizer steps between loss reports."""


class SFTConfig(TrainingOptions):
    learning_rate: float = Field(default=2e-5, gt=0)
    num_train_epochs: float = Field(default=2.0, gt=0)
    per_device_train_batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Batches whose gradients are summed before each optimiser step."""
    max_length: int = Field(default=1024, ge=16)
    """Longest training sequence in tokens; longer examples are truncated."""
    lora: bool = True
    """Train a LoRA adapter (True) or all weights (False)."""
    keep_reasoning: bool = True
    """Keep the chain of thought in the training target (deliberative alignment) or train on answers only."""
    save_merged: bool = False
    """With LoRA, also save the adapter merged into the base weights (`sft/merged`)."""
    save_steps: int = Field(default=50, ge=1)
    """Optimizer steps between checkpoints (`sft --resume` continues from the last one)."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 runs `num_train_epochs`."""
