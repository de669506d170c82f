"""Rewards and costs for the RL stage: the spec-aware judge on the final answer, or a user's Python function.

`Scorer.ascore(prompts, completions, categories, expected)` gives one value per completion, or None where there
is none to give:

- **judge**: the completion is split into reasoning and answer (`reasoning.split_reasoning`); the judge gets
  spec_for(category), the prompt and the **final answer only** (deliberative alignment: no optimisation pressure
  on the chain of thought). Reward = score / 10 (plus `format_reward` for a well-formed reasoning block);
  cost = 1 for an `unsafe` verdict (or 1 - score / 10, or a guard's P(harmful response)). A classifier judge (a reward or cost model) gives its
  own scalar as the reward or the cost. A completion with no final answer (reasoning that never
  closes, or nothing after it) has reward 0 and cost 0 and is not judged. A failed judgment is None: TRL then
  leaves the completion out of the group baseline and gives it no advantage, and our PPO drops it from the batch.
- **function**: `module:name` or `file.py:name`, called as f(prompts, completions, answers=, category=,
  expected=) and returning floats (or None); sync or async.

Scoring is asynchronous, so TRL runs several reward functions concurrently, and the judge's own requests run
`judge.max_concurrency` at a time.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deliberate.config import JudgeConfig, Recipe
from deliberate.errors import DeliberateError
from deliberate.judges import Judge, PointwiseItem, make_judge
from deliberate.judges.base import run_sync
from deliberate.services.reasoning import split_reasoning
from deliberate.services.runs import resolve_judge
from deliberate.services.spec import load_spec


def load_function(ref: str) -> Callable[..., Any]:
    """`package.module:name` or `path/to/file.py:name` -> the callable."""
    target, sep, name = ref.rpartition(":")
    if not sep or not target or not name:
        raise DeliberateError(f"{ref}: a function is `module:name` or `file.py:name`")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise DeliberateError(f"{ref}: no such file {path}")
            spec = importlib.util.spec_from_file_location(f"deliberate_user_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(target)
    except DeliberateError:
        raise
    except Exception as e:  # an import error in the user's module
        raise DeliberateError(f"{ref}: cannot import {target}: {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise DeliberateError(f"{ref}: {target} has no function '{name}'")
    return fn


@dataclass
class ScoreStats:
    scored: int = 0
    failures: int = 0  # no value: a failed judgment or a function's None
    unanswered: int = 0  # completions with no final answer (scored 0 without a judge)
    seconds: float = 0.0
    values: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        mean = sum(self.values) / len(self.values) if self.values else None
        return {"scored": self.scored, "failures": self.failures, "unanswered": self.unanswered,
                "seconds": round(self.seconds, 2), "mean": round(mean, 4) if mean is not None else None}


class Scorer:
    """A reward (`kind="reward"`) or a cost (`kind="cost"`) per completion."""

    def __init__(self, kind: str, *, judge: Judge | None = None, function: Callable[..., Any] | None = None,
                 format_reward: float = 0.0, cost_mode: str = "unsafe", name: str | None = None):
        if (judge is None) == (function is None):
            raise ValueError("a scorer has a judge or a function")
        self.kind, self.judge, self.function = kind, judge, function
        self.format_reward, self.cost_mode = format_reward, cost_mode
        self.name = name or f"{kind}_{'judge' if judge is not None else getattr(function, '__name__', 'function')}"
        self.stats = ScoreStats()

    async def ascore(self, prompts: Sequence[str], completions: Sequence[str],
                     categories: Sequence[str | None] | None = None,
                     expected: Sequence[str | None] | None = None) -> list[float | None]:
        start = time.perf_counter()
        n = len(completions)
        categories = list(categories) if categories is not None else [None] * n
        expected = list(expected) if expected is not None else [None] * n
        splits = [split_reasoning(c) for c in completions]
        if self.function is not None:
            out = self.function(list(prompts), list(completions), answers=[s.answer for s in splits],
                                category=categories, expected=expected)
            values = list(await out if inspect.isawaitable(out) else out)
            if len(values) != n:
                raise DeliberateError(f"{self.name}: returned {len(values)} values for {n} completions")
        else:
            values = await self._judge(prompts, splits, categories, expected)
        if self.kind == "reward" and self.format_reward:
            values = [v + self.format_reward if v is not None and s.reasoning is not None and s.well_formed else v
                      for v, s in zip(values, splits, strict=True)]
        self.stats.seconds += time.perf_counter() - start
        self.stats.scored += n
        self.stats.failures += sum(v is None for v in values)
        self.stats.values += [float(v) for v in values if v is not None]
        return [None if v is None else float(v) for v in values]

    async def _judge(self, prompts, splits, categories, expected) -> list[float | None]:
        values: list[float | None] = [0.0] * len(splits)
        todo = [i for i, s in enumerate(splits) if s.answer]
        self.stats.unanswered += len(splits) - len(todo)
        # The judge is shown the final answer only, whatever its own hide_reasoning setting says.
        items = [PointwiseItem(prompt=prompts[i], response=splits[i].answer, category=categories[i],
                               expected=expected[i]) for i in todo]
        results = await self.judge.ascore(items, hide_reasoning=True) if items else []  # type: ignore[union-attr]
        raw = self.judge.backend.scale != "0-10"  # type: ignore[union-attr]
        for i, result in zip(todo, results, strict=True):
            if not result.ok:
                values[i] = None
            elif raw:  # a reward or cost model's own scalar (e.g. Safe RLHF's beaver-7b-v1.0-reward / -cost)
                values[i] = result.score
            elif self.kind == "cost" and self.cost_mode == "p_harmful":
                p = result.probabilities.get("p_harmful")
                if p is None:
                    raise DeliberateError("rl.cost: p_harmful needs a judge that gives P(harmful response) (the guard "
                                          f"backend); the {self.judge.backend.kind} judge does not")  # type: ignore[union-attr]
                values[i] = p
            elif self.kind == "cost":
                values[i] = (1.0 if result.verdict == "unsafe" else 0.0) if self.cost_mode == "unsafe" \
                    else 1.0 - result.score / 10.0
            else:
                values[i] = result.score / 10.0
        return values

    def score(self, prompts, completions, categories=None, expected=None) -> list[float | None]:
        return run_sync(self.ascore(prompts, completions, categories, expected))

    def trl_function(self) -> Callable[..., Any]:
        """This scorer as a TRL reward function (async; conversational or plain prompts and completions)."""

        async def reward(prompts, completions, **columns):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            asks = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
            values = await self.ascore(asks, texts, columns.get("category"), columns.get("expected"))
            if "log_metric" in columns:
                columns["log_metric"](f"{self.name}/failures", float(sum(v is None for v in values)))
            return values

        reward.__name__ = self.name
        return reward

    def close(self) -> None:
        if self.judge is not None:
            self.judge.close()


def _judge(recipe: Recipe, cfg: JudgeConfig) -> Judge:
    # Asked once per RL step: no progress bar per call.
    return make_judge(resolve_judge(recipe, cfg), load_spec(recipe.spec), show_progress=False)


def reward_scorer(recipe: Recipe) -> Scorer:
    rl = recipe.rl
    if rl.reward_function:
        return Scorer("reward", function=load_function(rl.reward_function), format_reward=rl.format_reward)
    return Scorer("reward", judge=_judge(recipe, rl.reward_judge or recipe.judge), format_reward=rl.format_reward)


def cost_scorer(recipe: Recipe) -> Scorer:
    rl = recipe.rl
    if rl.cost_function:
        return Scorer("cost", function=load_function(rl.cost_function))
    return Scorer("cost", judge=_judge(recipe, rl.cost_judge or rl.reward_judge or recipe.judge), cost_mode=rl.cost)


async def score_all(scorers: Sequence[Scorer], prompts, completions, categories, expected) -> list[list[float | None]]:
    """Every scorer on the same completions, concurrently."""
    return list(await asyncio.gather(*(s.ascore(prompts, completions, categories, expected) for s in scorers)))
