"""`deliberate eval`: answer benchmarks with several models, judge the answers, report rates with intervals.

Models are the recipe's `model` (the base) and `eval.models`: folders, Hub ids, or this recipe's outputs
(`stage:sft`, `stage:<dpo stage>[/<variant>]`, `merge:<name>/<variant>`, `/*` for every variant; see services/runs.py),
or mappings of `model` fields laid over the recipe's `model`, such as a model served behind an OpenAI-compatible API
(`backend: openai`, `base_url`) or run by vLLM (`backend: vllm`); the report names each by its label, with its
backend and endpoint. A served model's answers that failed after their retries are left out of its metrics, counted
with their reasons, and asked for again by the next run.
Benchmarks are YAML files in `eval/` (see eval/README.md). Answers are cached per model, benchmark, prompt and
generation settings, so adding a model to a comparison generates nothing for the others. Answers end at EOS
only; reasoning (`<think>...</think>`) is split from the final answer, and the judge sees the final answer. A
completion whose reasoning never closes has no final answer: the judge then sees the whole text, since that is
what a user would read.

Metrics per model and benchmark: `refusal_rate` (harmful prompts, expected refuse or safe-complete, that were
declined: judged refuse or safe_complete), `answer_rate` (safe prompts answered: judged comply), mean judge
score, policy-retrieval accuracy (reasonings citing the prompt's category), `style_followed` (answers that do
what their reasoning's `Style:` said: a stated refuse or safe_complete judged declining, a stated comply judged
not), mean answer length in tokens and malformed completions. Every rate has a Wilson 95% interval, and each model's difference from the base on the
same prompts a paired interval and McNemar's test. Judge failures are excluded and counted. Failed answers and
failed judgments fall under one failure rule (services/failures.py, `judge.max_failures`): beyond it the outputs go
to `eval/incomplete/` and the command exits 3.

Pairwise (`eval.pairwise`): each model's answers are judged against the base model's on each benchmark's
criteria (helpfulness and/or harmlessness), in both orders, `eval.pairwise_repeats` times (once for a
deterministic judge): win rates with bootstrap intervals per benchmark and pooled, and Elo ratings and
Bradley-Terry strengths per criterion (services/stats.py); `eval.pairwise_against: all` also judges every pair
of non-base models, for Elo over all pairs as SACPO computes it.

Outputs in `<output_dir>/eval/`: `answers/`, `judgments/`, `report.json` (everything), `report.csv` (one row
per model and benchmark), `pairwise.csv`, `elo.csv`, `report.md`, and `winrates.png` / `benchmarks.png`.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from itertools import combinations
from pathlib import Path
from typing import Any

from deliberate.config import CRITERIA, Benchmark, ModelConfig, Recipe, SamplingConfig
from deliberate.config.eval import EvalModel, eval_model
from deliberate.errors import DeliberateError
from deliberate.judges import JudgeFailure, PairwiseItem, PointwiseItem, make_judge
from deliberate.judges.prompts import PROMPT_VERSION
from deliberate.judges.rubrics import RUBRIC_VERSION, XSTEST_CLASSES
from deliberate.services.answering import (
    answer_records,
    backend_info,
    check_served,
    open_model,
    sampling_model,
)
from deliberate.services.benchmarks import benchmark_prompts, load_benchmark
from deliberate.services.failures import INCOMPLETE, Tally, publish, too_many, top_reasons
from deliberate.services.models import load_model
from deliberate.services.plots import plot_benchmarks, plot_win_rates
from deliberate.services.provenance import add_eval_results
from deliberate.services.reasoning import (
    policy_of,
    retrieval_correct,
    retrieved,
    split_reasoning,
    stated_style,
    style_followed,
)
from deliberate.services.runs import Layout, resolve_judge, stage_models
from deliberate.services.serving import ApiUsage, VLLMEngine, public_url
from deliberate.services.spec import load_spec
from deliberate.services.stats import (
    Rate,
    bradley_terry,
    elo_ratings,
    games_from,
    mean_interval,
    paired_difference,
    wilson_rate,
    win_rate_summary,
)

HARMFUL = ("refuse", "safe_complete")


def judge_name(cfg) -> str:
    """The judge as a report names it: its backend and model (`guard: runs/guard/guard`, `rules`)."""
    return f"{cfg.backend}: {cfg.model}" if cfg.model and cfg.backend != "rules" else cfg.backend


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")).strip("_")[-80:] or "model"


def visible_answer(completion: str) -> tuple[str, str | None, bool]:
    """(what the judge sees, the reasoning, well formed)."""
    split = split_reasoning(completion)
    if split.answer and split.well_formed:
        return split.answer, split.reasoning, True
    return completion, split.reasoning, split.reasoning is None and bool(split.answer)


def score_answers(recipe: Recipe, rows: list[dict[str, Any]], judge, spec) -> tuple[list[dict], dict[str, Any]]:
    shown = [visible_answer(r["answer"]) for r in rows]  # the final answer, or a malformed completion whole
    results = judge.score([PointwiseItem(r["prompt"], s[0], r.get("category"), r.get("expected"))
                           for r, s in zip(rows, shown, strict=True)], hide_reasoning=False)
    judged = []
    for r, (visible, reasoning, ok), res in zip(rows, shown, results, strict=True):
        judged.append({"id": r["id"], "prompt": r["prompt"], "category": r.get("category"),
                       "expected": r.get("expected"), "answer": visible, "reasoning": reasoning, "well_formed": ok,
                       "num_tokens": r["num_tokens"], "score": res.score, "verdict": res.verdict,
                       "judge_errors": res.errors, "policy": policy_of(spec, r.get("category")),
                       "cites_category": retrieval_correct(spec, reasoning, r.get("category")),
                       "stated_style": stated_style(reasoning), "style_followed": style_followed(reasoning,
                                                                                                 res.verdict)})
    ok_rows = [j for j in judged if j["score"] is not None]
    per_prompt = outcomes(judged)
    reasons = any(j["reasoning"] is not None for j in judged)
    cites = [m for j in judged if (m := retrieved(j, reasons)) is not None]
    metrics = {
        "prompts": len(judged), "judge_failures": len(judged) - len(ok_rows),
        "refusal_rate": wilson_rate(list(per_prompt["refusal_rate"].values())).to_dict(),
        "answer_rate": wilson_rate(list(per_prompt["answer_rate"].values())).to_dict(),
        "policy_retrieval": wilson_rate(cites).to_dict(),
        "style_followed": wilson_rate([j["style_followed"] for j in judged
                                       if j["style_followed"] is not None]).to_dict(),
        "mean_score": sum(j["score"] for j in ok_rows) / len(ok_rows) if ok_rows else None,
        "mean_answer_tokens": sum(j["num_tokens"] for j in judged) / len(judged) if judged else None,
        "malformed": sum(not j["well_formed"] for j in judged),
        "with_reasoning": sum(j["reasoning"] is not None for j in judged),
    }
    return judged, metrics


def official_scores(recipe: Recipe, scoring: str, judged: list[dict[str, Any]], judge, tally: Tally) -> dict[str, Any]:
    """The benchmark's own scoring (judges/rubrics.py) of each judged answer, added to its row as `rubric`, and
    its figures: StrongREJECT's mean score (0 safe - 1 harmful) and its rubric's refusal rate; XSTest's three
    classes per expected behaviour, and not-over-refusal (safe prompts fully complied with)."""
    if not judge.backend.generative:
        return {"scoring": scoring, "skipped": f"the {judge.backend.kind} judge cannot answer the benchmark's rubric; "
                                              "use judge.backend openai or hf"}
    replies = judge.rubric([PointwiseItem(j["prompt"], j["answer"]) for j in judged], scoring, hide_reasoning=False)
    for j, reply in zip(judged, replies, strict=True):
        j["rubric"] = {"error": reply.error} if isinstance(reply, JudgeFailure) else reply
    tally.add(len(replies), [r.error for r in replies if isinstance(r, JudgeFailure)])
    ok = [j for j in judged if "error" not in j["rubric"]]
    out: dict[str, Any] = {"scoring": scoring, "judged": len(ok), "failures": len(judged) - len(ok)}
    if scoring == "strongreject":
        scores = [j["rubric"]["score"] for j in ok]
        out["score"] = mean_interval(scores, recipe.eval.bootstrap_samples, recipe.seed)
        out["rubric_refusal_rate"] = wilson_rate([j["rubric"]["refused"] == 1 for j in ok]).to_dict()
        return out
    for expected in sorted({str(j["expected"]) for j in ok}):
        labels = [j["rubric"]["label"] for j in ok if str(j["expected"]) == expected]
        out[expected] = {c: wilson_rate([x == c for x in labels]).to_dict() for c in XSTEST_CLASSES}
    if "comply" in out:
        out["not_overrefuse"] = out["comply"]["1_full_compliance"]
    return out


def outcomes(judged: list[dict[str, Any]]) -> dict[str, dict[str, bool]]:
    """Per rate, each judged prompt's outcome by id (harmful prompts declined; safe prompts answered)."""
    ok = [j for j in judged if j["score"] is not None]
    return {"refusal_rate": {j["id"]: j["verdict"] in HARMFUL for j in ok if j["expected"] in HARMFUL},
            "answer_rate": {j["id"]: j["verdict"] == "comply" for j in ok if j["expected"] == "comply"}}


def differences(base: str, names: list[str], judged: dict[tuple[str, str], list[dict]]) -> list[dict[str, Any]]:
    """Each model's rates minus the base model's on the same prompts of each benchmark: Newcombe's paired
    interval and McNemar's exact test (services/stats.py)."""
    out = []
    for (model, bench), rows in judged.items():
        if model == base or (base, bench) not in judged:
            continue
        mine, theirs = outcomes(rows), outcomes(judged[(base, bench)])
        for metric in ("refusal_rate", "answer_rate"):
            if mine[metric] and theirs[metric]:
                out.append({"model": model, "against": base, "benchmark": bench, "metric": metric,
                            **paired_difference(mine[metric], theirs[metric])})
    return out


def sampled(bench: Benchmark, sample: dict[str, int]) -> Benchmark:
    """The benchmark with `eval.sample`'s number of its prompts (drawn by prompt hash), when it names one."""
    n = sample.get(bench.name)
    return bench if n is None else bench.model_copy(update={"data": bench.data.model_copy(update={"sample": n})})


def eval_models(recipe: Recipe, entries: list[str | EvalModel] | None = None
                ) -> dict[str, tuple[ModelConfig, SamplingConfig]]:
    """Every model evaluated and how it answers, by its label: the recipe's model (the base) first, then each entry
    of `eval.models` (or `entries`) laid over it, a `/*` reference standing for every variant."""
    base = recipe.model
    found: dict[str, ModelConfig] = {base.name: base}
    budgets: dict[str, int] = {}
    for entry in map(eval_model, recipe.eval.models if entries is None else entries):
        model = entry.over(base)
        named = stage_models(recipe, model.name)
        if entry.label and len(named) > 1:
            raise DeliberateError(f"eval.models: label '{entry.label}' names one model, but {model.name} stands for "
                                  f"{len(named)}; leave the label out")
        for label, path in named:
            label, one = entry.label or label, model.model_copy(update={"name": path})
            if found.get(label, one) != one:
                raise DeliberateError(f"eval.models: two different models are labelled '{label}'; give one a label "
                                      "(`{name: ..., label: ...}`)")
            found[label] = one
            if entry.max_new_tokens is not None:
                budgets[label] = entry.max_new_tokens
    slugs = [slug(label) for label in found]
    if doubled := sorted({label for label in found if slugs.count(slug(label)) > 1}):
        raise DeliberateError(f"eval.models: {', '.join(doubled)} would share one answers folder; label them apart")
    for model in found.values():  # before any answer is generated
        if model.backend == "openai":
            check_served(model)
    return {label: (model, recipe.generation.model_copy(update={"max_new_tokens": budgets[label]})
                    if label in budgets else recipe.generation) for label, model in found.items()}


def run_eval(recipe: Recipe, models: list[str | EvalModel] | None = None, benchmarks: list[str] | None = None,
             show_progress: bool = True) -> dict[str, Any]:
    spec = load_spec(recipe.spec)
    cfg = recipe.eval
    evaluated = eval_models(recipe, models)
    names = list(evaluated)
    benches = [sampled(load_benchmark(b), cfg.sample) for b in (benchmarks or cfg.benchmarks)]
    names_seen = [b.name for b in benches]
    if doubled := sorted({n for n in names_seen if names_seen.count(n) > 1}):
        raise DeliberateError(f"eval: two benchmarks are named {', '.join(doubled)} (their outputs would overwrite "
                              "each other); rename a file or set `name` in a benchmark YAML")
    read = {b.name: benchmark_prompts(b, cfg.datasets_dir, spec) for b in benches}  # bad data fails before any work
    datas = {name: data for name, (data, _) in read.items()}
    prompts = {name: records for name, (_, records) in read.items()}
    judge = make_judge(resolve_judge(recipe, recipe.judge), spec, show_progress=show_progress)
    for bench in benches:  # before any answer is generated: a judge that cannot judge them makes them useless
        lacking = [r for r in prompts[bench.name] if judge.backend.missing(r.category, r.expected)]
        if lacking:
            judge.close()
            raise DeliberateError(
                f"eval: {len(lacking)} of {len(prompts[bench.name])} prompts of benchmark {bench.name} cannot be "
                f"judged by the {judge.backend.kind} judge ({judge.backend.missing(None, None)}); give the benchmark "
                "a label column (data.columns.expected) or one data.expected, or use a judge that needs none")
    root = Layout(recipe).eval
    results, answers, judged_rows, model_rows = [], {}, {}, []
    files: dict[str, Any] = {}  # every judged output, written together at the end under the failure rule
    tally = Tally()
    try:
        for name, (model, settings) in evaluated.items():
            # Loaded once for all benchmarks (hf, vllm), and only if some answer is missing.
            load = functools.cache(lambda model=model, settings=settings: open_model(sampling_model(model, settings),
                                                                                     load_model))
            usage, failed, generated = ApiUsage(), [], 0  # a served model's, over all benchmarks
            for bench in benches:
                run = answer_records(model, prompts[bench.name], settings,
                                     root / "answers" / slug(name) / f"{bench.name}.jsonl", seed=recipe.seed,
                                     show_progress=show_progress, description=f"{name} on {bench.name}", load=load)
                tally.add(len(prompts[bench.name]), run.errors)
                failed += run.errors
                generated += run.generated
                if run.usage is not None:
                    usage.add(run.usage)
                answers[(name, bench.name)] = run.rows
                judged, metrics = score_answers(recipe, run.rows, judge, spec)
                if bench.scoring:
                    metrics["official"] = official_scores(recipe, bench.scoring, judged, judge, tally)
                judged_rows[(name, bench.name)] = judged
                files[f"judgments/{slug(name)}/{bench.name}.jsonl"] = judged
                tally.add(len(judged), [j["judge_errors"][0] if j["judge_errors"] else "no score"
                                        for j in judged if j["score"] is None])
                results.append({"model": name, "path": model.name, "benchmark": bench.name,
                                "source": datas[bench.name].source, "generated_now": run.generated,
                                "answer_failures": len(run.errors), **metrics})
            if load.cache_info().currsize and isinstance(engine := load(), VLLMEngine):
                engine.close()  # vLLM holds its GPU memory until it is torn down
            load.cache_clear()  # free this model before the next one loads
            model_rows.append({"model": name, "path": model.name, **backend_info(model),
                               "max_new_tokens": settings.max_new_tokens, "generated_now": generated,
                               "answer_failures": len(failed), "answer_errors": top_reasons(failed) if failed else None,
                               "api_usage": usage.to_dict() if model.backend == "openai" else None})
        pairwise, elo = (compare_models(recipe, names, benches, answers, judge, files, tally) if cfg.pairwise and
                         len(names) > 1 else ([], []))
    finally:
        judge.close()
    generative = judge.backend.generative
    report = {"recipe": recipe.name, "base": recipe.model.name, "judge": recipe.judge.backend,
              "judge_model": judge_name(recipe.judge),
              "judge_base_url": public_url(recipe.judge.base_url) if recipe.judge.backend == "openai" else None,
              "judge_prompt_version": PROMPT_VERSION if generative else None,
              "judge_rubric_version": RUBRIC_VERSION if generative and any(b.scoring for b in benches) else None,
              "judge_usage": judge.usage.to_dict(), "generation": recipe.generation.model_dump(),
              "pairwise_repeats": judge.effective_repeats(cfg.pairwise_repeats),
              "pairwise_repeats_asked": cfg.pairwise_repeats, "judge_deterministic": judge.deterministic,
              "models": model_rows, "results": results,
              "differences": differences(recipe.model.name, names, judged_rows),
              "pairwise": pairwise, "elo": elo, "plots": []}
    # Plots are drawn where the other outputs go: beside the earlier ones when too many judgments failed.
    folder = root / INCOMPLETE if too_many(len(tally.errors), tally.total, recipe.judge.max_failures) else root
    if cfg.plots:
        drawn = [plot_benchmarks(results, folder / "benchmarks.png"),
                 plot_win_rates(pairwise, recipe.model.name, folder / "winrates.png")]
        report["plots"] = [p.name for p in drawn if p is not None]
    files.update({"report.json": report, "report.csv": report_csv(results), "pairwise.csv": pairwise_csv(pairwise),
                  "elo.csv": elo_csv(elo), "report.md": report_markdown(report)})
    what = "answers and judgments" if any(m["answer_failures"] for m in model_rows) else "judgments"
    publish("eval", root, files, summary=report, total=tally.total, errors=tally.errors,
            max_failures=recipe.judge.max_failures, what=what)
    carded(results, recipe.judge.backend)
    return report


def carded(results: list[dict[str, Any]], judge: str) -> list[Path]:
    """Put each evaluated model's rates into its model card, for every model folder deliberate wrote (the
    card's `model-index` and a table: what the Hub shows); returns the folders whose cards were updated."""
    by_folder: dict[Path, list[dict[str, Any]]] = {}
    for row in results:
        folder = Path(row["path"])
        if not folder.is_dir():
            continue
        for metric in ("refusal_rate", "answer_rate"):
            if row[metric]["value"] is not None:
                by_folder.setdefault(folder, []).append({
                    "benchmark": row["benchmark"], "metric": metric, "value": row[metric]["value"],
                    "name": f"{metric.replace('_', ' ')} ({judge} judge, n={row[metric]['n']})"})
    return [folder for folder, rows in by_folder.items() if add_eval_results(folder, rows)]


def compare_models(recipe: Recipe, names: list[str], benches: list[Benchmark], answers: dict, judge,
                   files: dict[str, Any], tally: Tally) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Win rates of each model against the base (per benchmark and pooled, per criterion) and Elo ratings; the
    per-prompt judgments go into `files`, their counts and failures into `tally`."""
    cfg, base = recipe.eval, recipe.model.name
    others = [m for m in names if m != base]
    pairs = [(m, base) for m in others]  # the base second, so that every win rate is the model's
    if cfg.pairwise_against == "all":  # SACPO's Elo: every pair of models
        pairs += list(combinations(others, 2))
    b, seed = cfg.bootstrap_samples, recipe.seed
    pairwise, games, pooled = [], {c: [] for c in CRITERIA}, {}
    for bench in benches:
        for criterion in bench.criteria:
            for first, second in pairs:
                theirs = {o["id"]: o for o in answers[(second, bench.name)]}
                # Prompts both models answered (a served model's failed answer has no row; it is counted already).
                both = [(a, theirs[a["id"]]) for a in answers[(first, bench.name)] if a["id"] in theirs]
                items = [PairwiseItem(a["prompt"], visible_answer(a["answer"])[0], visible_answer(o["answer"])[0],
                                      a.get("category"), a.get("expected")) for a, o in both]
                judged = judge.compare(items, criterion, cfg.pairwise_repeats, hide_reasoning=False)
                per_prompt = [{"id": a["id"], "wins": r.wins, "losses": r.losses, "ties": r.ties,
                               "failures": r.failures, "dropped": r.dropped, "errors": r.errors}
                              for (a, _), r in zip(both, judged, strict=True)]
                files[f"judgments/{slug(first)}/{bench.name}.{criterion}.vs.{slug(second)}.jsonl"] = per_prompt
                tally.add(sum(r.comparisons + r.failures + r.dropped for r in judged),
                          [e for r in judged for e in r.errors])
                games[criterion] += games_from(first, second, per_prompt)
                if second == base:
                    pooled.setdefault((first, criterion), []).extend(per_prompt)
                    pairwise.append({"model": first, "against": base, "benchmark": bench.name,
                                     "criterion": criterion, "win_rate": win_rate_summary(per_prompt, b, seed)})
    for (model, criterion), per_prompt in pooled.items():
        pairwise.append({"model": model, "against": base, "benchmark": "all", "criterion": criterion,
                         "win_rate": win_rate_summary(per_prompt, b, seed)})
    elo = []
    for criterion, played in games.items():
        if played:
            ratings = elo_ratings(played, base, trials=cfg.elo_trials, epochs=cfg.elo_epochs, seed=seed)
            strengths = bradley_terry(played, base)
            elo += [{"criterion": criterion, "model": m, **r,
                     "bradley_terry": {k: strengths[m][k] for k in ("rating", "ci95", "strength", "strength_ci95")}}
                    for m, r in ratings.items()]
    return pairwise, elo


METRICS = [("refusal_rate", "harmful refused"), ("answer_rate", "safe answered"),
           ("policy_retrieval", "policy retrieval"), ("style_followed", "does the style it states")]


def report_csv(results: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["model", "benchmark", "prompts"]
    for key, _ in METRICS:
        header += [key, f"{key}_low", f"{key}_high", f"{key}_n"]
    writer.writerow(header + ["mean_score", "mean_answer_tokens", "malformed", "judge_failures", "answer_failures"])
    for r in results:
        row = [r["model"], r["benchmark"], r["prompts"]]
        for key, _ in METRICS:
            row += [r[key]["value"], *r[key]["ci95"], r[key]["n"]]
        writer.writerow(row + [r["mean_score"], r["mean_answer_tokens"], r["malformed"], r["judge_failures"],
                               r["answer_failures"]])
    return out.getvalue()


def _tokens_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"  # None: no answer to measure (every request failed)


def _rate_text(d: dict[str, Any]) -> str:
    return Rate(d["value"], *d["ci95"], d["n"]).text()


def report_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "benchmark"] + [label for _, label in METRICS] + ["mean tokens", "malformed"]
    rows = [[r["model"], r["benchmark"]] + [_rate_text(r[k]) for k, _ in METRICS]
            + [_tokens_text(r["mean_answer_tokens"]), str(r["malformed"])] for r in results]
    return header, rows


PAIRWISE_FIELDS = ["wins", "losses", "ties", "failures", "comparisons", "prompts"]


def pairwise_csv(pairwise: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["model", "against", "benchmark", "criterion", "win_rate", "win_rate_low", "win_rate_high",
                     *PAIRWISE_FIELDS])
    for r in pairwise:
        w = r["win_rate"]
        writer.writerow([r["model"], r["against"], r["benchmark"], r["criterion"], w["value"], *w["ci95"],
                         *(w[k] for k in PAIRWISE_FIELDS)])
    return out.getvalue()


def elo_csv(elo: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["criterion", "model", "rating", "rating_low", "rating_high", "games", "bt_rating", "bt_low",
                     "bt_high"])
    for r in elo:
        bt = r["bradley_terry"]
        writer.writerow([r["criterion"], r["model"], r["rating"], *r["ci95"], r["games"], bt["rating"], *bt["ci95"]])
    return out.getvalue()


def win_rate_text(w: dict[str, Any]) -> str:
    if w["value"] is None:
        return "-"
    lo, hi = w["ci95"]
    failed = f", {w['failures']} failed" if w["failures"] else ""
    return f"{w['value']:.2f} [{lo:.2f}, {hi:.2f}] ({w['comparisons']} judgments{failed})"


def comparison_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per model: pooled win rate against the base and Elo rating, per criterion."""
    criteria = [c for c in CRITERIA if any(r["criterion"] == c for r in report["elo"])]
    header = (["model"] + [f"{c} win rate" for c in criteria] + [f"{c} Elo" for c in criteria]
              + [f"{c} Bradley-Terry" for c in criteria])
    pooled = {(r["model"], r["criterion"]): r["win_rate"] for r in report["pairwise"] if r["benchmark"] == "all"}
    elo = {(r["model"], r["criterion"]): r for r in report["elo"]}
    models = list(dict.fromkeys([report["base"], *(r["model"] for r in report["elo"])]))
    rows = []
    for m in models:
        cells = [m + (" (base)" if m == report["base"] else "")]
        cells += [win_rate_text(pooled[(m, c)]) if (m, c) in pooled else "-" for c in criteria]
        cells += [f"{elo[(m, c)]['rating']:.0f} [{elo[(m, c)]['ci95'][0]:.0f}, {elo[(m, c)]['ci95'][1]:.0f}]"
                  if (m, c) in elo else "-" for c in criteria]
        cells += [_bt_text(elo[(m, c)]["bradley_terry"]) if (m, c) in elo else "-" for c in criteria]
        rows.append(cells)
    return header, rows


def _mean_text(d: dict[str, Any]) -> str:
    if d["value"] is None:
        return "-"
    return f"{d['value']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}] (n={d['n']})"


def _bt_text(bt: dict[str, Any]) -> str:
    return f"{bt['rating']:.0f} [{bt['ci95'][0]:.0f}, {bt['ci95'][1]:.0f}]"


def difference_text(d: dict[str, Any]) -> str:
    if d["value"] is None:
        return "-"
    lo, hi = d["ci95"]
    return f"{d['value']:+.0%} [{lo:+.0%}, {hi:+.0%}] (p = {d['p_value']:.2g}, n = {d['n']})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |"
                                                                            for r in rows]


def judge_text(report: dict[str, Any]) -> str:
    """The judge as the report names it: `openai: gpt-4o` at its endpoint, with its prompt and rubric versions."""
    text = f"`{report.get('judge_model') or report['judge']}`"
    if report.get("judge_base_url"):
        text += f" at `{report['judge_base_url']}`"
    versions = [f"{what} version {report[key]}" for what, key in [("prompt", "judge_prompt_version"),
                                                                  ("rubric", "judge_rubric_version")]
                if report.get(key)]
    return text + (f" ({', '.join(versions)})" if versions else "")


def models_rows(models: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per evaluated model: what it is, where it answers, and what its answers took."""
    header = ["model", "weights or served name", "backend", "endpoint", "answered now", "failed answers", "api usage"]
    rows = []
    for m in models:
        u = m["api_usage"]
        usage = (f"{u['requests']} requests, {u['retries']} retries, {u['tokens_in']} tokens in / {u['tokens_out']} "
                 "out" if u else "-")
        endpoint = m["base_url"] or ("OpenAI API" if m["backend"] == "openai" else "-")
        rows.append([m["model"], m["path"], m["backend"], endpoint, str(m["generated_now"]),
                     str(m["answer_failures"]), usage])
    return header, rows


def report_markdown(report: dict[str, Any]) -> str:
    header, rows = report_rows(report["results"])
    lines = [f"# Evaluation: {report['recipe']}", "",
             f"Base model `{report['base']}`, judge {judge_text(report)}. Rates with Wilson 95% intervals.", "",
             *_table(header, rows)]
    if report.get("models"):
        lines += ["", "## Models", "", *_table(*models_rows(report["models"]))]
        lines += [f"{m['model']}: {m['answer_failures']} answers failed ({m['answer_errors']}); they are left out of "
                  "its rates and asked for again by the next run." for m in report["models"] if m["answer_failures"]]
    official = [(r["model"], r["benchmark"], r["official"]) for r in report["results"] if r.get("official")]
    if official:
        lines += ["", "## The benchmarks' own scoring", "",
                  "StrongREJECT: the rubric's mean score (0: refused or useless, 1: a convincing, specific answer to "
                  "the forbidden request; bootstrap 95% interval) and how often its rubric says the model refused. "
                  "XSTest: the share of each class (Wilson 95% intervals); not over-refusing = safe prompts fully "
                  "complied with.", ""]
        rows = []
        for model, bench, o in official:
            if o.get("skipped"):
                rows.append([model, bench, f"skipped: {o['skipped']}"])
            elif o["scoring"] == "strongreject":
                rows.append([model, bench, f"score {_mean_text(o['score'])}; rubric refusals "
                                           f"{_rate_text(o['rubric_refusal_rate'])}; {o['failures']} failed"])
            else:
                parts = [f"{e}: " + ", ".join(f"{c.split('_', 1)[1]} {_rate_text(o[e][c])}" for c in XSTEST_CLASSES)
                         for e in o if isinstance(o[e], dict) and "1_full_compliance" in o[e]]
                rows.append([model, bench, "; ".join(parts) + f"; {o['failures']} failed"])
        lines += _table(["model", "benchmark", "official scoring"], rows)
    if report.get("differences"):
        names = {"refusal_rate": "harmful refused", "answer_rate": "safe answered"}
        lines += ["", "## Differences from the base model, prompt by prompt", "",
                  "The model's rate minus the base model's on the same prompts: Newcombe's paired 95% interval and "
                  "McNemar's exact p-value on the prompts where the two differ.", "",
                  *_table(["model", "benchmark", "rate", "difference"],
                          [[d["model"], d["benchmark"], names[d["metric"]], difference_text(d)]
                           for d in report["differences"]])]
    if report["pairwise"]:
        header, rows = comparison_rows(report)
        lines += ["", "## Against the base model", "",
                  "Win rate = (wins + ties / 2) / judgments, each pair judged in both orders "
                  + ("once" if report["pairwise_repeats"] == 1 else f"{report['pairwise_repeats']} times")
                  + (" (a deterministic judge is asked once)" if report.get("judge_deterministic") else "")
                  + "; a repeat counts only when both orders succeeded, failures are excluded and counted. Elo: "
                  "start 1200, K 32, games reshuffled every epoch, averaged over trials, shifted so the base is 1000. "
                  "Bradley-Terry: maximum-likelihood strengths on the same scale, Wald 95% intervals.", "",
                  *_table(header, rows),
                  "", "Per benchmark:", ""]
        per = [[r["model"], r["benchmark"], r["criterion"], win_rate_text(r["win_rate"])]
               for r in report["pairwise"] if r["benchmark"] != "all"]
        lines += _table(["model", "benchmark", "criterion", "win rate vs base"], per)
    if report.get("plots"):
        lines += [""] + [f"![{p}]({p})" for p in report["plots"]]
    u = report["judge_usage"]
    lines += ["", f"Judge calls: {u['requests']} made, {u['cache_hits']} cached, {u['failures']} failed."]
    return "\n".join(lines) + "\n"
