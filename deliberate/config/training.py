"""What the training verbs share (`TrainingOptions`, `DatasetTrainingOptions`), and the `sft` section.

A training section's fields reach TRL's config by name: a field whose name is a field of the TRL config the
stage builds (`SFTConfig`, `DPOConfig`, `KTOConfig`, `GRPOConfig`, `RLOOConfig`) is passed as it is, one named
differently is listed in `TRL_NAMES`, and one that deliberate itself reads (LoRA, what data to train on, our
PPO) is listed in `OWN_FIELDS` and never passed (`services.training.trl_config`). A test checks that every field
is one or the other, so an option cannot silently do nothing.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from deliberate.config.base import Section


class TrainingOptions(Section):
    """Fields every training verb (sft, dpo, rl) shares."""

    TRL_NAMES: ClassVar[dict[str, str]] = {}
    """Fields passed to TRL under another name (ours -> TRL's)."""
    OWN_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "bf16"})
    """Fields deliberate reads itself; they are never passed to TRL as they are."""

    lora: bool = True
    """Train a LoRA adapter (the adapter-disabled model is then the reference where one is needed) or all
    weights. The stage's `model/` folder holds full weights either way (the adapter merged; `adapter/` holds the
    adapter), so later stages, merges and evals read it."""
    lora_r: int = Field(default=16, ge=1)
    """LoRA rank."""
    lora_alpha: int = Field(default=32, ge=1)
    """LoRA scaling (alpha / r multiplies the adapter's update)."""
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the LoRA adapter's input."""
    lora_target_modules: list[str] | str = "all-linear"
    """Modules that get LoRA weights: `all-linear` or a list of module names."""
    bf16: bool | None = None
    """bfloat16 mixed precision: unset means on a GPU that supports it; `true` also on a CPU (about 2.5x faster
    training on a recent x86 CPU with bfloat16 instructions, at bfloat16's precision)."""
    learning_rate: float = Field(default=2e-5, gt=0)
    """Peak learning rate of the policy."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory (large models on a GPU), slower steps."""
    save_steps: int = Field(default=50, ge=1)
    """Optimizer steps between checkpoints (`--resume` continues from the last one)."""
    logging_steps: int = Field(default=5, ge=1)
    """Optimizer steps between loss reports."""


class DatasetTrainingOptions(TrainingOptions):
    """Training on a fixed dataset (sft, dpo): epochs, batches and sequence length, as TRL's trainers take them."""

    num_train_epochs: float = Field(default=2.0, gt=0)
    """Passes over the training data."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 runs `num_train_epochs`."""
    per_device_train_batch_size: int = Field(default=8, ge=1)
    """Examples per device in each forward pass."""
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Batches whose gradients are summed before each optimiser step."""
    max_length: int = Field(default=1024, ge=16)
    """Longest training sequence (prompt and completion) in tokens; longer examples are truncated."""
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """The learning-rate schedule over the training steps (TRL's default: linear decay)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""


class SFTOptions(DatasetTrainingOptions):
    """`sft`: supervised fine-tuning on the judge-filtered, spec-stripped completions (TRL SFTTrainer)."""

    OWN_FIELDS = TrainingOptions.OWN_FIELDS | {"keep_reasoning"}

    keep_reasoning: bool = True
    """Keep the chain of thought in the training target (deliberative alignment) or train on answers only."""
