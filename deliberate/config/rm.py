"""`rm`: reward and cost models trained on preference pairs (TRL RewardTrainer)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from deliberate.config.base import Section, check_name
from deliberate.config.preferences import PreferenceData
from deliberate.config.training import DatasetTrainingOptions


class RewardModelSpec(Section):
    """One model `deliberate rm` trains."""

    name: str
    """Its name: the model is `rm:<name>` in judges (`judge.model: rm:cost`), MODPO margins and evals."""
    kind: Literal["reward", "cost"] = "reward"
    """`reward`: the preferred response scores higher. `cost` (Safe RLHF's cost model): the less safe response
    scores higher, and with PKU-SafeRLHF's is_response_N_safe labels each response is also pushed to the side of
    0 its label says (unsafe > 0 > safe), so a cost threshold of 0 means "unsafe"."""
    data: PreferenceData = Field(default_factory=PreferenceData)
    """The pairs (any format `deliberate dpo` reads; `preference: better` or `safer` for PKU-SafeRLHF)."""
    eval_data: PreferenceData | None = None
    """Held-out pairs (e.g. PKU-SafeRLHF's test split); when unset, `rm.eval_fraction` of the data's prompts,
    chosen by a hash of the prompt, are held out."""
    start: str | None = None
    """The model the scorer starts from (its body; the scalar head is new): the recipe's `model` when unset."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_name(v)


class RMOptions(DatasetTrainingOptions):
    """`rm`: reward and cost models (TRL RewardTrainer: -log sigmoid(r(x, y_w) - r(x, y_l)) per pair)."""

    DEFAULTS = {"learning_rate": 2e-5, "num_train_epochs": 2.0, "per_device_train_batch_size": 8}
    # safe-rlhf's scripts: weight decay 0.1, cosine, warmup 0.03 (recipes/safe-rlhf.yaml)
    OWN_FIELDS = DatasetTrainingOptions.OWN_FIELDS | {"models", "regularization", "eval_fraction"}
    COMPUTED = frozenset({"logging_first_step", "remove_unused_columns", "model_init_kwargs"})

    def trl_configs(self) -> list[str]:
        return ["RewardConfig"]

    models: list[RewardModelSpec] = Field(
        default_factory=lambda: [RewardModelSpec(name="reward")])
    """The models to train, in order (Safe RLHF: a `reward` model on `better` pairs, a `cost` model on `safer`
    pairs). Default: one reward model on `deliberate pairs`' output."""
    max_length: int = Field(default=512, ge=16)
    """Longest pair side (prompt and response) in tokens; TRL's RewardTrainer leaves longer pairs out (the
    summary counts the pairs trained on)."""
    regularization: float = Field(default=0.0, ge=0)
    """Adds regularization * mean(score^2) over both responses (safe-rlhf's score regularisation, 0.001 in its
    scripts), which keeps scores near 0 rather than drifting."""
    eval_fraction: float = Field(default=0.1, gt=0, lt=1)
    """Share of the prompts held out for the accuracy report when a model has no `eval_data`."""

    @model_validator(mode="after")
    def _full_precision(self) -> RMOptions:
        if self.quantization:
            raise ValueError("quantization (QLoRA) is not supported for reward models: TRL's RewardTrainer loads "
                             "the model itself")
        return self

    @field_validator("models")
    @classmethod
    def _distinct(cls, v: list[RewardModelSpec]) -> list[RewardModelSpec]:
        names = [m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError("two reward models share a name")
        return v
