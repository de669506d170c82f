"""`guard`: training a small safety guard (`deliberate guard train`) on labelled data.

The guard is linear probes on a transformer's middle-layer features: P(request harmful), the request's spec
category, P(response refuses) and P(response harmful). The `guard` judge backend serves it like a downloaded
guard. `sources` name the labelled data; every example is split into train or held-out test by its prompt, and
no training example shares a prompt with any held-out example or with an `exclude` file (evaluation prompts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from deliberate.config.base import Section

GuardTask = Literal["prompt_harmful", "refusal", "response_harmful"]


class GuardSource(Section):
    """One labelled file. `kind: table` reads any CSV/JSON/JSONL/Parquet file through the column fields;
    `xstest_completions` reads XSTest's model_completions folder (refusal labels, split by model as well as by
    prompt); `pku_pairs` reads PKU-SafeRLHF pairs whose `response` list holds a safe then an unsafe response."""

    kind: Literal["table", "xstest_completions", "pku_pairs"] = "table"
    """How the file is read: `table` through the column fields; `xstest_completions` (XSTest's folder of model
    completions); `pku_pairs` (a `response` list of a safe then an unsafe response)."""
    path: str
    """The file (a folder for `xstest_completions`), relative to `guard.datasets_dir` when that is set."""
    task: GuardTask | None = None
    """`table`: what the label says: the request is harmful (`prompt_harmful`), the response refuses
    (`refusal`) or the response is harmful (`response_harmful`)."""
    prompt: str = "prompt"
    """Column of the user's request."""
    response: str | None = None
    """Column of the assistant's response (the response tasks)."""
    label: str | None = None
    """Column of the label; its values are read through `positive` and `negative`."""
    label_value: bool | None = None
    """A label for every row instead of a column (e.g. true for a file of harmful prompts)."""
    positive: list[str] = Field(default_factory=lambda: ["1", "true", "yes", "harmful", "unsafe"])
    """Label values that mean yes (compared as lower-case text)."""
    negative: list[str] = Field(default_factory=lambda: ["0", "false", "no", "safe", "benign", "harmless"])
    """Label values that mean no; a row with any other value is left out."""
    category: str | None = None
    """Column of the request's category in the file's own taxonomy (a dict of flags is read as its true keys)."""
    categories: dict[str, str | None] = Field(default_factory=dict)
    """The file's categories mapped to the spec's ids (`null`: no spec category). Unmapped ones are left out of
    the category head."""
    test_fraction: float = Field(default=0.2, ge=0, le=1)
    """Share of the prompts held out for testing (chosen by a hash of the prompt text: stable across runs and
    machines, and the same prompt lands on the same side in every source)."""
    test_models: list[str] = Field(default_factory=list)
    """`xstest_completions`: models whose completions are held out (test only; the others train only)."""
    limit: int | None = Field(default=None, ge=1)
    """Use at most this many rows (a stable hash sample, taken before the split)."""

    @model_validator(mode="after")
    def _labelled(self) -> GuardSource:
        if self.kind == "table":
            if self.task is None:
                raise ValueError("a table source needs `task`")
            if (self.label is None) == (self.label_value is None):
                raise ValueError("a table source needs one of `label` (a column) or `label_value`")
            if self.task != "prompt_harmful" and self.response is None:
                raise ValueError(f"task {self.task} needs a `response` column")
        return self


class GuardConfig(Section):
    model: str = "smollm2"
    """The transformer whose features the probes read (a folder, Hub id or `smollm2`)."""
    layer: float = Field(default=0.5, gt=0, le=1)
    """Which layer's hidden states: a fraction of the depth (0.5: the middle). Layers above it are not kept."""
    max_prompt_tokens: int = Field(default=64, ge=8)
    """Tokens of the request the guard reads (its beginning)."""
    max_response_tokens: int = Field(default=96, ge=8)
    """Tokens of the response the guard reads (its beginning: where refusals are, and most harm)."""
    batch_size: int = Field(default=64, ge=1)
    """Items per forward pass, when training and when judging."""
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """Weights dtype of the feature model (bfloat16: about 2.5x faster on a recent CPU)."""
    l2: list[float] = Field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1])
    """L2 penalties tried for each probe; the one with the best validation loss (a tenth of the training
    prompts) is kept."""
    datasets_dir: str | None = None
    """Folder the sources' paths are relative to; `$DELIBERATE_DATASETS` when unset."""
    sources: list[GuardSource] = Field(default_factory=list)
    """The labelled data (see `recipes/guard.yaml` for the public sets)."""
    exclude: list[str] = Field(default_factory=list)
    """Prompt files (or benchmark names from `eval/`) whose prompts are never trained on: the evaluation sets."""
    output: Path | None = None
    """Where the guard is written; `<output_dir>/guard` when unset."""
