"""A study: alignment methods compared over seeds on the same benchmarks with the same judge (`deliberate study`).

A study file names a base recipe, the methods (each a sequence of stages with `--set` overrides, optionally
continuing from another method's model), the seeds and the benchmarks:

    name: study-demo
    recipe: demo                 # a recipe file (relative to this file) or a packaged recipe's name
    seeds: [0, 1, 2]
    benchmarks: [xstest, strongreject]
    methods:
      - {name: sft, steps: [sft]}
      - {name: sft-dpo, after: sft, steps: [pairs, dpo]}
      - {name: sft-kto, after: sft, steps: [pairs, dpo], set: [dpo.method=kto]}
      - {name: sft-grpo, after: sft, steps: [rl], set: [rl.algo=grpo, rl.max_steps=50]}

A study-wide `set` applies to every run (before each method's own). Every method x seed runs in `<output_dir>/runs/<method>/seed<k>/` with the recipe's `seed` set to k (finished
stages are reused there, so a rerun after a crash continues); `after` starts the method from that method's
model for the same seed (its pairs are sampled from it, and dpo / rl start from it) instead of training it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from deliberate.config.base import Section, check_name

Step = Literal["sft", "generate", "filter", "pairs", "dpo", "rm", "rl", "merge"]


class MethodSpec(Section):
    name: str
    """The method's name in the leaderboard and its runs' folder."""
    steps: list[Step] = Field(min_length=1)
    """The stages, in order: `sft` (generate -> filter -> sft: deliberative SFT), `generate`, `filter`, `pairs`,
    `dpo` (every stage of the recipe's dpo section: DPO, KTO, SACPO's steps, MODPO), `rm`, `rl`, `merge`."""
    after: str | None = None
    """Another method of the study whose model (for the same seed) this one starts from: `pairs` samples from
    it and `dpo` / `rl` start from it, unless `set` says otherwise."""
    set: list[str] = Field(default_factory=list)
    """`--set` overrides of the base recipe for this method (e.g. `dpo.method=kto`, `rl.algo=grpo`). `{seed}` is
    replaced by the run's seed and `{runs}` by the study's runs folder, so a method can read another's outputs
    for the same seed (`dpo.data.source={runs}/sft/seed{seed}/pairs/pairs.jsonl`: the pairs the sft method
    sampled, shared by every method that trains on them instead of sampled again)."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """Its models' token budget in the evaluation, over the recipe's `generation.max_new_tokens`: a method whose
    model reasons before it answers needs room for the reasoning (the judge sees the answer after it)."""
    model: str | None = None
    """The model the method ends with, as `eval.models` names it (`stage:safe`, `merge:p-sacpo/a0.5`); by default
    the last training step's: `stage:sft`, the last dpo stage's, `stage:rl` or the last merge's (one variant)."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_name(v)


class StudyConfig(Section):
    name: str = "study"
    """The study's name (leaderboard titles)."""
    recipe: str
    """The base recipe: a file (relative to the study file) or a packaged recipe's name. Its `model` is the base
    every method is compared with, its `judge` judges every benchmark."""
    output_dir: Path | None = None
    """Where the runs, the evaluation and the leaderboard go; `runs/<name>` when unset."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    """One run of every method per seed (the recipe's `seed`: sampling, data order, initialisation)."""
    benchmarks: list[str] = Field(min_length=1)
    """Benchmarks every model is evaluated on (as `eval.benchmarks`)."""
    methods: list[MethodSpec] = Field(min_length=1)
    """The methods to compare."""
    set: list[str] = Field(default_factory=list)
    """`--set` overrides of the base recipe for every run (before each method's own) and for the evaluation, e.g.
    a shorter training (`dpo.max_steps=50`), the training data (`data.source=...`) or the judge."""
    eval_set: list[str] = Field(default_factory=list)
    """`--set` overrides for the evaluation only (e.g. `generation.max_new_tokens=128`, `eval.pairwise=true`)."""
    also_judge: dict[str, list[str]] = Field(default_factory=dict)
    """Other judges of the same answers: a name and the `--set` overrides that make its judge, e.g. `{rules:
    [judge.backend=rules]}`. Each judges the answers the evaluation generated (copied, not generated again) in
    `<output_dir>/judged-<name>/` and writes `leaderboard-<name>.{md,csv,json,png}`."""
    isolate_runs: bool = True
    """Train each method x seed in a fresh process (its memory returned when it ends). Off, every run trains in
    the study's own process: faster to start, but what a stage leaves in memory stays until the study ends."""
    bootstrap_samples: int = Field(default=2000, ge=100)
    """Resamples (of seeds, then of prompts) for the leaderboard's intervals."""

    @model_validator(mode="after")
    def _methods_fit(self) -> StudyConfig:
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError("two methods share a name")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: a seed is listed twice")
        seen: set[str] = set()
        for m in self.methods:
            if m.after is not None and m.after not in seen:
                raise ValueError(f"method '{m.name}': after '{m.after}', which is not a method listed before it")
            seen.add(m.name)
        return self
