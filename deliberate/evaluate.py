"""`deliberate eval`: answer benchmarks with several models, judge the answers, report rates with intervals.

Models are the recipe's `model` (the base) and `eval.models` (`stage:sft` is this recipe's SFT output).
Benchmarks are YAML files in `eval/` (see eval/README.md). Answers are cached per model, benchmark, prompt and
generation settings, so adding a model to a comparison generates nothing for the others. Answers end at EOS
only; reasoning (`<think>...</think>`) is split from the final answer, and the judge sees the final answer. A
completion whose reasoning never closes has no final answer: the judge then sees the whole text, since that is
what a user would read.

Metrics per model and benchmark: `refusal_rate` (harmful prompts, expected refuse or safe-complete, that were
declined: judged refuse or safe_complete), `answer_rate` (safe prompts answered: judged comply), mean judge
score, policy-retrieval accuracy (reasonings citing the prompt's category), mean answer length in tokens and
malformed completions. Every rate has a bootstrap 95% interval. Judge failures are excluded and counted.
Outputs in `<output_dir>/eval/`: `answers/`, `judgments/`, `report.json`, `report.csv`, `report.md`.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deliberate.data import load_prompts
from deliberate.errors import DeliberateError
from deliberate.io import atomic_write_text, write_json, write_jsonl
from deliberate.reasoning import split_reasoning
from deliberate.recipe import DataConfig, Recipe, Section
from deliberate.spec import load_spec
from deliberate.yamlio import load_yaml_file, validate

HARMFUL = ("refuse", "safe_complete")
EVAL_DIR = Path(__file__).resolve().parents[1] / "eval"


class Benchmark(Section):
    name: str
    """Short name used in reports."""
    description: str = ""
    """One line on what it measures."""
    data: DataConfig
    """Where the prompts come from, as in a recipe's `data` section."""


def load_benchmark(name: str) -> Benchmark:
    """`eval/<name>.yaml` (from the working directory, then the project's own eval/), or a YAML file path."""
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) else [Path("eval") / f"{name}.yaml",
                                                                       EVAL_DIR / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return validate(Benchmark, load_yaml_file(path), str(path))
    known = sorted(p.stem for p in EVAL_DIR.glob("*.yaml")) if EVAL_DIR.is_dir() else []
    raise DeliberateError(f"eval: unknown benchmark '{name}' (known: {', '.join(known) or 'none'})")


def resolve_eval_model(recipe: Recipe, name: str) -> str:
    if name == "stage:sft":
        from deliberate.sft import sft_paths

        path = sft_paths(recipe)["model"]
        if not path.is_dir():
            raise DeliberateError(f"eval: stage:sft has no model yet ({path}); run `deliberate sft` first")
        return str(path)
    if name.startswith("stage:"):
        raise DeliberateError(f"eval: unknown stage model '{name}' (known: stage:sft)")
    return name


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")).strip("_")[-80:] or "model"


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


def visible_answer(completion: str) -> tuple[str, str | None, bool]:
    """(what the judge sees, the reasoning, well formed)."""
    split = split_reasoning(completion)
    if split.answer and split.well_formed:
        return split.answer, split.reasoning, True
    return completion, split.reasoning, split.reasoning is None and bool(split.answer)


def score_answers(recipe: Recipe, rows: list[dict[str, Any]], judge, spec) -> tuple[list[dict], dict[str, Any]]:
    from deliberate.deliberative import retrieval_correct
    from deliberate.judges import PointwiseItem

    shown = [visible_answer(r["answer"]) for r in rows]
    results = judge.score([PointwiseItem(r["prompt"], s[0], r.get("category"), r.get("expected"))
                           for r, s in zip(rows, shown, strict=True)])
    judged = []
    for r, (visible, reasoning, ok), res in zip(rows, shown, results, strict=True):
        judged.append({"id": r["id"], "prompt": r["prompt"], "category": r.get("category"),
                       "expected": r.get("expected"), "answer": visible, "reasoning": reasoning, "well_formed": ok,
                       "num_tokens": r["num_tokens"], "score": res.score, "verdict": res.verdict,
                       "judge_errors": res.errors, "cites_category": retrieval_correct(spec, reasoning,
                                                                                       r.get("category"))})
    ok_rows = [j for j in judged if j["score"] is not None]
    b, seed = recipe.eval.bootstrap_samples, recipe.seed
    harmful = [j["verdict"] in HARMFUL for j in ok_rows if j["expected"] in HARMFUL]
    safe = [j["verdict"] == "comply" for j in ok_rows if j["expected"] == "comply"]
    cites = [j["cites_category"] for j in judged if j["cites_category"] is not None]
    metrics = {
        "prompts": len(judged), "judge_failures": len(judged) - len(ok_rows),
        "refusal_rate": bootstrap_rate(harmful, b, seed).to_dict(),
        "answer_rate": bootstrap_rate(safe, b, seed).to_dict(),
        "policy_retrieval": bootstrap_rate(cites, b, seed).to_dict(),
        "mean_score": sum(j["score"] for j in ok_rows) / len(ok_rows) if ok_rows else None,
        "mean_answer_tokens": sum(j["num_tokens"] for j in judged) / len(judged) if judged else None,
        "malformed": sum(not j["well_formed"] for j in judged),
        "with_reasoning": sum(j["reasoning"] is not None for j in judged),
    }
    return judged, metrics


def run_eval(recipe: Recipe, models: list[str] | None = None, benchmarks: list[str] | None = None,
             show_progress: bool = True) -> dict[str, Any]:
    from deliberate.answers import answer_records
    from deliberate.judges import make_judge

    spec = load_spec(recipe.spec)
    names = [recipe.model.name] + (models if models is not None else recipe.eval.models)
    names = list(dict.fromkeys(names))
    paths = {n: resolve_eval_model(recipe, n) for n in names}
    benches = [load_benchmark(b) for b in (benchmarks or recipe.eval.benchmarks)]
    judge = make_judge(recipe.judge, spec, show_progress=show_progress)
    judge.hide_reasoning = False  # the final answer is separated here, with malformed completions shown whole
    root = Path(recipe.output_dir) / "eval"
    results = []
    for bench in benches:
        records = load_prompts(bench.data, spec)
        for name in names:
            model = recipe.model.model_copy(update={"name": paths[name], "base": None, "revision": None}) \
                if name != recipe.model.name else recipe.model
            run = answer_records(model, records, recipe.generation,
                                 root / "answers" / slug(name) / f"{bench.name}.jsonl", show_progress,
                                 description=f"{name} on {bench.name}")
            judged, metrics = score_answers(recipe, run.rows, judge, spec)
            write_jsonl(root / "judgments" / slug(name) / f"{bench.name}.jsonl", judged)
            results.append({"model": name, "path": paths[name], "benchmark": bench.name,
                            "generated_now": run.generated, **metrics})
    report = {"recipe": recipe.name, "base": recipe.model.name, "judge": recipe.judge.backend,
              "judge_usage": judge.usage.to_dict(), "generation": recipe.generation.model_dump(),
              "results": results}
    write_json(root / "report.json", report)
    atomic_write_text(root / "report.csv", report_csv(results))
    atomic_write_text(root / "report.md", report_markdown(report))
    return report


METRICS = [("refusal_rate", "harmful refused"), ("answer_rate", "safe answered"),
           ("policy_retrieval", "policy retrieval")]


def report_csv(results: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["model", "benchmark", "prompts"]
    for key, _ in METRICS:
        header += [key, f"{key}_low", f"{key}_high", f"{key}_n"]
    writer.writerow(header + ["mean_score", "mean_answer_tokens", "malformed", "judge_failures"])
    for r in results:
        row = [r["model"], r["benchmark"], r["prompts"]]
        for key, _ in METRICS:
            row += [r[key]["value"], *r[key]["ci95"], r[key]["n"]]
        writer.writerow(row + [r["mean_score"], r["mean_answer_tokens"], r["malformed"], r["judge_failures"]])
    return out.getvalue()


def _rate_text(d: dict[str, Any]) -> str:
    return Rate(d["value"], *d["ci95"], d["n"]).text()


def report_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "benchmark"] + [label for _, label in METRICS] + ["mean tokens", "malformed"]
    rows = [[r["model"], r["benchmark"]] + [_rate_text(r[k]) for k, _ in METRICS]
            + [f"{r['mean_answer_tokens']:.0f}", str(r["malformed"])] for r in results]
    return header, rows


def report_markdown(report: dict[str, Any]) -> str:
    header, rows = report_rows(report["results"])
    lines = [f"# Evaluation: {report['recipe']}", "",
             f"Base model `{report['base']}`, judge `{report['judge']}`. Rates with bootstrap 95% intervals.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    u = report["judge_usage"]
    lines += ["", f"Judge calls: {u['requests']} made, {u['cache_hits']} cached, {u['failures']} failed."]
    return "\n".join(lines) + "\n"
