"""What the training verbs share (`TrainingOptions`, `DatasetTrainingOptions`), and the `sft` section.

A training section's fields reach TRL's config by name: a field whose name is a field of the TRL config the
stage builds (`SFTConfig`, `DPOConfig`, `KTOConfig`, `GRPOConfig`, `RLOOConfig`) is passed as it is, one named
differently is listed in `TRL_NAMES`, and one that deliberate itself reads (LoRA, what data to train on, our
PPO) is listed in `OWN_FIELDS` and never passed (`services.training.trl_config`). A test checks that every field
is one or the other, so an option cannot silently do nothing.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from deliberate.config.base import Section

SET_BY_DELIBERATE = frozenset({
    "output_dir", "save_strategy", "save_total_limit", "disable_tqdm", "use_cpu", "bf16", "seed", "data_seed",
    "dataloader_num_workers", "push_to_hub", "hub_model_id", "hub_private_repo", "hub_token", "hub_strategy"})
"""TRL/transformers arguments deliberate sets itself (`services.training.trl_config`, publishing): a
`trainer_args` entry may not set them."""


class Publishing(Section):
    """Publishing a stage's models on the Hugging Face Hub (after they are saved locally)."""

    push_to_hub: bool = False
    """Upload each finished model folder (full weights, tokenizer, model card, provenance) to the Hub: every
    finished model of the section's stages or merges, as `stage:<name>/*` lists them, at the end of the
    command (a model trained earlier and reused is pushed too). The token
    is huggingface_hub's own (`HF_TOKEN` or `hf auth login`); it is never written anywhere. A failed upload
    leaves the local model as it is and ends the command with an `error:` line."""
    hub_model_id: str | None = None
    """The Hub repository, `user/name` or `org/name`. `{label}` is replaced by the model's label (e.g.
    `dpo-safe-beta0.1`); a section that makes several models and has no `{label}` gets `-<label>` appended."""
    hub_private: bool = True
    """Create the repository as private (an existing repository keeps its visibility)."""

    @model_validator(mode="after")
    def _needs_a_repo(self):
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub is set: give hub_model_id (user/name)")
        if self.hub_model_id and not _repo_id(self.hub_model_id.replace("{label}", "x")):
            raise ValueError(f"hub_model_id '{self.hub_model_id}': expected user/name (letters, digits, '-', "
                             "'_', '.')")
        return self


def _repo_id(value: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*", value) is not None


class TrainingOptions(Publishing):
    """Fields every training verb (sft, dpo, rl, rm) shares."""

    TRL_NAMES: ClassVar[dict[str, str]] = {}
    """Fields passed to TRL under another name (ours -> TRL's)."""
    OWN_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "bf16", "trainer_args",
         "push_to_hub", "hub_model_id", "hub_private", "quantization"})
    """Fields deliberate reads itself; they are never passed to TRL as they are."""
    COMPUTED: ClassVar[frozenset[str]] = frozenset()
    """TRL arguments the stage computes (from its fields, the data, the number of processes): `trainer_args` may
    not set them."""

    def trl_configs(self) -> list[str]:
        """The TRL config classes this section's settings go to (by name); none for deliberate's own PPO."""
        return []

    def weight_settings(self, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """The settings that shape the trained weights (a finished run's fingerprint): all but where the metrics
        and the model are sent, so turning on a tracker or `push_to_hub` reuses the trained model. Settings added
        later are left out while unset (`exclude_if`), so a model trained before they existed is still reused."""
        return self.model_dump(exclude=set(exclude) | {"report_to", "run_name", "push_to_hub", "hub_model_id",
                                                       "hub_private"})

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
    report_to: list[str] = Field(default_factory=list)
    """Experiment trackers that get the logged metrics: `tensorboard`, `wandb`, `trackio`, `mlflow`, ... (as
    transformers and accelerate name them; each needs its own package). None when empty. TensorBoard logs go
    under the stage folder's `checkpoints/runs/` (our PPO: `tracking/`)."""
    run_name: str | None = None
    """The run's name in the trackers; `<recipe name>-<stage>` when unset."""
    quantization: Literal["4bit", "8bit"] | None = Field(default=None, exclude_if=lambda v: v is None)
    """QLoRA (sft, dpo, and rl with grpo or rloo; not rm): load the frozen start model in 4-bit (NF4, double
    quantization) or 8-bit through bitsandbytes and train a LoRA adapter on it (needs `lora: true`, a start
    model with full weights, a CUDA GPU and `pip install 'deliberate[qlora]'`). The saved `model/` merges the
    adapter into the start model's full-precision weights."""
    trainer_args: dict[str, Any] = Field(default_factory=dict, exclude_if=lambda v: not v)
    """Any other argument of the TRL config this section builds (`SFTConfig`, `DPOConfig`, `KTOConfig`,
    `GRPOConfig`, `RLOOConfig`, `RewardConfig`) that the recipe does not mirror, e.g. `{optim: adafactor,
    max_grad_norm: 0.5, neftune_noise_alpha: 5}`. Checked against the config's fields before any work starts;
    a field the section has (set it there) or one deliberate sets itself is refused."""

    @field_validator("report_to", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return [] if v in ("none", ["none"], None) else v

    @model_validator(mode="after")
    def _checked_trainer_args(self):
        if self.quantization and not self.lora:
            raise ValueError(f"quantization {self.quantization} trains a LoRA adapter on the quantized model: "
                             "set lora: true (QLoRA)")
        return self  # trainer_args are checked against TRL's configs by services.training.check_trainer_args


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
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    """Fraction of the steps over which the learning rate warms up from 0."""

    TRL_NAMES = {"warmup_ratio": "warmup_steps"}  # transformers 5 reads a float below 1 as a ratio of the steps


class SFTOptions(DatasetTrainingOptions):
    """`sft`: supervised fine-tuning on the judge-filtered, spec-stripped completions (TRL SFTTrainer)."""

    OWN_FIELDS = TrainingOptions.OWN_FIELDS | {"keep_reasoning", "kept"}
    COMPUTED = frozenset({"completion_only_loss", "packing"})

    def trl_configs(self) -> list[str]:
        return ["SFTConfig"]

    def weight_settings(self, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        unset = {"warmup_ratio"} if self.warmup_ratio == 0 else set()  # sft had no warmup_ratio before
        return super().weight_settings(set(exclude) | unset)

    keep_reasoning: bool = True
    """Keep the chain of thought in the training target (deliberative alignment) or train on answers only."""
    kept: str | None = Field(default=None, exclude_if=lambda v: v is None)
    """The filtered completions to train on: another run's `filter/kept.jsonl` (e.g. to train on the same data
    with and without the reasoning); this recipe's `deliberate filter` output when unset."""
