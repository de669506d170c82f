"""Judging answer files: what `deliberate judge` runs.

Pointwise: a file of (prompt, response[, category, expected, id]) rows becomes `judgments.jsonl` (each row with
its score, verdict, rationale and failures) plus `summary.json` and `judge_usage.json`. Pairwise: two answer
files, matched by id (or by row when they have no ids, with the prompts checked), become `pairwise.jsonl` and a
`pairwise_summary.json` with the first file's win rate against the second.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from statistics import mean
from typing import Any

from deliberate.errors import DeliberateError
from deliberate.judges.base import Judge, PairwiseItem, PointwiseItem
from deliberate.services.data import read_table
from deliberate.services.io import write_json, write_jsonl


def _rows(path: Path, response_column: str | None) -> tuple[list[dict[str, Any]], str]:
    df = read_table(path)
    column = response_column or next((c for c in ("response", "answer", "completion") if c in df.columns), None)
    if column is None or column not in df.columns or "prompt" not in df.columns:
        raise DeliberateError(
            f"{path}: needs a 'prompt' column and a response column ({response_column or 'response, answer or completion'}); "
            f"its columns are: {', '.join(map(str, df.columns))}"
        )
    rows = df.to_dict("records")
    for r in rows:
        for key in ("category", "expected"):
            if key in r and not isinstance(r[key], str):
                r[key] = None
    return rows, column


def judge_file(judge: Judge, path: Path, out_dir: Path, response_column: str | None = None) -> dict[str, Any]:
    rows, column = _rows(path, response_column)
    items = [PointwiseItem(str(r["prompt"]), str(r[column]), r.get("category") or None, r.get("expected") or None)
             for r in rows]
    results = judge.score(items)
    out = [{**r, "score": res.score, "verdict": res.verdict, "rationale": res.rationale, "scores": res.scores,
            "failures": res.failures, "errors": res.errors} for r, res in zip(rows, results, strict=True)]
    judged = [res for res in results if res.ok]
    summary = {
        "input": str(path), "items": len(items), "judged": len(judged), "failed": len(items) - len(judged),
        "mean_score": round(mean(r.score for r in judged), 3) if judged else None,
        "verdicts": dict(Counter(r.verdict for r in judged if r.verdict)), "usage": judge.usage.to_dict(),
    }
    write_jsonl(out_dir / "judgments.jsonl", out)
    write_json(out_dir / "summary.json", summary)
    write_json(out_dir / "judge_usage.json", judge.usage.to_dict())
    return summary


def compare_files(judge: Judge, first: Path, second: Path, out_dir: Path, criterion: str,
                  response_column: str | None = None) -> dict[str, Any]:
    a_rows, a_col = _rows(first, response_column)
    b_rows, b_col = _rows(second, response_column)
    if "id" in (a_rows[0] if a_rows else {}) and "id" in (b_rows[0] if b_rows else {}):
        by_id = {str(r["id"]): r for r in b_rows}
        pairs = [(r, by_id[str(r["id"])]) for r in a_rows if str(r["id"]) in by_id]
    else:
        if len(a_rows) != len(b_rows):
            raise DeliberateError(f"{first} and {second} have no id column and different lengths")
        pairs = list(zip(a_rows, b_rows, strict=True))
    if not pairs:
        raise DeliberateError(f"{first} and {second} share no ids")
    for a, b in pairs:
        if str(a["prompt"]) != str(b["prompt"]):
            raise DeliberateError(f"{first} and {second} disagree on the prompt of row {a.get('id', '?')}")
    items = [PairwiseItem(str(a["prompt"]), str(a[a_col]), str(b[b_col]), a.get("category") or None,
                          a.get("expected") or None) for a, b in pairs]
    results = judge.compare(items, criterion)
    out = [{"id": a.get("id"), "prompt": a["prompt"], "first": a[a_col], "second": b[b_col], "wins": r.wins,
            "losses": r.losses, "ties": r.ties, "failures": r.failures, "errors": r.errors}
           for (a, b), r in zip(pairs, results, strict=True)]
    totals = {k: sum(getattr(r, k) for r in results) for k in ("wins", "losses", "ties", "failures")}
    comparisons = totals["wins"] + totals["losses"] + totals["ties"]
    summary = {
        "first": str(first), "second": str(second), "criterion": criterion, "items": len(items), **totals,
        "win_rate": round((totals["wins"] + 0.5 * totals["ties"]) / comparisons, 4) if comparisons else None,
        "usage": judge.usage.to_dict(),
    }
    write_jsonl(out_dir / "pairwise.jsonl", out)
    write_json(out_dir / "pairwise_summary.json", summary)
    write_json(out_dir / "judge_usage.json", judge.usage.to_dict())
    return summary
