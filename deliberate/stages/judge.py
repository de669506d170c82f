"""Judging answer files: what `deliberate judge` runs.

Pointwise: a file of (prompt, response[, category, expected, id]) rows becomes `judgments.jsonl` (each row with
its score, verdict, rationale and failures) plus `summary.json` and `judge_usage.json`. Pairwise: two answer
files, matched by id (or by row when they have no ids, with the prompts checked), become `pairwise.jsonl` and a
`pairwise_summary.json` with the first file's win rate against the second.

Columns are read with the recipe's `data` mapping (`data.columns.prompt/category/expected/id`, `label_map`,
`category_map`, or one `data.category` / `data.expected` for every row); the response column is found by name
(`response`, `answer`, `completion`) or given. Failed judgments follow `deliberate.services.failures`: beyond
`judge.max_failures` the outputs go to `judge/incomplete/` and the earlier ones stay.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from statistics import mean
from typing import Any

from deliberate.config import DataConfig
from deliberate.errors import DeliberateError
from deliberate.judges.base import Judge, PairwiseItem, PointwiseItem
from deliberate.services.data import load_prompts, read_table
from deliberate.services.failures import publish
from deliberate.services.spec import PolicySpec

RESPONSE_COLUMNS = ("response", "answer", "completion")


def _rows(path: Path, response_column: str | None, data: DataConfig,
          spec: PolicySpec | None) -> tuple[list[dict[str, Any]], str]:
    """The file's rows as {id, prompt, category, expected, response, ...the other columns}."""
    columns = list(read_table(path).columns)
    column = response_column or next((c for c in RESPONSE_COLUMNS if c in columns), None)
    if column is None or column not in columns:
        raise DeliberateError(
            f"{path}: no response column ({response_column or ', '.join(RESPONSE_COLUMNS)}; set it with "
            f"--response-column); its columns are: {', '.join(map(str, columns))}")
    # The recipe's column mapping, not its row selection: `where` and `limit` describe the training data.
    mapping = DataConfig(source=str(path), columns=data.columns, category=data.category, expected=data.expected,
                         category_map=data.category_map, label_map=data.label_map)
    rows = []
    for record in load_prompts(mapping, spec):
        meta = dict(record.meta)
        response = meta.pop(column, None)
        rows.append({**{k: v for k, v in record.to_dict().items() if k != "meta"}, **meta,
                     "response": "" if response is None else str(response)})
    return rows, column


def _check_usable(judge: Judge, path: Path, rows: list[dict[str, Any]]) -> None:
    lacking = [r for r in rows if judge.backend.missing(r.get("category"), r.get("expected"))]
    if lacking:
        raise DeliberateError(
            f"{path}: {len(lacking)} of {len(rows)} rows cannot be judged by the {judge.backend.kind} judge: "
            f"{judge.backend.missing(None, None)}. Name the label column with --set data.columns.expected=COLUMN "
            "(or the category column with data.columns.category), or set data.expected for every row")


def judge_file(judge: Judge, path: Path, out_dir: Path, response_column: str | None = None, *,
               data: DataConfig | None = None, spec: PolicySpec | None = None,
               max_failures: float = 0.0) -> dict[str, Any]:
    rows, _ = _rows(path, response_column, data or DataConfig(), spec)
    _check_usable(judge, path, rows)
    items = [PointwiseItem(r["prompt"], r["response"], r["category"], r["expected"]) for r in rows]
    results = judge.score(items)
    out = [{**r, "score": res.score, "verdict": res.verdict, "rationale": res.rationale, "scores": res.scores,
            "failures": res.failures, "errors": res.errors} for r, res in zip(rows, results, strict=True)]
    judged = [res for res in results if res.ok]
    summary = {
        "input": str(path), "items": len(items), "judged": len(judged), "failed": len(items) - len(judged),
        "mean_score": round(mean(r.score for r in judged), 3) if judged else None,
        "verdicts": dict(Counter(r.verdict for r in judged if r.verdict)), "usage": judge.usage.to_dict(),
    }
    errors = [res.errors[0] if res.errors else "no score" for res in results if not res.ok]
    publish("judge", out_dir, {"judgments.jsonl": out, "summary.json": summary, "judge_usage.json":
            judge.usage.to_dict()}, summary=summary, total=len(items), errors=errors, max_failures=max_failures)
    return summary


def compare_files(judge: Judge, first: Path, second: Path, out_dir: Path, criterion: str,
                  response_column: str | None = None, *, data: DataConfig | None = None,
                  spec: PolicySpec | None = None, max_failures: float = 0.0) -> dict[str, Any]:
    a_rows, _ = _rows(first, response_column, data or DataConfig(), spec)
    b_rows, _ = _rows(second, response_column, data or DataConfig(), spec)
    a_ids = [r["id"] for r in a_rows]
    positional = all(i == str(n) for n, i in enumerate(a_ids))  # row numbers: the files have no id column
    if positional:
        if len(a_rows) != len(b_rows):
            raise DeliberateError(f"{first} and {second} have no id column and different lengths")
        pairs = list(zip(a_rows, b_rows, strict=True))
    else:
        by_id = {r["id"]: r for r in b_rows}
        pairs = [(r, by_id[r["id"]]) for r in a_rows if r["id"] in by_id]
    if not pairs:
        raise DeliberateError(f"{first} and {second} share no ids")
    for a, b in pairs:
        if a["prompt"] != b["prompt"]:
            raise DeliberateError(f"{first} and {second} disagree on the prompt of row {a['id']}")
    if criterion == "policy":
        _check_usable(judge, first, [a for a, _ in pairs])
    items = [PairwiseItem(a["prompt"], a["response"], b["response"], a["category"], a["expected"]) for a, b in pairs]
    results = judge.compare(items, criterion)
    out = [{"id": a["id"], "prompt": a["prompt"], "first": a["response"], "second": b["response"], "wins": r.wins,
            "losses": r.losses, "ties": r.ties, "failures": r.failures, "dropped": r.dropped, "errors": r.errors}
           for (a, b), r in zip(pairs, results, strict=True)]
    # `dropped`: successful judgments left out because the other order of their repeat failed
    totals = {k: sum(getattr(r, k) for r in results) for k in ("wins", "losses", "ties", "failures", "dropped")}
    comparisons = totals["wins"] + totals["losses"] + totals["ties"]
    summary = {
        "first": str(first), "second": str(second), "criterion": criterion, "items": len(items), **totals,
        "win_rate": round((totals["wins"] + 0.5 * totals["ties"]) / comparisons, 4) if comparisons else None,
        "usage": judge.usage.to_dict(),
    }
    errors = [e for r in results for e in r.errors]
    publish("judge", out_dir, {"pairwise.jsonl": out, "pairwise_summary.json": summary, "judge_usage.json":
            judge.usage.to_dict()}, summary=summary, total=comparisons + totals["failures"] + totals["dropped"],
            errors=errors,
            max_failures=max_failures)
    return summary
