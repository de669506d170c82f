"""`deliberate study`: every method x seed of a study file trained end to end, then every final model and the
base evaluated on the same benchmarks with the same judge, and one leaderboard (config/study.py says what a study
file holds).

The study sits above the stages, as the CLI does: it runs each stage in this process through the stage's own
function, in the run's folder, so a finished stage is reused and a rerun after a crash continues where it
stopped. `<output_dir>/runs/<method>/seed<k>/` holds each run (with `study_run.json` once its model is
finished), `<output_dir>/eval/` the evaluation (answers cached per model), and `<output_dir>/leaderboard.{md,
csv,json,png}` the comparison:

- per method, benchmark and rate (harmful prompts refused, safe prompts answered): the mean over seeds, with a
  95% interval over seeds and prompts (`services.stats.seeds_and_prompts`) and each seed's own rate;
- the paired difference of each method from the base, and from the best method of that column, by prompt and
  seed, with the same interval; a method whose interval from the best contains 0 is not told apart from it;
- a helpful-vs-harmless plot: harmful prompts refused against safe prompts answered, pooled over the
  benchmarks, one point per seed and the mean per method, the base beside them.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deliberate.config import Recipe, load_recipe
from deliberate.config.eval import EvalModel
from deliberate.config.recipe import find_recipe
from deliberate.config.study import MethodSpec, StudyConfig
from deliberate.config.yamlio import load_yaml_file, validate
from deliberate.errors import DeliberateError
from deliberate.services.failures import write_outputs
from deliberate.services.io import read_jsonl, write_json
from deliberate.services.plots import plot_study
from deliberate.services.provenance import write_provenance
from deliberate.services.reasoning import retrieved
from deliberate.services.runs import Layout, stage_models
from deliberate.services.stats import paired_by_prompt, seeds_and_prompts
from deliberate.stages.dpo import run_dpo
from deliberate.stages.evaluate import outcomes, run_eval, slug
from deliberate.stages.filter import filter_completions
from deliberate.stages.generate import generate_completions
from deliberate.stages.merge import run_merges
from deliberate.stages.pairs import build_pairs
from deliberate.stages.rl import run_rl
from deliberate.stages.rm import run_rm
from deliberate.stages.sft import run_sft, sft_dataset

RUN_MARKER = "study_run.json"  # written into a run's folder once its final model is known
RATES = ("refusal_rate", "answer_rate")  # harmful prompts refused, safe prompts answered
# What a reasoning model recalls: reasonings citing the prompt's category, answers doing the style they stated
RECALL = ("policy_retrieval", "style_followed")
WHAT = {"refusal_rate": "harmful prompts refused", "answer_rate": "safe prompts answered",
        "policy_retrieval": "policy retrieval (reasoning cites the category)",
        "style_followed": "answers that do the style their reasoning states"}


def recall_outcomes(judged: list[dict[str, Any]], reasons: bool = False) -> dict[str, dict[str, bool]]:
    """Per recall measure, each judged prompt's outcome by id, where it applies (see `RECALL`); `reasons`: the
    model's method wrote reasoning somewhere (see `retrieved`)."""
    found = {"policy_retrieval": {j["id"]: retrieved(j, reasons) for j in judged},
             "style_followed": {j["id"]: j.get("style_followed") for j in judged}}
    return {rate: {p: bool(v) for p, v in by_id.items() if v is not None} for rate, by_id in found.items()}


def _sft(recipe: Recipe, show_progress: bool = True) -> dict[str, Any]:
    """Deliberative SFT as `deliberate pipeline` runs it: generate -> filter -> sft (only sft when `sft.kept`
    names another run's filtered completions)."""
    if not recipe.sft.kept:
        generate_completions(recipe, show_progress=show_progress)
        filter_completions(recipe, show_progress=show_progress)
    return run_sft(recipe, sft_dataset(recipe), resume="auto", show_progress=show_progress)


def _continued(train: Callable[..., Any]) -> Callable[..., Any]:
    """A training stage that continues its newest checkpoint of the same run, if a crash left one."""
    return lambda recipe, show_progress=True: train(recipe, resume="auto", show_progress=show_progress)


STEPS: dict[str, Callable[..., Any]] = {
    "generate": generate_completions, "filter": filter_completions, "pairs": build_pairs, "sft": _sft,
    "dpo": _continued(run_dpo), "rm": _continued(run_rm), "rl": _continued(run_rl), "merge": run_merges}


def load_study(path: str | Path, overrides: list[str] | None = None) -> tuple[StudyConfig, Path]:
    """The study file, validated, and the path of its base recipe (relative to the study file, or packaged)."""
    from deliberate.config.overrides import apply_override

    data = load_yaml_file(Path(path)) or {}
    if not isinstance(data, dict):
        raise DeliberateError(f"{path}: a study is a mapping (recipe, seeds, benchmarks, methods)")
    for assignment in overrides or []:
        apply_override(data, assignment)
    study = validate(StudyConfig, data, str(path))
    beside = Path(path).resolve().parent / study.recipe
    return study, beside if beside.is_file() else find_recipe(study.recipe)


def output_dir(study: StudyConfig) -> Path:
    return study.output_dir or Path("runs") / study.name


def final_ref(method: MethodSpec) -> str:
    """The reference naming the model a method ends with (see `MethodSpec.model`)."""
    if method.model:
        return method.model
    last = next((s for s in reversed(method.steps) if s in ("sft", "dpo", "rl", "merge")), None)
    if last is None:
        raise DeliberateError(f"study: method '{method.name}' trains no policy (sft, dpo, rl or merge); give its "
                              "`model`")
    return {"sft": "stage:sft", "rl": "stage:rl"}.get(last, f"{last}:*")


def final_model(recipe: Recipe, method: MethodSpec) -> str:
    """The folder of the model a finished run ends with: exactly one."""
    ref = final_ref(method)
    if ref == "dpo:*":
        ref = f"stage:{recipe.dpo.stage_list()[-1].name}"
    elif ref == "merge:*":
        if not recipe.merge.merges:
            raise DeliberateError(f"study: method '{method.name}' ends with merge, but its recipe lists no merges")
        ref = f"merge:{recipe.merge.merges[-1].name}"
    found = stage_models(recipe, ref)
    if len(found) != 1:
        raise DeliberateError(f"study: method '{method.name}' ends with {len(found)} models ({ref}); name one with "
                              "its `model` (e.g. stage:safe/beta0.1)")
    return found[0][1]


def run_recipe(study: StudyConfig, base: Path, method: MethodSpec, seed: int, starts: dict[str, str]) -> Recipe:
    """The recipe of one run: the base recipe with the method's overrides, the seed, the run's folder and, for a
    method `after` another, that method's model (same seed) as pairs' policy and dpo's and rl's start."""
    runs = output_dir(study) / "runs"
    own = [s.replace("{seed}", str(seed)).replace("{runs}", str(runs)) for s in [*study.set, *method.set]]
    sets = [*own, f"seed={seed}", f"output_dir={runs / method.name / f'seed{seed}'}"]
    if method.after:
        given = {s.partition("=")[0].strip() for s in own}
        sets += [f"{key}={starts[method.after]}" for key in ("pairs.policy", "dpo.start", "rl.start")
                 if key not in given]
    return load_recipe(base, sets)


def run_inputs(recipe: Recipe, method: MethodSpec) -> str:
    """What a run's model is made from: its whole recipe (seed, folder, the start it continues) and its steps."""
    from deliberate.services.runs import fingerprint

    return fingerprint({"recipe": recipe.model_dump(mode="json"), "steps": method.steps, "model": final_ref(method)})


def finished_run(folder: Path, inputs: str) -> str | None:
    """The model of a run finished earlier with the same inputs, or None. A finished run is not entered again:
    re-entering its stages re-judged its pairs (scores move in the last digit between batches), which changed
    the data of every preference model after it and trained them again."""
    import json

    marker = folder / RUN_MARKER
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    model = record.get("model")
    return model if record.get("inputs") == inputs and model and Path(model).is_dir() else None


def train_run(recipe: Recipe, method: MethodSpec, show_progress: bool = True) -> str:
    """Every step of one method x seed (a finished stage is reused); the folder of the model it ends with."""
    for step in method.steps:
        STEPS[step](recipe, show_progress=show_progress)
    return final_model(recipe, method)


def _in_own_process(recipe: Recipe, method: MethodSpec, show_progress: bool) -> str:
    """`train_run` in a fresh process, so that what one run's stages leave in memory (models, optimiser states,
    the allocator's arenas) is returned before the next: one process training method after method grew past 24 GB.
    A `DeliberateError` in the run is raised here as it was there."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        try:
            return pool.submit(train_run, recipe, method, show_progress).result()
        except BrokenProcessPool:
            raise DeliberateError(f"study: the process training {method.name}, seed {recipe.seed} was killed (out of "
                                  "memory? `dmesg` tells); its finished stages are kept: run the study again") from None


def die_with_parent(parent: int, every: float = 0.5) -> None:
    """In a run's training process: exit as soon as the study process `parent` is gone. Killed (a `kill`, the
    session ending, OOM) it would otherwise leave its run training on, orphaned, beside the study run again after
    it: two processes writing one run folder, each at half the speed."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def run_study(study: StudyConfig, base: Path, *, say: Callable[[str], None] = print,
              show_progress: bool = True) -> dict[str, Any]:
    """Train every method x seed (finished runs are reused), evaluate, and write the leaderboard."""
    root = output_dir(study)
    runs: list[dict[str, Any]] = []
    total = len(study.methods) * len(study.seeds)
    done = 0
    for seed in study.seeds:
        starts: dict[str, str] = {}
        for method in study.methods:
            done += 1
            recipe = run_recipe(study, base, method, seed, starts)
            folder = Path(recipe.output_dir)
            inputs = run_inputs(recipe, method)
            if model := finished_run(folder, inputs):
                say(f"run {done}/{total}: {method.name}, seed {seed}: finished earlier, reused")
            else:
                say(f"run {done}/{total}: {method.name}, seed {seed}: {' -> '.join(method.steps)}")
                model = (_in_own_process if study.isolate_runs else train_run)(recipe, method, show_progress)
            starts[method.name] = model
            record = {"method": method.name, "seed": seed, "model": model, "steps": method.steps, "inputs": inputs}
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / RUN_MARKER, record)
            write_provenance(folder, recipe)
            runs.append(record)
    say(f"evaluating {len(runs)} models and the base on {', '.join(study.benchmarks)}")
    shared = [s.replace("{runs}", str(root / "runs")) for s in study.set]  # the runs' judge judges the evaluation
    board = evaluate_runs(study, base, runs, shared, root, "leaderboard", show_progress)
    for name, sets in study.also_judge.items():  # the same answers (copied, not generated again), another judge
        say(f"judging the same answers with the {name} judge")
        folder = root / f"judged-{name}"
        if (root / "eval" / "answers").is_dir():
            shutil.copytree(root / "eval" / "answers", folder / "eval" / "answers", dirs_exist_ok=True)
        board[f"judged_by_{name}"] = evaluate_runs(study, base, runs, [*shared, *sets], folder,
                                                   f"leaderboard-{name}", show_progress, into=root)["judge"]
    return board


def evaluate_runs(study: StudyConfig, base: Path, runs: list[dict[str, Any]], sets: list[str], folder: Path,
                  name: str, show_progress: bool, into: Path | None = None) -> dict[str, Any]:
    """Every run's model and the base evaluated in `folder/eval`, and the leaderboard as `<into>/<name>.*`."""
    evaluation = load_recipe(base, [*sets, f"output_dir={folder}", "eval.pairwise=false", *study.eval_set])
    budgets = {m.name: {"max_new_tokens": m.max_new_tokens} for m in study.methods if m.max_new_tokens}
    report = run_eval(evaluation, models=[EvalModel(name=r["model"], label=label(r), **budgets.get(r["method"], {}))
                                          for r in runs],
                      benchmarks=study.benchmarks, show_progress=show_progress)
    write_provenance(Layout(evaluation).eval, evaluation)
    board = leaderboard(study, runs, report, Layout(evaluation).eval)
    into = into or folder
    board["plot"] = plot_study(board, into / f"{name}.png")
    write_outputs(into, {f"{name}.json": board, f"{name}.csv": leaderboard_csv(board),
                         f"{name}.md": leaderboard_markdown(board)})
    return board


def label(run: dict[str, Any]) -> str:
    return f"{run['method']}/seed{run['seed']}"


def _judged(folder: Path, name: str, bench: str) -> list[dict[str, Any]]:
    path = folder / "judgments" / slug(name) / f"{bench}.jsonl"
    if not path.is_file():
        raise DeliberateError(f"study: {path} is missing; run the study again to evaluate it")
    return read_jsonl(path)


def leaderboard(study: StudyConfig, runs: list[dict[str, Any]], report: dict[str, Any], folder: Path
                ) -> dict[str, Any]:
    """The comparison (see the module docstring), from the per-prompt judgments the evaluation wrote."""
    base = report["base"]
    by_method = {m.name: [r for r in runs if r["method"] == m.name] for m in study.methods}
    method_of = {label(r): r["method"] for r in runs}
    bench_names = list(dict.fromkeys(r["benchmark"] for r in report["results"]))  # names as the files give them
    judged = {(bench, name): _judged(folder, name, bench) for bench in bench_names for name in [base, *map(label, runs)]}
    reasons = {r["method"] for r in runs for bench in bench_names
               if any(j.get("reasoning") is not None for j in judged[(bench, label(r))])}
    per_bench = {(bench, name): {**outcomes(rows), **recall_outcomes(rows, method_of.get(name) in reasons)}
                 for (bench, name), rows in judged.items()}
    # Pooled over the benchmarks (prompt ids namespaced by benchmark), for the plot and the first columns.
    columns = [*bench_names, "all"]

    def outcomes_of(name: str, bench: str, rate: str) -> dict[str, bool]:
        if bench == "all":
            return {f"{b}:{p}": v for b in bench_names for p, v in per_bench[(b, name)][rate].items()}
        return per_bench[(bench, name)][rate]

    rows, n = [], study.bootstrap_samples
    for bench in columns:
        for rate in (*RATES, *RECALL):
            base_outcomes = outcomes_of(base, bench, rate)
            if not base_outcomes and rate in RATES:
                continue
            figures = {}
            for method, method_runs in by_method.items():
                seeds = [outcomes_of(label(r), bench, rate) for r in method_runs]
                if not any(seeds):  # a recall measure of a method that does not reason
                    continue
                figures[method] = {"rate": seeds_and_prompts([_floats(s) for s in seeds], n),
                                   "vs_base": seeds_and_prompts([paired_by_prompt(s, base_outcomes) for s in seeds], n)
                                   if base_outcomes else None, "seeds": seeds}
            if not figures:
                continue
            best = max(figures, key=lambda m: figures[m]["rate"]["value"] if figures[m]["rate"]["value"] is not None
                       else -1)
            for method, f in figures.items():
                vs_best = seeds_and_prompts([paired_by_prompt(a, b) for a, b in
                                             zip(f["seeds"], figures[best]["seeds"], strict=True)], n)
                low, high = vs_best["ci95"]
                rows.append({"benchmark": bench, "metric": rate, "method": method, "rate": f["rate"],
                             "vs_base": f["vs_base"], "best": best, "vs_best": vs_best,
                             "tied_with_best": method == best or (low is not None and low <= 0 <= high)})
            if base_outcomes:
                rows.append({"benchmark": bench, "metric": rate, "method": "base",
                             "rate": seeds_and_prompts([_floats(base_outcomes)], n), "vs_base": None, "best": best,
                             "vs_best": None, "tied_with_best": None})
    points = [{"method": r["method"], "seed": r["seed"],
               "harmful_refused": _mean(outcomes_of(label(r), "all", "refusal_rate")),
               "safe_answered": _mean(outcomes_of(label(r), "all", "answer_rate"))} for r in runs]
    points.append({"method": "base", "seed": None, "harmful_refused": _mean(outcomes_of(base, "all", "refusal_rate")),
                   "safe_answered": _mean(outcomes_of(base, "all", "answer_rate"))})
    return {"study": study.name, "base": base, "judge": report["judge"], "judge_model": report.get("judge_model"),
            "seeds": study.seeds, "methods": [m.name for m in study.methods], "benchmarks": bench_names,
            "runs": runs, "rows": rows, "points": points}


def _floats(outcome: dict[str, bool]) -> dict[str, float]:
    return {p: float(v) for p, v in outcome.items()}


def _mean(outcome: dict[str, bool]) -> float | None:
    return sum(outcome.values()) / len(outcome) if outcome else None


def _interval(figure: dict[str, Any] | None, percent: bool = True) -> str:
    if not figure or figure["value"] is None:
        return "-"
    low, high = figure["ci95"]
    f = (lambda v: f"{v:.0%}") if percent else (lambda v: f"{v:+.0%}")
    return f"{f(figure['value'])} [{f(low)}, {f(high)}]" if low is not None else f(figure["value"])


def leaderboard_csv(board: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["benchmark", "metric", "method", "mean", "ci_low", "ci_high", "per_seed", "vs_base",
                     "vs_base_low", "vs_base_high", "vs_best", "vs_best_low", "vs_best_high", "tied_with_best"])
    for r in board["rows"]:
        cells = []
        for key in ("vs_base", "vs_best"):
            f = r[key] or {"value": None, "ci95": [None, None]}
            cells += [f["value"], *f["ci95"]]
        writer.writerow([r["benchmark"], r["metric"], r["method"], r["rate"]["value"], *r["rate"]["ci95"],
                         " ".join("-" if v is None else f"{v:.4f}" for v in r["rate"]["per_seed"]), *cells,
                         r["tied_with_best"]])
    return out.getvalue()


def leaderboard_markdown(board: dict[str, Any]) -> str:
    what = WHAT
    judge = board["judge"] + (f" ({board['judge_model']})" if board["judge_model"] else "")
    lines = [f"# {board['study']}: leaderboard", "",
             f"Base `{board['base']}`; judge {judge};"
             f" seeds {', '.join(map(str, board['seeds']))}. Each rate is the mean over seeds with a 95% interval "
             "over seeds and prompts; differences are paired by prompt and seed. A method marked = is not told "
             "apart from the column's best (its interval from the best contains 0).", ""]
    for bench in [*board["benchmarks"], "all"]:
        for rate in (*RATES, *RECALL):
            rows = [r for r in board["rows"] if r["benchmark"] == bench and r["metric"] == rate]
            if not rows:
                continue
            title = "all benchmarks pooled" if bench == "all" else bench
            lines += [f"## {title}: {what[rate]}", "", "| method | mean [95% CI] | per seed | vs base | vs best |",
                      "|---|---|---|---|---|"]
            for r in sorted(rows, key=lambda r: -(r["rate"]["value"] or 0)):
                mark = " (best)" if r["method"] == r["best"] else (" =" if r["tied_with_best"] else "")
                seeds = ", ".join("-" if v is None else f"{v:.0%}" for v in r["rate"]["per_seed"])
                lines.append(f"| {r['method']}{mark} | {_interval(r['rate'])} | {seeds} | "
                             f"{_interval(r['vs_base'], False)} | {_interval(r['vs_best'], False)} |")
            lines.append("")
    return "\n".join(lines)
