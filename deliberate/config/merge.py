"""`merge`: mergekit merges (P-SACPO)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from deliberate.config.base import Section, check_name
from deliberate.config.training import Publishing


class MergeSpec(Section):
    name: str
    """The merge's name: outputs go to `<output_dir>/merge/<name>/`, and `merge:<name>` refers to it."""
    method: Literal["linear", "task_arithmetic", "ties", "dare_ties", "slerp"] = "linear"
    """mergekit merge method."""
    models: list[str] = Field(min_length=1)
    """Models to merge: folders, `stage:...` models, Hub ids, or LoRA adapter folders (merged into their base
    first)."""
    weights: list[float] = Field(default_factory=list)
    """One weight per model (`linear`: mixing weights; `task_arithmetic`/`ties`/`dare_ties`: task-vector
    weights). Equal weights when unset."""
    alphas: list[float] = Field(default_factory=list)
    """Two models only: one merge per a with weights (1 - a, a) (P-SACPO: (1 - a) * helpful + a *
    helpful-then-safe); for `slerp` a is the interpolation factor t."""
    base_model: str | None = None
    """`task_arithmetic`, `ties`, `dare_ties`: the model the task vectors are taken from (e.g. the SFT model);
    `slerp`: the first model when unset."""
    density: float = Field(default=0.5, gt=0, le=1)
    """`ties`/`dare_ties`: fraction of each task vector kept."""
    normalize: bool = True
    """`linear`/`ties`/`dare_ties`: divide by the sum of the weights."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the merge is computed and saved in."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_name(v)


class MergeConfig(Publishing):
    merges: list[MergeSpec] = Field(default_factory=list)
    """The merges to run, in order (a later merge may use `merge:<name>` of an earlier one)."""
