"""Judges: one interface (`Judge.score`, `Judge.compare`) over the rules, openai, hf, classifier and guard backends."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from deliberate.errors import DeliberateError
from deliberate.judges.base import (
    Backend,
    Judge,
    JudgeFailure,
    PairwiseItem,
    PairwiseResult,
    PointwiseItem,
    PointwiseResult,
    Usage,
    win_rate,
)
from deliberate.judges.cache import JudgeCache
from deliberate.judges.classifier import ClassifierBackend
from deliberate.judges.generative import HFBackend, OpenAIBackend
from deliberate.judges.guard import GuardBackend
from deliberate.judges.rules import RulesBackend
from deliberate.services.models import cache_dir

if TYPE_CHECKING:
    from deliberate.config import JudgeConfig
    from deliberate.services.spec import PolicySpec

__all__ = ["Judge", "JudgeFailure", "PairwiseItem", "PairwiseResult", "PointwiseItem", "PointwiseResult", "Usage",
           "judge_scale", "make_judge", "require_scale", "win_rate"]


def judge_scale(cfg: JudgeConfig) -> str:
    """What the judge's pointwise scores mean: "0-10" (policy adherence) or "raw" (a classifier's own scalar,
    unless its config declares `score_scale: "0-10"`). Known without loading the judge."""
    if cfg.backend != "classifier":
        return "0-10"
    return ClassifierBackend.scale_of(cfg)


def require_scale(cfg: JudgeConfig, what: str) -> None:
    """A stage whose settings are on the 0-10 policy scale (`what`) refuses, before any work, a judge whose scores
    are not."""
    if judge_scale(cfg) != "0-10":
        raise DeliberateError(f"{what} is on the 0-10 policy scale, but the classifier judge '{cfg.model}' gives its "
                              "own raw scalar (its config declares no score_scale: 0-10); use a judge that scores "
                              "0-10 (rules, guard, hf, openai)")


def make_judge(cfg: JudgeConfig, spec: PolicySpec | None, show_progress: bool = True) -> Judge:
    """The judge a recipe's `judge` section describes."""
    usage = Usage()
    if cfg.backend == "rules":
        backend: Backend = RulesBackend(usage, spec)
    elif cfg.backend == "openai":
        backend = OpenAIBackend(usage, cfg)
    elif cfg.backend == "hf":
        backend = HFBackend(usage, cfg)
    elif cfg.backend == "guard":
        backend = GuardBackend(usage, cfg, spec)
    else:
        backend = ClassifierBackend(usage, cfg)
    cache = None
    if cfg.cache != "none" and backend.cacheable:
        cache = JudgeCache(Path(cfg.cache) if cfg.cache else cache_dir() / "judge_cache.sqlite")
    return Judge(backend, spec, repeats=cfg.repeats, aggregate=cfg.aggregate, hide_reasoning=cfg.hide_reasoning,
                 cache=cache, show_progress=show_progress, max_calls=cfg.max_calls, deterministic=cfg.deterministic)
