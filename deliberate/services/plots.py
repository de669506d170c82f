"""The plots of reports and training logs (matplotlib, the `plots` extra), written atomically as PNG."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from deliberate.services.io import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
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


def plot_study(board: dict[str, Any], path: Path) -> str | None:
    """A study's helpful-vs-harmless plane: harmful prompts refused (x) against safe prompts answered (y),
    pooled over the benchmarks; one small point per seed, a large one for each method's mean, the base as a
    cross. Returns the file name (None when no run has both rates)."""
    points = [p for p in board["points"] if p["harmful_refused"] is not None and p["safe_answered"] is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(board["methods"]):
        mine = [p for p in points if p["method"] == method]
        if not mine:
            continue
        colour = colours[i % len(colours)]
        ax.scatter([p["harmful_refused"] for p in mine], [p["safe_answered"] for p in mine], s=18, alpha=0.5,
                   color=colour)
        ax.scatter([sum(p["harmful_refused"] for p in mine) / len(mine)],
                   [sum(p["safe_answered"] for p in mine) / len(mine)], s=90, color=colour, edgecolor="black",
                   label=f"{method} (mean of {len(mine)})")
    for p in points:
        if p["method"] == "base":
            ax.scatter([p["harmful_refused"]], [p["safe_answered"]], marker="x", s=90, color="black", label="base")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="harmful prompts refused",
           ylabel="safe prompts answered", title=f"{board['study']}: helpful vs harmless")
    ax.legend(fontsize=7, loc="lower left")
    _save(fig, path)
    plt.close(fig)
    return path.name
