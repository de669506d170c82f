"""Judges: one interface (`Judge.score`, `Judge.compare`) over the rules, openai, hf and classifier backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deliberate.judges.base import (
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

if TYPE_CHECKING:
    from deliberate.config import JudgeConfig
    from deliberate.services.spec import PolicySpec

__all__ = ["Judge", "JudgeFailure", "PairwiseItem", "PairwiseResult", "PointwiseItem", "PointwiseResult", "Usage",
           "make_judge", "win_rate"]


def make_judge(cfg: JudgeConfig, spec: PolicySpec | None, show_progress: bool = True) -> Judge:
    """The judge a recipe's `judge` section describes."""
    from pathlib import Path

    from deliberate.services.models import cache_dir

    usage = Usage()
    if cfg.backend == "rules":
        from deliberate.judges.rules import RulesBackend

        backend = RulesBackend(usage, spec)
    elif cfg.backend == "openai":
        from deliberate.judges.generative import OpenAIBackend

        backend = OpenAIBackend(usage, cfg)
    elif cfg.backend == "hf":
        from deliberate.judges.generative import HFBackend

        backend = HFBackend(usage, cfg)
    else:
        from deliberate.judges.classifier import ClassifierBackend

        backend = ClassifierBackend(usage, cfg)
    cache = None
    if cfg.cache != "none" and backend.cacheable:
        cache = JudgeCache(Path(cfg.cache) if cfg.cache else cache_dir() / "judge_cache.sqlite")
    return Judge(backend, spec, repeats=cfg.repeats, aggregate=cfg.aggregate, hide_reasoning=cfg.hide_reasoning,
                 cache=cache, show_progress=show_progress, max_calls=cfg.max_calls)
