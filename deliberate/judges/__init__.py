"""Judges: one interface (`Judge.score`, `Judge.compare`) over the rules, openai, hf and classifier backends."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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
from deliberate.judges.rules import RulesBackend
from deliberate.services.models import cache_dir

if TYPE_CHECKING:
    from deliberate.config import JudgeConfig
    from deliberate.services.spec import PolicySpec

__all__ = ["Judge", "JudgeFailure", "PairwiseItem", "PairwiseResult", "PointwiseItem", "PointwiseResult", "Usage",
           "make_judge", "win_rate"]


def make_judge(cfg: JudgeConfig, spec: PolicySpec | None, show_progress: bool = True) -> Judge:
    """The judge a recipe's `judge` section describes."""
    usage = Usage()
    if cfg.backend == "rules":
        backend: Backend = RulesBackend(usage, spec)
    elif cfg.backend == "openai":
        backend = OpenAIBackend(usage, cfg)
    elif cfg.backend == "hf":
        backend = HFBackend(usage, cfg)
    else:
        backend = ClassifierBackend(usage, cfg)
    cache = None
    if cfg.cache != "none" and backend.cacheable:
        cache = JudgeCache(Path(cfg.cache) if cfg.cache else cache_dir() / "judge_cache.sqlite")
    return Judge(backend, spec, repeats=cfg.repeats, aggregate=cfg.aggregate, hide_reasoning=cfg.hide_reasoning,
                 cache=cache, show_progress=show_progress, max_calls=cfg.max_calls)
