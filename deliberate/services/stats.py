"""Pairwise comparison of models: win rates with bootstrap intervals, Elo ratings, and the report's plots.

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
from pathlib import Path
from typing import Any

CRITERIA = ("helpfulness", "harmlessness")
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


# --- plots -----------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import io

    from deliberate.services.io import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def plot_win_rates(pairwise: list[dict[str, Any]], base: str, path: Path) -> Path | None:
    """Helpfulness (x) against harmlessness (y) win rate of each model over the base, with 95% error bars."""
    pooled = {(r["model"], r["criterion"]): r["win_rate"] for r in pairwise if r["benchmark"] == "all"}
    models = sorted({m for m, c in pooled if c == "helpfulness"} & {m for m, c in pooled if c == "harmlessness"})
    models = [m for m in models if pooled[(m, "helpfulness")]["value"] is not None
              and pooled[(m, "harmlessness")]["value"] is not None]
    if not models:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for m in models:
        x, y = pooled[(m, "helpfulness")], pooled[(m, "harmlessness")]
        ax.errorbar(x["value"], y["value"], xerr=[[x["value"] - x["ci95"][0]], [x["ci95"][1] - x["value"]]],
                    yerr=[[y["value"] - y["ci95"][0]], [y["ci95"][1] - y["value"]]], fmt="o", capsize=4, label=m)
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.plot([0.5], [0.5], marker="*", color="black", ms=12, ls="none", label=f"{base} (base)")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="helpfulness win rate vs base", ylabel="harmlessness win rate vs base",
           title="Win rates against the base model (95% CI)")
    ax.legend(fontsize=7, loc="lower left")
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_benchmarks(results: list[dict[str, Any]], path: Path) -> Path | None:
    """Per benchmark, each model's harmful-refused and safe-answered rates with 95% error bars."""
    if not results:
        return None
    metrics = [("refusal_rate", "harmful refused"), ("answer_rate", "safe answered")]
    benches = list(dict.fromkeys(r["benchmark"] for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(6.0, 2.2 * len(benches) * len(metrics)), 4),
                             squeeze=False)
    width = 0.8 / len(models)
    by_key = {(r["model"], r["benchmark"]): r for r in results}
    for ax, (key, label) in zip(axes[0], metrics, strict=True):
        for i, m in enumerate(models):
            xs, ys, lo, hi = [], [], [], []
            for b, bench in enumerate(benches):
                rate = by_key.get((m, bench), {}).get(key)
                if rate and rate["value"] is not None:
                    xs.append(b + (i - (len(models) - 1) / 2) * width)
                    ys.append(rate["value"])
                    lo.append(rate["value"] - rate["ci95"][0])
                    hi.append(rate["ci95"][1] - rate["value"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=m)
        ax.set_xticks(range(len(benches)), benches, rotation=20)
        ax.set(ylim=(0, 1.05), title=label)
    axes[0][0].legend(fontsize=7)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_training(history: list[dict[str, Any]], keys: list[str], path: Path, title: str) -> Path | None:
    """One panel per metric of a training log (e.g. reward, cost, lambda, KL) against the step."""
    keys = [k for k in keys if any(k in h for h in history)]
    if not history or not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        points = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
        ax.set(xlabel="step", title=key)
    fig.suptitle(title)
    out = _save(fig, path)
    plt.close(fig)
    return out
