"""Statistics of evaluations: rates and pairwise win rates with bootstrap intervals, and Elo ratings.

A rate (refusals of harmful prompts, answers to safe ones) comes with a percentile bootstrap 95% interval.

A judgment compares two answers to one prompt on one criterion (`helpfulness` or `harmlessness`); every pair is
judged in both orders and `eval.pairwise_repeats` times, so a judge that always prefers the first answer scores
both models 0.5. Win rate = (wins + ties / 2) / successful judgments; failed judgments are left out and counted,
never scored as ties (a flaw of the SACPO scripts). The 95% interval resamples prompts (each prompt's judgments
stay together), so it reflects how much the rate would move on another draw of prompts.

Elo follows SACPO's settings: every judgment is a game, ratings start at 1200 with K = 32, games are played in
`elo_epochs` passes over a shuffled order, and the ratings are averaged over `elo_trials` shuffles; the interval
comes from as many resamples of the games (with replacement), each averaged over 8 shuffled orders. Ratings are shifted so that the base model is
1000 (the shift changes no difference between two ratings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ORDERS = 8  # shuffled orders averaged per bootstrap resample of the Elo games


@dataclass
class Game:
    first: str  # model names
    second: str
    score: float  # 1: first won, 0: second won, 0.5: tie


def games_from(first: str, second: str, per_prompt: list[dict[str, int]]) -> list[Game]:
    """One game per successful judgment of `first` against `second` (per-prompt wins/losses/ties counts)."""
    games = []
    for p in per_prompt:
        games += [Game(first, second, 1.0)] * p["wins"] + [Game(first, second, 0.0)] * p["losses"]
        games += [Game(first, second, 0.5)] * p["ties"]
    return games


def win_rate_summary(per_prompt: list[dict[str, int]], samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Pooled win rate of the first model over prompts, with a bootstrap-over-prompts 95% interval.

    `per_prompt`: one dict per prompt with `wins`, `losses`, `ties`, `failures` (judgments of this prompt).
    """
    import numpy as np

    totals = {k: int(sum(p[k] for p in per_prompt)) for k in ("wins", "losses", "ties", "failures")}
    judged = [p for p in per_prompt if p["wins"] + p["losses"] + p["ties"] > 0]
    comparisons = totals["wins"] + totals["losses"] + totals["ties"]
    out: dict[str, Any] = {**totals, "comparisons": comparisons, "prompts": len(judged),
                           "prompts_without_judgment": len(per_prompt) - len(judged)}
    if not judged:
        return {**out, "value": None, "ci95": [None, None]}
    points = np.array([p["wins"] + 0.5 * p["ties"] for p in judged], dtype=float)
    counts = np.array([p["wins"] + p["losses"] + p["ties"] for p in judged], dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(judged), size=(samples, len(judged)))
    rates = points[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return {**out, "value": float(points.sum() / counts.sum()),
            "ci95": [float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5))]}


def elo_ratings(games: list[Game], base: str, *, k: float = 32.0, start: float = 1200.0, trials: int = 50,
                epochs: int = 10, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Elo rating of every model in `games`, anchored so that `base` is 1000; see the module docstring."""
    import numpy as np

    models = sorted({g.first for g in games} | {g.second for g in games} | {base})
    if not games:
        return {m: {"rating": 1000.0, "ci95": [1000.0, 1000.0], "games": 0} for m in models}
    index = {m: i for i, m in enumerate(models)}
    first = np.array([index[g.first] for g in games])
    second = np.array([index[g.second] for g in games])
    score = np.array([g.score for g in games], dtype=float)
    rng = np.random.default_rng(seed)

    def play(orders: np.ndarray) -> np.ndarray:
        """Ratings after each trial's games in its own order; all trials at once. orders: (trials, n)."""
        ratings = np.full((orders.shape[0], len(models)), start)
        rows = np.arange(orders.shape[0])
        for _ in range(epochs):
            for j in range(orders.shape[1]):
                g = orders[:, j]
                a, b = first[g], second[g]
                expected = 1.0 / (1.0 + 10.0 ** ((ratings[rows, b] - ratings[rows, a]) / 400.0))
                delta = k * (score[g] - expected)
                ratings[rows, a] += delta
                ratings[rows, b] -= delta
        return ratings - ratings[:, [index[base]]] + 1000.0

    n = len(games)
    shuffled = np.stack([rng.permutation(n) for _ in range(trials)])
    # Each resample of the games is played in ORDERS shuffled orders and averaged, as the point estimate is, so
    # that the interval measures which games were drawn rather than the order they were played in.
    resampled = rng.integers(0, n, size=(trials, n))
    orders = np.stack([r[rng.permutation(n)] for r in resampled for _ in range(ORDERS)])
    point = play(shuffled).mean(axis=0)
    boot = play(orders).reshape(trials, ORDERS, len(models)).mean(axis=1)
    played = {m: int(((first == index[m]) | (second == index[m])).sum()) for m in models}
    return {m: {"rating": float(point[i]), "ci95": [float(np.percentile(boot[:, i], 2.5)),
                                                   float(np.percentile(boot[:, i], 97.5))], "games": played[m]}
            for m, i in index.items()}


@dataclass
class Rate:
    value: float | None
    low: float | None
    high: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": [self.low, self.high], "n": self.n}

    def text(self) -> str:
        if self.value is None:
            return "-"
        return f"{self.value:.0%} [{self.low:.0%}, {self.high:.0%}] (n={self.n})"


def bootstrap_rate(hits: list[bool], samples: int = 1000, seed: int = 0) -> Rate:
    """The rate of True and a percentile bootstrap 95% interval."""
    import numpy as np

    if not hits:
        return Rate(None, None, None, 0)
    values = np.asarray(hits, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    return Rate(float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)),
                len(values))


def _auroc(labels, scores) -> float | None:
    """Area under the ROC curve (the Mann-Whitney U statistic, ties counted half)."""
    import numpy as np

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    pos, neg = int(labels.sum()), int(len(labels) - labels.sum())
    if not pos or not neg:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based ranks, ties averaged
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _classification(labels, predicted) -> dict[str, float | None]:
    import numpy as np

    tp = int(np.sum((predicted == 1) & (labels == 1)))
    fp = int(np.sum((predicted == 1) & (labels == 0)))
    fn = int(np.sum((predicted == 0) & (labels == 1)))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {"accuracy": float(np.mean(predicted == labels)), "precision": precision, "recall": recall, "f1": f1}


def binary_metrics(labels: list[int], scores: list[float | None], threshold: float = 0.5, samples: int = 1000,
                   seed: int = 0) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (prediction: score >= threshold) and AUROC (when the scores are not all 0/1)
    of a classifier against human labels, each with a percentile bootstrap 95% interval over items. Items with no
    score (a failed judgment) count as failures and are left out."""
    import numpy as np

    kept = [(y, s) for y, s in zip(labels, scores, strict=True) if s is not None]
    out: dict[str, Any] = {"n": len(kept), "failures": len(labels) - len(kept), "positives": sum(y for y, _ in kept)}
    if not kept:
        return out
    y = np.asarray([k[0] for k in kept])
    s = np.asarray([k[1] for k in kept], dtype=float)
    graded = len(np.unique(s)) > 2 or not np.isin(s, (0.0, 1.0)).all()
    point = _classification(y, (s >= threshold).astype(int))
    if graded:
        point["auroc"] = _auroc(y, s)
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(samples):
        i = rng.integers(0, len(y), size=len(y))
        values = _classification(y[i], (s[i] >= threshold).astype(int))
        if graded:
            values["auroc"] = _auroc(y[i], s[i])
        for k, v in values.items():
            if v is not None:
                boots[k].append(v)
    for k, v in point.items():
        ci = [round(float(np.percentile(boots[k], 2.5)), 4), round(float(np.percentile(boots[k], 97.5)), 4)] \
            if boots[k] else [None, None]
        out[k] = {"value": None if v is None else round(v, 4), "ci95": ci}
    return out
