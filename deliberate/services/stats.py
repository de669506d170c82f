"""Statistics of evaluations: rates with Wilson intervals, paired differences between models, pairwise win rates
with bootstrap intervals, Elo ratings and Bradley-Terry strengths.

A rate (refusals of harmful prompts, answers to safe ones) comes with a Wilson score 95% interval, which stays
honest at the demo's scale: 14 of 14 is [78%, 100%], where the percentile bootstrap said [100%, 100%].
Two models answered the same prompts, so their difference is paired (`paired_difference`): Newcombe's interval
for a difference of paired proportions (his method 10, Wilson intervals combined with the outcomes'
correlation) and McNemar's exact test on the prompts where they disagree. Over several seeds
(`seed_difference`), the per-seed differences get a t interval. A study's figure over seeds and prompts
(`seeds_and_prompts`: a rate, or a difference paired by prompt and seed) is the mean over seeds of the
per-seed mean over prompts, and its interval a two-level bootstrap: seeds drawn with replacement, then prompts
(one draw for every seed, since every run answered the same prompts), so it reflects both another training run
and another draw of prompts.

A judgment compares two answers to one prompt on one criterion (`helpfulness` or `harmlessness`); every pair is
judged in both orders and `eval.pairwise_repeats` times, so a judge that always prefers the first answer scores
both models 0.5. Win rate = (wins + ties / 2) / successful judgments; failed judgments are left out and counted,
never scored as ties (a flaw of the SACPO scripts). The 95% interval resamples prompts (each prompt's judgments
stay together), so it reflects how much the rate would move on another draw of prompts.

Elo follows SACPO's settings: every judgment is a game, ratings start at 1200 with K = 32, games are played in
`elo_epochs` passes, each over a fresh shuffle of the games, and the ratings are averaged over `elo_trials` such
runs; the interval comes from as many resamples of the games (with replacement), each averaged over 8 runs.
Ratings are shifted so that the base model is 1000 (the shift changes no difference between two ratings; SACPO's
compute_scores.py multiplies them instead, which rescales the differences Elo's expected score reads).
Elo depends on the order games are played in; the Bradley-Terry model (`bradley_terry`) does not: its maximum
likelihood strengths (ties as half a win each way), with Wald intervals from the observed information, are
reported beside Elo on the same scale (400 / ln 10 points per unit of log-strength, the base at 1000).
"""

from __future__ import annotations

import math
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

    `per_prompt`: one dict per prompt with `wins`, `losses`, `ties`, `failures` (judgments of this prompt) and
    optionally `dropped` (successful judgments whose other order failed).
    """
    import numpy as np

    totals = {k: int(sum(p.get(k, 0) for p in per_prompt)) for k in ("wins", "losses", "ties", "failures", "dropped")}
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

    def play(games_of: np.ndarray) -> np.ndarray:
        """Ratings after each run's `epochs` passes over its games (row r of `games_of`), each pass in a fresh
        shuffle (as SACPO's script reshuffles every epoch); all runs at once."""
        ratings = np.full((games_of.shape[0], len(models)), start)
        rows = np.arange(games_of.shape[0])
        for _ in range(epochs):
            order = np.argsort(rng.random(games_of.shape), axis=1)
            shuffled = np.take_along_axis(games_of, order, axis=1)
            for j in range(shuffled.shape[1]):
                g = shuffled[:, j]
                a, b = first[g], second[g]
                expected = 1.0 / (1.0 + 10.0 ** ((ratings[rows, b] - ratings[rows, a]) / 400.0))
                delta = k * (score[g] - expected)
                ratings[rows, a] += delta
                ratings[rows, b] -= delta
        return ratings - ratings[:, [index[base]]] + 1000.0

    n = len(games)
    everything = np.tile(np.arange(n), (trials, 1))
    # Each resample of the games is played ORDERS times and averaged, as the point estimate is, so that the
    # interval measures which games were drawn rather than the order they were played in.
    resampled = np.repeat(rng.integers(0, n, size=(trials, n)), ORDERS, axis=0)
    point = play(everything).mean(axis=0)
    boot = play(resampled).reshape(trials, ORDERS, len(models)).mean(axis=1)
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


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def _wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (0.0 if hits == 0 else max(0.0, centre - half)), (1.0 if hits == n else min(1.0, centre + half))


def mean_interval(values: list[float], samples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The mean and a percentile bootstrap 95% interval (None for no values)."""
    import numpy as np

    if not values:
        return {"value": None, "ci95": [None, None], "n": 0}
    x = np.asarray(values, dtype=float)
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    return {"value": float(x.mean()), "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "n": len(x)}


def wilson_rate(hits: list[bool]) -> Rate:
    """The rate of True and its Wilson score 95% interval (0 of 14: [0%, 22%]; 14 of 14: [78%, 100%])."""
    if not hits:
        return Rate(None, None, None, 0)
    k = sum(bool(h) for h in hits)
    low, high = _wilson(k, len(hits))
    return Rate(k / len(hits), low, high, len(hits))


def paired_difference(a: dict[str, bool], b: dict[str, bool]) -> dict[str, Any]:
    """Rate of model A minus rate of model B over the prompts both have an outcome for (keyed by prompt id):
    Newcombe's (1998) method 10 interval (as in R's biostatUZH::confIntPairedProportion) and McNemar's exact
    two-sided p-value on the discordant prompts."""
    from scipy.stats import binomtest

    shared = [k for k in a if k in b]
    n = len(shared)
    both = sum(a[k] and b[k] for k in shared)
    only_a = sum(a[k] and not b[k] for k in shared)
    only_b = sum(b[k] and not a[k] for k in shared)
    neither = n - both - only_a - only_b
    out: dict[str, Any] = {"n": n, "only_a": only_a, "only_b": only_b, "both": both, "neither": neither}
    if not n:
        return {**out, "value": None, "ci95": [None, None], "p_value": None}
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = _wilson(both + only_a, n)
    l2, u2 = _wilson(both + only_b, n)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b  # Newcombe's correlation, shrunk by n/2 when positive
    cross = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = cross / math.sqrt(margins) if margins else 0.0
    delta = p1 - p2
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    discordant = only_a + only_b
    p_value = binomtest(only_a, discordant, 0.5).pvalue if discordant else 1.0
    return {**out, "value": delta, "ci95": [max(-1.0, delta - below), min(1.0, delta + above)],
            "p_value": float(p_value)}


def seed_difference(a: list[float], b: list[float]) -> dict[str, Any]:
    """Mean over seeds of (A's figure - B's figure), paired by seed, with a t 95% interval (None below 2 seeds)."""
    from scipy.stats import t

    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    if not n:
        return {"n": 0, "value": None, "ci95": [None, None]}
    mean = sum(diffs) / n
    if n < 2:
        return {"n": n, "value": mean, "ci95": [None, None]}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "value": mean, "ci95": [mean - half, mean + half]}


def seeds_and_prompts(runs: list[dict[str, float]], samples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The mean over runs (seeds) of each run's mean over its prompts (prompt id -> value: 1/0 for a rate, -1/0/1
    for a paired difference), with a two-level bootstrap 95% interval (seeds, then prompts; see the module
    docstring); `per_seed` holds each run's own mean. None for no values."""
    import numpy as np

    prompts = sorted({p for run in runs for p in run})
    per_seed = [sum(run.values()) / len(run) if run else None for run in runs]
    out: dict[str, Any] = {"seeds": len(runs), "prompts": len(prompts), "per_seed": per_seed}
    kept = [run for run in runs if run]
    if not kept:
        return {**out, "value": None, "ci95": [None, None]}
    x = np.full((len(kept), len(prompts)), np.nan)
    index = {p: i for i, p in enumerate(prompts)}
    for s, run in enumerate(kept):
        for p, v in run.items():
            x[s, index[p]] = float(v)
    value = float(np.mean([np.nanmean(row) for row in x]))
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for b in range(samples):
        draw = x[rng.integers(0, len(kept), len(kept))][:, rng.integers(0, len(prompts), len(prompts))]
        seen = ~np.isnan(draw)
        counts = seen.sum(axis=1)
        rows = np.where(seen, draw, 0.0).sum(axis=1)[counts > 0] / counts[counts > 0]
        means[b] = rows.mean() if len(rows) else np.nan
    low, high = np.nanpercentile(means, [2.5, 97.5])
    return {**out, "value": value, "ci95": [float(low), float(high)]}


def paired_by_prompt(a: dict[str, bool], b: dict[str, bool]) -> dict[str, float]:
    """Prompt id -> a's outcome minus b's (1, 0, -1), over the prompts both have an outcome for."""
    return {p: float(a[p]) - float(b[p]) for p in a if p in b}


ELO_PER_LOGIT = 400 / math.log(10)  # Elo points per unit of Bradley-Terry log-strength


def bradley_terry(games: list[Game], base: str, *, prior: float = 0.01, iterations: int = 100) -> dict[str, dict[str, Any]]:
    """Maximum-likelihood Bradley-Terry log-strengths (P(i beats j) = 1 / (1 + exp(s_j - s_i)), a tie half a win
    each way), anchored at the base = 0, by Newton's method with a weak Gaussian prior of precision `prior` (so a
    model that won every game gets a large finite strength, not infinity); Wald 95% intervals from the inverse
    observed information. `rating` is on the Elo scale (the base 1000)."""
    import numpy as np

    models = sorted({g.first for g in games} | {g.second for g in games} | {base})
    index = {m: i for i, m in enumerate(models)}
    free = [i for i in range(len(models)) if i != index[base]]
    first = np.array([index[g.first] for g in games], dtype=int)
    second = np.array([index[g.second] for g in games], dtype=int)
    score = np.array([g.score for g in games], dtype=float)
    s = np.zeros(len(models))
    covariance = np.eye(len(free)) / prior
    for _ in range(iterations):
        p = 1 / (1 + np.exp(s[second] - s[first]))  # P(first wins)
        gradient = np.zeros(len(models))
        np.add.at(gradient, first, score - p)
        np.add.at(gradient, second, p - score)
        w = p * (1 - p)
        hessian = np.zeros((len(models), len(models)))
        np.add.at(hessian, (first, first), w)
        np.add.at(hessian, (second, second), w)
        np.add.at(hessian, (first, second), -w)
        np.add.at(hessian, (second, first), -w)
        g = gradient[free] - prior * s[free]
        h = hessian[np.ix_(free, free)] + prior * np.eye(len(free))
        covariance = np.linalg.inv(h)
        step = covariance @ g
        s[free] += step
        if np.abs(step).max(initial=0.0) < 1e-10:
            break
    se = np.zeros(len(models))
    se[free] = np.sqrt(np.diag(covariance))
    played = {m: int(((first == index[m]) | (second == index[m])).sum()) for m in models}
    out = {}
    for m, i in index.items():
        low, high = s[i] - Z95 * se[i], s[i] + Z95 * se[i]
        out[m] = {"strength": float(s[i]), "strength_ci95": [float(low), float(high)],
                  "rating": float(1000 + ELO_PER_LOGIT * s[i]),
                  "ci95": [float(1000 + ELO_PER_LOGIT * low), float(1000 + ELO_PER_LOGIT * high)], "games": played[m]}
    return out


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
