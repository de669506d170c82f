"""`deliberate filter`: judge every well-formed generated completion `judge.repeats` times (once for a deterministic
judge, which would repeat itself) with the category's spec and keep it when the minimum score clears
`filter.threshold` (deliberative alignment's SFT filter).

Input: `<output_dir>/generate/completions.jsonl`. Outputs in `<output_dir>/filter/`: `judged.jsonl` (every
completion with its score and why it was dropped), `kept.jsonl` and `summary.json` (kept fractions per category).
Judgments are cached as they arrive; when more fail than `judge.max_failures` allows, the outputs go to
`filter/incomplete/`, the earlier ones stay, and the stage exits 3 (`deliberate.services.failures`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from deliberate.config import Recipe
from deliberate.errors import DeliberateError
from deliberate.judges import PointwiseItem, make_judge, require_scale
from deliberate.services.failures import publish
from deliberate.services.io import read_jsonl, require_keys
from deliberate.services.reasoning import retrieval_correct, retrieval_summary
from deliberate.services.runs import Layout, StageRun, resolve_judge
from deliberate.services.spec import load_spec


def filter_completions(recipe: Recipe, show_progress: bool = True) -> StageRun:
    """Judge every well-formed completion; keep those whose minimum score clears the threshold."""
    layout = Layout(recipe)
    source = layout.generate / "completions.jsonl"
    if not source.exists():
        raise DeliberateError(f"filter: {source} does not exist; run `deliberate generate` first")
    cfg = recipe.filter
    spec = load_spec(recipe.spec)
    rows = read_jsonl(source)
    if not rows:
        raise DeliberateError(f"filter: {source} has no completions; nothing to judge")
    require_keys(rows, ("key", "id", "prompt", "completion", "malformed", "sample"), source,
                 " (it is not a completions file written by `deliberate generate`)")
    require_scale(resolve_judge(recipe, recipe.judge), "filter.threshold")
    judge = make_judge(resolve_judge(recipe, recipe.judge), spec, show_progress=show_progress)
    candidates = [r for r in rows if not r["malformed"]]
    try:
        results = judge.score([PointwiseItem(r["prompt"], r["completion"], r.get("category"), r.get("expected"))
                               for r in candidates], hide_reasoning=not cfg.judge_sees_reasoning)
    finally:
        judge.close()
    by_key = {r["key"]: res for r, res in zip(candidates, results, strict=True)}
    passing: dict[str, list[dict[str, Any]]] = defaultdict(list)
    judged = []
    for r in rows:
        res = by_key.get(r["key"])
        row = {**r, "score": res.score if res else None, "verdict": res.verdict if res else None,
               "judge_failures": res.failures if res else 0, "cites_category": retrieval_correct(
                   spec, r.get("reasoning"), r.get("category"))}
        if r["malformed"]:
            row["dropped"] = f"malformed: {r['malformed']}"
        elif res.score is None:
            row["dropped"] = f"judge failed: {res.errors[0] if res.errors else 'no score'}"
        elif res.score < cfg.threshold:
            row["dropped"] = f"score {res.score:g} < {cfg.threshold:g}"
        elif cfg.require_citation and row["cites_category"] is False:
            row["dropped"] = "reasoning does not cite the category"
        else:
            row["dropped"] = None
            passing[r["id"]].append(row)
        judged.append(row)
    for group in passing.values():  # best first; the limit per prompt keeps the data balanced across prompts
        group.sort(key=lambda x: (-x["score"], x["sample"]))
        for extra in group[cfg.keep_per_prompt:] if cfg.keep_per_prompt else []:
            extra["dropped"] = f"over keep_per_prompt={cfg.keep_per_prompt}"
    kept = [r for r in judged if r["dropped"] is None]
    folder = layout.filter
    summary = {"completions": len(rows), "malformed": len(rows) - len(candidates),
               "judge_failures": sum(1 for r in judged if (r["dropped"] or "").startswith("judge failed")),
               "kept": len(kept), "kept_fraction": len(kept) / len(rows) if rows else 0.0,
               "prompts": len({r["id"] for r in rows}), "prompts_with_kept": len({r["id"] for r in kept}),
               "per_category": _per_key(judged, "category"), "per_expected": _per_key(judged, "expected"),
               "policy_retrieval_kept": retrieval_summary(spec, kept), "threshold": cfg.threshold,
               "judge": recipe.judge.backend, "judge_repeats": judge.effective_repeats(),
               "judge_usage": judge.usage.to_dict()}
    errors = [res.errors[0] if res.errors else "no score" for res in results if not res.ok]
    publish("filter", folder, {"judged.jsonl": judged, "kept.jsonl": kept, "summary.json": summary},
            summary=summary, total=len(candidates), errors=errors, max_failures=recipe.judge.max_failures)
    return StageRun(kept, folder / "kept.jsonl", summary)


def _per_key(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[str(r.get(key))].append(r)
    return {name: {"completions": len(g), "malformed": sum(1 for r in g if r["malformed"]),
                   "kept": sum(1 for r in g if r["dropped"] is None),
                   "kept_fraction": round(sum(1 for r in g if r["dropped"] is None) / len(g), 3),
                   "prompts_with_kept": len({r["id"] for r in g if r["dropped"] is None}),
                   "prompts": len({r["id"] for r in g})}
            for name, g in sorted(groups.items())}
