"""The `deliberate` command line: a thin layer over the package.

Every verb takes `--recipe R.yaml` and any number of `--set section.field=value` overrides; typed flags such as
`--model` are shorthands for the most common overrides. User errors print one line and exit 2.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from deliberate import __version__
from deliberate.errors import EXIT_USAGE, DeliberateError

console = Console()
err_console = Console(stderr=True)


class _App(typer.Typer):
    """Typer app that turns a DeliberateError into one line on stderr and exit code 2."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except DeliberateError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            sys.exit(EXIT_USAGE)


app = _App(
    name="deliberate",
    help=(
        "Align language models to a written safety policy and compare alignment methods.\n\n"
        "Stages: sft (deliberative spec-reasoning SFT), rl (judge-scored online RL), dpo (offline preference "
        "optimisation: DPO/KTO, SACPO, MODPO), merge (mergekit, P-SACPO), eval (safety benchmarks, win rates, "
        "reports). Every verb reads a recipe (--recipe R.yaml) and takes --set section.field=value overrides.\n\n"
        "Example: deliberate answer --recipe recipes/demo.yaml --set generation.max_new_tokens=64"
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold secrets; never print them
    add_completion=False,
    rich_markup_mode="markdown",
)
spec_app = typer.Typer(help="Show, validate and render policy specs.", no_args_is_help=True)
model_app = typer.Typer(help="Prepare and inspect models.", no_args_is_help=True)
recipe_app = typer.Typer(help="Inspect recipes.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")
app.add_typer(model_app, name="model")
app.add_typer(recipe_app, name="recipe")

RecipeOpt = Annotated[
    Path | None, typer.Option("--recipe", "-r", help="Recipe YAML file; the built-in defaults when omitted.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe field: section.field=value (repeatable).", metavar="KEY=VALUE"),
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Shorthand for --set model.name=...: Hub id, folder or smollm2.")
]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Shorthand for --set output_dir=...")]


def _recipe(recipe: Path | None, sets: list[str] | None, model: str | None = None, output: Path | None = None):
    from deliberate.config import load_recipe

    overrides = list(sets or [])
    if model:
        overrides.append(f"model.name={model}")
    if output:
        overrides.append(f"output_dir={output}")
    return load_recipe(recipe, overrides)


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"deliberate {__version__}")
        raise typer.Exit()
    _quiet_libraries()


def _quiet_libraries() -> None:
    """Our own progress bars say what is happening; the libraries' per-file bars and notices are noise."""
    import logging
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# --- stages -----------------------------------------------------------------

@app.command()
def generate(recipe: RecipeOpt = None, set_: SetOpt = None) -> None:
    """Sample k spec-conditioned reasoning completions per prompt (deliberative alignment, stage one).

    The system prompt holds spec_for(category) and the reasoning instructions; completions are
    <think>reasoning</think> then the answer, parsed strictly. Input: a recipe (model or generate.teacher, spec,
    data, generate section). Output: <output_dir>/generate/completions.jsonl and summary.json. Resumable.
    Example: deliberate generate --recipe recipes/demo.yaml --set generate.samples=8
    """
    from deliberate.stages.generate import generate_completions

    r = _recipe(recipe, set_)
    s = generate_completions(r).summary
    console.print(f"{s['completions']} completions ({s['generated_now']} generated now), "
                  f"{s['well_formed']} well formed; malformed: {s['malformed'] or 'none'}")
    console.print(f"policy retrieval: {_fraction(s['policy_retrieval'])}")


def _fraction(d: dict) -> str:
    return "-" if not d["n"] else f"{d['correct']}/{d['n']} = {d['accuracy']:.0%}"


@app.command("filter")
def filter_(recipe: RecipeOpt = None, set_: SetOpt = None) -> None:
    """Judge the generated completions (min of judge.repeats) and keep those that clear filter.threshold.

    Input: <output_dir>/generate/completions.jsonl and the recipe's judge and filter sections. Output:
    <output_dir>/filter/judged.jsonl, kept.jsonl and summary.json (kept fractions per category).
    Example: deliberate filter --recipe recipes/demo.yaml --set filter.threshold=8
    """
    from deliberate.stages.filter import filter_completions

    r = _recipe(recipe, set_)
    s = filter_completions(r).summary
    _print_filter(s)


def _print_filter(s: dict) -> None:
    table = Table(title=f"kept {s['kept']}/{s['completions']} completions "
                        f"({s['prompts_with_kept']}/{s['prompts']} prompts)")
    for col in ("category", "completions", "malformed", "kept", "kept fraction", "prompts with kept"):
        table.add_column(col)
    for name, c in s["per_category"].items():
        table.add_row(name, str(c["completions"]), str(c["malformed"]), str(c["kept"]),
                      f"{c['kept_fraction']:.0%}", f"{c['prompts_with_kept']}/{c['prompts']}")
    console.print(table)


@app.command()
def sft(recipe: RecipeOpt = None, set_: SetOpt = None,
        resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False) -> None:
    """Deliberative SFT: fine-tune on judge-filtered (prompt, reasoning, answer) data with the spec stripped.

    Builds <output_dir>/sft_data/train.jsonl from the kept completions (TRL conversational format, no system
    prompt), then trains with TRL's SFTTrainer (LoRA or full, loss on assistant tokens only). Output:
    <output_dir>/sft/model (adapter or model, with a model card), checkpoints/, summary.json.
    Example: deliberate sft --recipe recipes/demo.yaml --set sft.lora=false
    """
    from deliberate.stages.sft import run_sft, sft_dataset

    r = _recipe(recipe, set_)
    s = run_sft(r, sft_dataset(r), resume=resume)
    console.print(f"trained on {s['examples']} examples, {s['steps']} steps in {s['seconds']:.0f}s, "
                  f"loss {s['first_loss']} -> {s['last_loss']}; model in {Path(r.output_dir) / 'sft' / 'model'}")


@app.command()
def pipeline(recipe: RecipeOpt = None, set_: SetOpt = None) -> None:
    """Run generate -> filter -> sft from one recipe; each stage's finished output is reused.

    Example: deliberate pipeline --recipe recipes/demo.yaml
    """
    from deliberate.stages.filter import filter_completions
    from deliberate.stages.generate import generate_completions
    from deliberate.stages.sft import is_done, run_sft, sft_dataset, sft_paths

    r = _recipe(recipe, set_)
    g = generate_completions(r).summary
    console.print(f"[bold]generate[/]: {g['completions']} completions ({g['generated_now']} new), "
                  f"{g['well_formed']} well formed; policy retrieval {_fraction(g['policy_retrieval'])}")
    f = filter_completions(r).summary
    console.print("[bold]filter[/]:")
    _print_filter(f)
    data = sft_dataset(r)
    if is_done(r, data):
        console.print(f"[bold]sft[/]: already trained on this data ({sft_paths(r)['model']}); reused")
        return
    s = run_sft(r, data)
    console.print(f"[bold]sft[/]: {s['examples']} examples, {s['steps']} steps in {s['seconds']:.0f}s, "
                  f"loss {s['first_loss']} -> {s['last_loss']}; model in {sft_paths(r)['model']}")


@app.command()
def rl(recipe: RecipeOpt = None, set_: SetOpt = None,
       algo: Annotated[str | None, typer.Option(help="Shorthand for --set rl.algo=...: grpo, rloo, ppo or "
                                                     "ppo-lagrangian.")] = None,
       resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False) -> None:
    """Online RL with a judge reward: GRPO, RLOO (TRL), PPO with a value model, PPO-Lagrangian (Safe RLHF).

    The judge gets spec_for(category), the prompt and the final answer only, never the reasoning.
    Input: a recipe (rl.start, e.g. stage:sft; prompts; judge; rl settings). Output: <output_dir>/rl/model
    (full weights), adapter/, log.jsonl and training.png (reward, KL, cost, lambda per step), summary.json,
    checkpoints/; `stage:rl` names the model in evals. Runs under `accelerate launch` too.
    Example: deliberate rl --recipe recipes/grpo-demo.yaml --algo ppo
    """
    from deliberate.services.training import is_main_process
    from deliberate.stages.rl import rl_dir, run_rl

    r = _recipe(recipe, list(set_ or []) + ([f"rl.algo={algo}"] if algo else []))
    s = run_rl(r, resume=resume)
    if not is_main_process():
        return
    if s.get("reused"):
        console.print(f"[bold]rl[/]: already trained with these inputs ({rl_dir(r) / 'model'}); reused")
        return
    table = Table(title=f"{r.name}: rl ({s['algo']})")
    for col in ("steps", "reward (first quarter -> last)", "cost", "lambda", "s/step: gen / judge / opt", "time"):
        table.add_column(col)
    cost = f"{s['cost_first_steps']} -> {s['cost_last_steps']} (<= {s['cost_threshold']})" if "cost_threshold" in s \
        else "-"
    split = " / ".join(f"{s[k]:.2f}" if s.get(k) is not None else "-"
                       for k in ("seconds_generation", "seconds_judge", "seconds_optimisation"))
    table.add_row(str(s["steps"]), f"{s['reward_first_steps']} -> {s['reward_last_steps']}", cost,
                  f"{s['lambda']:.3f}" if "lambda" in s else "-", split, f"{s['seconds']:.0f}s")
    console.print(table)
    failures = s["reward_scorer"]["failures"] + s.get("cost_scorer", {}).get("failures", 0)
    if failures:
        console.print(f"[yellow]{failures} completions got no score (failed judgments) and carried no weight[/]")
    console.print(f"model in {rl_dir(r) / 'model'}; per-step log in {rl_dir(r) / 'log.jsonl'}")


@app.command()
def pairs(recipe: RecipeOpt = None, set_: SetOpt = None) -> None:
    """Judge-ranked preference pairs: sample pairs.samples completions per prompt, judge them, pair best vs worst.

    Input: a recipe (pairs.policy, e.g. stage:sft; data; judge with the category's spec). Output:
    <output_dir>/pairs/pairs.jsonl (TRL prompt/chosen/rejected with scores), kto.jsonl (prompt/completion/label),
    judged.jsonl, summary.json. Resumable; judgments are cached.
    Example: deliberate pairs --recipe recipes/demo.yaml --set pairs.samples=4
    """
    from deliberate.stages.pairs import build_pairs

    r = _recipe(recipe, set_)
    s = build_pairs(r)
    console.print(f"{s['completions']} completions from {s['policy']} ({s['generated_now']} new), "
                  f"{s['judged']} judged (mean score {s['mean_score']}), {s['judge_failures']} judge failures, "
                  f"{s['cut_off']} cut off")
    console.print(f"{s['pairs']} pairs ({s['ties']} prompts tied, {s['prompts_without_pair']} of {s['prompts']} "
                  f"prompts without a pair); KTO: {s['kto_desirable']} desirable, {s['kto_undesirable']} undesirable; "
                  f"in {Path(r.output_dir) / 'pairs'}")


@app.command()
def dpo(recipe: RecipeOpt = None, set_: SetOpt = None,
        method: Annotated[str | None, typer.Option(help="Shorthand for --set dpo.method=...: dpo, kto or modpo.")] = None,
        stage: Annotated[list[str] | None, typer.Option(help="Train only this stage (repeatable); earlier stages "
                                                        "must be trained already.")] = None,
        resume: Annotated[bool, typer.Option(help="Continue each model from its last checkpoint.")] = False) -> None:
    """Offline preference optimisation with TRL: DPO, KTO, stepwise SACPO (dpo.stages) and MODPO.

    Input: a recipe (model, dpo section: data from `deliberate pairs` or a preference dataset, beta, stages).
    Output: <output_dir>/dpo/<stage>/[<variant>/]model (full weights), adapter/, checkpoints/, summary.json;
    `stage:<name>` refers to a stage's model in later stages, merges and evals. Finished models are reused.
    Example: deliberate dpo --recipe recipes/sacpo-cpu.yaml --set "dpo.stages[1].beta=[0.1,0.05]"
    """
    from deliberate.stages.dpo import run_dpo

    sets = list(set_ or []) + ([f"dpo.method={method}"] if method else [])
    r = _recipe(recipe, sets)
    summaries = run_dpo(r, only=stage, resume=resume)
    table = Table(title=f"{r.name}: preference optimisation")
    for col in ("model", "method", "start", "beta", "w", "examples", "steps", "loss", "reward acc.", "time"):
        table.add_column(col, overflow="fold")
    for s in summaries:
        loss = "reused" if s.get("reused") else f"{s['first_loss']} -> {s['last_loss']}"
        acc = "-" if s.get("reward_accuracy") is None else f"{s['reward_accuracy']:.2f}"
        table.add_row(f"stage:{s['model']}", s["method"], _shorten(str(s["start"]), 30), f"{s['beta']:g}",
                      "-" if s.get("weight") is None else f"{s['weight']:g}", str(s["examples"]), str(s["steps"]),
                      loss, acc, f"{s['seconds']:.0f}s")
    console.print(table)
    console.print(f"models in {Path(r.output_dir) / 'dpo'}")


@app.command()
def merge(recipe: RecipeOpt = None, set_: SetOpt = None,
          name: Annotated[list[str] | None, typer.Option("--name", help="Run only this merge (repeatable).")] = None
          ) -> None:
    """Merge models with mergekit (linear, task_arithmetic, ties, dare_ties, slerp; P-SACPO sweeps).

    Input: a recipe's merge.merges (models, weights or alphas). Output: <output_dir>/merge/<name>/[a<alpha>/]model;
    `merge:<name>/a<alpha>` refers to it in evals.
    Example: deliberate merge --recipe recipes/sacpo-cpu.yaml
    """
    from deliberate.stages.merge import run_merges

    r = _recipe(recipe, set_)
    if not r.merge.merges:
        console.print("the recipe lists no merges (merge.merges); nothing to do")
        return
    table = Table(title=f"{r.name}: merges")
    for col in ("model", "method", "models", "weights / t", "time"):
        table.add_column(col, overflow="fold")
    for s in run_merges(r, only=name):
        how = ", ".join(f"{w:g}" for w in s["weights"]) if s["weights"] is not None else f"t={s['t']:g}"
        table.add_row(f"merge:{s['model']}", s["method"], ", ".join(s["models"]), how,
                      "reused" if s.get("reused") else f"{s['seconds']:.0f}s")
    console.print(table)


@app.command("eval")
def eval_(recipe: RecipeOpt = None, set_: SetOpt = None,
          model: Annotated[list[str] | None, typer.Option("--model", help="A model to compare (repeatable); "
                                                          "replaces eval.models. stage:sft, stage:<dpo stage>, merge:<name>/<variant> are this recipe's models.")] = None,
          benchmark: Annotated[list[str] | None, typer.Option("--benchmark", help="A benchmark (repeatable); "
                                                              "replaces eval.benchmarks.")] = None) -> None:
    """Evaluate the base model and others on safety benchmarks; write a comparison report.

    Input: a recipe (model = the base, judge, generation, eval section: benchmarks from eval/, models).
    Output: <output_dir>/eval/ (answers, judgments, report.md, report.csv, report.json). Answers are cached per
    model and benchmark.
    Example: deliberate eval --recipe recipes/demo.yaml --model stage:sft
    """
    from deliberate.stages.evaluate import comparison_rows, report_rows, run_eval

    r = _recipe(recipe, set_)
    report = run_eval(r, models=model, benchmarks=benchmark)
    tables = [(f"{r.name}: evaluation ({r.judge.backend} judge)", *report_rows(report["results"]))]
    if report["pairwise"]:
        tables.append((f"against {report['base']} (win rate [95% CI], Elo)", *comparison_rows(report)))
    for title, header, rows in tables:
        table = Table(title=title)
        for col in header:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    u = report["judge_usage"]
    console.print(f"judge calls: {u['requests']} made, {u['cache_hits']} cached, {u['failures']} failed")
    console.print(f"report in {Path(r.output_dir) / 'eval'} (report.md, report.csv, pairwise.csv, elo.csv, "
                  f"report.json{''.join(', ' + p for p in report['plots'])})")


# --- working verbs ---------------------------------------------------------------------------------------------

def _shorten(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command()
def answer(
    recipe: RecipeOpt = None,
    set_: SetOpt = None,
    model: ModelOpt = None,
    output: OutputOpt = None,
    examples: Annotated[int, typer.Option(help="Example answers to print per group.")] = 1,
) -> None:
    """Answer the recipe's prompts with a model (no spec in the prompt) and summarise the answers.

    Input: a recipe's model, data and generation sections. Output: <output_dir>/answers/answers.jsonl (one
    row per prompt with the answer, its token count and why it stopped) and summary.json. Resumable: rerunning
    generates only what is missing.
    Example: deliberate answer --model smollm2 --set data.where.split=heldout --set generation.max_new_tokens=64
    """
    from deliberate.services.answering import answer_prompts

    r = _recipe(recipe, set_, model, output)
    run = answer_prompts(r)
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in run.rows:
        key = (row.get("meta") or {}).get("kind") or row.get("expected") or "all"
        groups[key].append(row)
    table = Table(title=f"{r.model.name}: {len(run.rows)} answers ({run.generated} generated now)")
    for col in ("group", "prompts", "mean tokens", "cut at max", "example"):
        table.add_column(col, overflow="fold")
    for key, rows in sorted(groups.items()):
        cut = sum(row["finish_reason"] == "length" for row in rows)
        shown = "\n".join(f"Q: {_shorten(x['prompt'], 50)}\nA: {_shorten(x['answer'])}" for x in rows[:examples])
        table.add_row(key, str(len(rows)), f"{mean(x['num_tokens'] for x in rows):.0f}", f"{cut}", shown)
    console.print(table)
    if run.generated:
        console.print(
            f"{run.stats.new_tokens} new tokens in {run.stats.seconds:.1f}s "
            f"({run.stats.tokens_per_second:.0f} tokens/s); answers in {run.path}"
        )
    else:
        console.print(f"every answer was already in {run.path}; nothing generated")


@app.command()
def judge(
    responses: Annotated[Path, typer.Argument(help="JSONL/CSV/JSON/parquet with prompt and response (or answer) columns.")],
    against: Annotated[Path | None, typer.Option(help="A second answers file: judge pairwise, first vs this.")] = None,
    criterion: Annotated[str, typer.Option(help="Pairwise criterion: helpfulness, harmlessness or policy.")] = "harmlessness",
    response_column: Annotated[str | None, typer.Option(help="Column holding the response.")] = None,
    recipe: RecipeOpt = None,
    set_: SetOpt = None,
    output: OutputOpt = None,
) -> None:
    """Judge a file of responses with the recipe's judge (pointwise), or two files against each other (pairwise).

    Output: <output_dir>/judge/judgments.jsonl or pairwise.jsonl, summary.json and judge_usage.json. Judgments
    are cached, so a rerun makes no new calls.

    Example: deliberate judge runs/demo/answers/answers.jsonl --set judge.backend=openai --set judge.model=gpt-4o
    """
    from deliberate.judges import make_judge
    from deliberate.judges.prompts import CRITERIA
    from deliberate.services.spec import load_spec
    from deliberate.stages.judge import compare_files, judge_file

    if criterion not in CRITERIA:
        raise DeliberateError(f"--criterion '{criterion}': expected one of {', '.join(CRITERIA)}")
    r = _recipe(recipe, set_, None, output)
    j = make_judge(r.judge, load_spec(r.spec))
    out_dir = Path(r.output_dir) / "judge"
    try:
        if against is None:
            summary = judge_file(j, responses, out_dir, response_column)
            table = Table(title=f"{responses}: judged by {r.judge.backend}")
            for col in ("items", "judged", "failed", "mean score", "verdicts"):
                table.add_column(col)
            table.add_row(str(summary["items"]), str(summary["judged"]), str(summary["failed"]),
                          str(summary["mean_score"]), ", ".join(f"{k} {v}" for k, v in summary["verdicts"].items()))
        else:
            summary = compare_files(j, responses, against, out_dir, criterion, response_column)
            table = Table(title=f"{responses} vs {against} on {criterion}")
            for col in ("pairs", "wins", "losses", "ties", "failed", "win rate"):
                table.add_column(col)
            table.add_row(*(str(summary[k]) for k in ("items", "wins", "losses", "ties", "failures", "win_rate")))
    finally:
        j.close()
    console.print(table)
    console.print(j.usage.line())
    console.print(f"outputs in {out_dir}")


@app.command()
def data(
    recipe: RecipeOpt = None,
    set_: SetOpt = None,
    rows: Annotated[int, typer.Option(help="Rows to print.")] = 5,
) -> None:
    """Load the recipe's prompt data and show how its columns were read (counts and first rows).

    Example: deliberate data --set data.source=prompts.csv --set data.columns.prompt=question
    """
    from collections import Counter

    from deliberate.services.data import load_prompts
    from deliberate.services.spec import load_spec

    r = _recipe(recipe, set_)
    spec = load_spec(r.spec)
    records = load_prompts(r.data, spec)
    counts = Counter((rec.category or "-", rec.expected or "-") for rec in records)
    table = Table(title=f"{r.data.source}: {len(records)} prompts")
    for col in ("category", "in spec", "expected", "prompts"):
        table.add_column(col)
    for (cat, exp), n in sorted(counts.items()):
        table.add_row(cat, "yes" if spec.find(cat) else "no", exp, str(n))
    console.print(table)
    for rec in records[:rows]:
        console.print(f"[dim]{rec.id}[/] [{rec.category or '-'} / {rec.expected or '-'}] {_shorten(rec.prompt, 100)}")


@spec_app.command("show")
def spec_show(
    spec: Annotated[str, typer.Argument(help="'default' or a spec YAML file.")] = "default",
) -> None:
    """Print the whole spec: overview, styles and every category's policy."""
    from deliberate.services.spec import load_spec

    console.print(load_spec(spec).render_full(), markup=False, highlight=False)


@spec_app.command("validate")
def spec_validate(spec: Annotated[str, typer.Argument(help="A spec YAML file.")] = "default") -> None:
    """Check a spec file; prints a summary, or one error line and exit 2."""
    from deliberate.services.spec import load_spec

    s = load_spec(spec)
    console.print(f"ok: spec '{s.name}' version {s.version}: {len(s.categories)} categories "
                  f"({', '.join(s.category_ids)}), styles: {', '.join(s.styles)}")


@spec_app.command("render")
def spec_render(
    spec: Annotated[str, typer.Argument(help="'default' or a spec YAML file.")] = "default",
    category: Annotated[str, typer.Option("--category", "-c", help="Category id, title or alias.")] = "safe",
) -> None:
    """Print spec_for(category): what the model sees in its system prompt for a request of that category.

    Example: deliberate spec render --category "illicit behaviour"
    """
    from deliberate.services.spec import load_spec

    console.print(load_spec(spec).spec_for(category), markup=False, highlight=False)


@model_app.command("prepare")
def model_prepare(model: Annotated[str, typer.Argument(help="Hub id, folder, adapter folder or smollm2.")] = "smollm2") -> None:
    """Resolve a model (converting the embedded SmolLM2 once) and print where it is and its size."""
    from deliberate.config import ModelConfig
    from deliberate.services.models import load_model

    loaded = load_model(ModelConfig(name=model))
    n = sum(p.numel() for p in loaded.model.parameters())
    console.print(f"{model}: {loaded.path} ({n / 1e6:.1f}M parameters, {loaded.model.dtype}, {loaded.device})"
                  + (f" on base {loaded.base_path}" if loaded.base_path else ""))


@recipe_app.command("show")
def recipe_show(recipe: RecipeOpt = None, set_: SetOpt = None) -> None:
    """Print the fully resolved recipe (defaults filled in, overrides applied) as YAML."""
    import yaml

    r = _recipe(recipe, set_)
    console.print(yaml.safe_dump(r.model_dump(mode="json"), sort_keys=False), markup=False, highlight=False)


if __name__ == "__main__":
    app()
