"""The stage verbs: generate, filter, sft, pipeline, pairs, dpo, rm, rl, merge, eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from deliberate.cli.app import (
    ModelOpt,
    OutputOpt,
    RecipeOpt,
    ResumeOpt,
    SetOpt,
    command,
    load,
    num,
    recorded,
    say,
    shorten,
    table,
    warn,
)
from deliberate.errors import DeliberateError


def _fraction(d: dict) -> str:
    return "-" if not d["n"] else f"{d['correct']}/{d['n']} = {d['accuracy']:.0%}"


def _print_generate(s: dict) -> None:
    say(("generate", "bold"), f": {s['completions']} completions ({s['generated_now']} generated now), "
        f"{s['well_formed']} well formed; malformed: {s['malformed'] or 'none'}; policy retrieval "
        f"{_fraction(s['policy_retrieval'])}")


def _print_filter(s: dict) -> None:
    warn(s)
    table(f"filter: kept {s['kept']}/{s['completions']} completions ({s['prompts_with_kept']}/{s['prompts']} prompts)",
          ["category", "completions", "malformed", "kept", "kept fraction", "prompts with kept"],
          [[name, c["completions"], c["malformed"], c["kept"], f"{c['kept_fraction']:.0%}",
            f"{c['prompts_with_kept']}/{c['prompts']}"] for name, c in s["per_category"].items()])


def _published(r, verb: str, section) -> None:
    """Upload the verb's finished models when the section's push_to_hub says so (main process only)."""
    from deliberate.services.hub import push

    for up in push(r, verb, section):
        say(f"pushed {up.label} to https://huggingface.co/{up.repo_id}")


def _print_sft(s: dict, model) -> None:
    if s.get("reused"):
        say(("sft", "bold"), f": already trained on this data with these settings; reused {model}")
        return
    say(("sft", "bold"), f": {s['examples']} examples, {s['steps']} steps in {s['seconds']:.0f}s, loss "
        f"{num(s['first_loss'])} -> {num(s['last_loss'])}; model in {model}")


@command()
def generate(recipe: RecipeOpt = None, set_: SetOpt = None, model: ModelOpt = None, output: OutputOpt = None) -> None:
    """Sample k spec-conditioned reasoning completions per prompt (deliberative alignment, stage one).

    The system prompt holds spec_for(category) and the reasoning instructions; completions are
    <think>reasoning</think> then the answer, parsed strictly. Input: a recipe (model or generate.teacher, spec,
    data, generate section). Output: <output_dir>/generate/completions.jsonl and summary.json. Resumable.
    Example: deliberate generate --recipe recipes/demo.yaml --set generate.samples=8
    """
    from deliberate.services.runs import Layout
    from deliberate.stages.generate import generate_completions

    r = load(recipe, set_, model, output)
    _print_generate(generate_completions(r).summary)
    recorded(r, Layout(r).generate)


@command(name="filter")
def filter_(recipe: RecipeOpt = None, set_: SetOpt = None, output: OutputOpt = None) -> None:
    """Judge the generated completions (min of judge.repeats; once for a deterministic judge) and keep those that clear filter.threshold.

    Input: <output_dir>/generate/completions.jsonl and the recipe's judge and filter sections. Output:
    <output_dir>/filter/judged.jsonl, kept.jsonl and summary.json (kept fractions per category).
    Example: deliberate filter --recipe recipes/demo.yaml --set filter.threshold=8
    """
    from deliberate.services.runs import Layout
    from deliberate.stages.filter import filter_completions

    r = load(recipe, set_, None, output, uses_model=False)
    _print_filter(filter_completions(r).summary)
    recorded(r, Layout(r).filter)


@command()
def sft(recipe: RecipeOpt = None, set_: SetOpt = None, model: ModelOpt = None, output: OutputOpt = None,
        resume: ResumeOpt = False) -> None:
    """Deliberative SFT: fine-tune on judge-filtered (prompt, reasoning, answer) data with the spec stripped.

    Builds <output_dir>/sft_data/train.jsonl from the kept completions (TRL conversational format, no system
    prompt), then trains with TRL's SFTTrainer (LoRA or full, loss on assistant tokens only). Output:
    <output_dir>/sft/model (full weights, with a model card), adapter/ (LoRA), checkpoints/, summary.json;
    `stage:sft` names the model later. A finished run with the same data and settings is reused.
    Example: deliberate sft --recipe recipes/demo.yaml --set sft.lora=false
    """
    from deliberate.services.runs import Layout
    from deliberate.stages.sft import run_sft, sft_dataset

    r = load(recipe, set_, model, output)
    _print_sft(run_sft(r, sft_dataset(r), resume=resume), Layout(r).sft.model)
    _published(r, "sft", r.sft)


@command()
def pipeline(recipe: RecipeOpt = None, set_: SetOpt = None, model: ModelOpt = None,
             output: OutputOpt = None) -> None:
    """Run generate -> filter -> sft from one recipe; each stage's finished output is reused.

    Example: deliberate pipeline --recipe recipes/demo.yaml
    """
    from deliberate.services.runs import Layout
    from deliberate.stages.filter import filter_completions
    from deliberate.stages.generate import generate_completions
    from deliberate.stages.sft import run_sft, sft_dataset

    r = load(recipe, set_, model, output)
    _print_generate(generate_completions(r).summary)
    recorded(r, Layout(r).generate)
    _print_filter(filter_completions(r).summary)
    recorded(r, Layout(r).filter)
    _print_sft(run_sft(r, sft_dataset(r)), Layout(r).sft.model)
    _published(r, "sft", r.sft)


@command()
def pairs(recipe: RecipeOpt = None, set_: SetOpt = None, model: ModelOpt = None, output: OutputOpt = None) -> None:
    """Judge-ranked preference pairs: sample pairs.samples completions per prompt, judge them, pair best vs worst.

    Input: a recipe (pairs.policy, e.g. stage:sft; data; judge with the category's spec). Output:
    <output_dir>/pairs/pairs.jsonl (TRL prompt/chosen/rejected with scores), kto.jsonl (prompt/completion/label),
    judged.jsonl, summary.json. Resumable; judgments are cached.
    Example: deliberate pairs --recipe recipes/demo.yaml --set pairs.samples=4
    """
    from deliberate.services.runs import Layout
    from deliberate.stages.pairs import build_pairs

    r = load(recipe, set_, model, output)
    s = build_pairs(r)
    recorded(r, Layout(r).pairs)
    warn(s)
    say(f"{s['completions']} completions from {s['policy']} ({s['generated_now']} new), {s['judged']} judged "
        f"(mean score {num(s['mean_score'])}), {s['judge_failures']} judge failures, {s['cut_off']} cut off")
    say(f"{s['pairs']} pairs ({s['ties']} prompts tied, {s['prompts_without_pair']} of {s['prompts']} prompts "
        f"without a pair); KTO: {s['kto_desirable']} desirable, {s['kto_undesirable']} undesirable; in "
        f"{Layout(r).pairs}")


@command()
def dpo(recipe: RecipeOpt = None, set_: SetOpt = None, model: ModelOpt = None, output: OutputOpt = None,
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
    from deliberate.services.runs import Layout
    from deliberate.stages.dpo import run_dpo

    r = load(recipe, set_, model, output, [f"dpo.method={method}"] if method else [])
    rows = []
    for s in run_dpo(r, only=stage, resume=resume):
        loss = "reused" if s.get("reused") else f"{num(s['first_loss'], 3)} -> {num(s['last_loss'], 3)}"
        rows.append([f"stage:{s['model']}", s["method"], shorten(str(s["start"]), 30), num(s["beta"]),
                     num(s.get("weight")), s["examples"], s["steps"], loss, num(s.get("reward_accuracy"), 2),
                     f"{s['seconds']:.0f}s"])
    table(f"{r.name}: preference optimisation",
          ["model", "method", "start", "beta", "w", "examples", "steps", "loss", "reward acc.", "time"], rows)
    say(f"models in {Layout(r).root / 'dpo'}")
    _published(r, "dpo", r.dpo)


@command()
def rm(recipe: RecipeOpt = None, set_: SetOpt = None, model: ModelOpt = None, output: OutputOpt = None,
       name: Annotated[list[str] | None, typer.Option(help="Train only this model of rm.models (repeatable).")] = None,
       resume: Annotated[bool, typer.Option(help="Continue each model from its last checkpoint.")] = False) -> None:
    """Reward and cost models on preference pairs (TRL RewardTrainer): Safe RLHF's first step, MODPO's margin.

    Input: a recipe (model, rm section: models, each a reward or cost model on pairs in any format dpo reads).
    Output: <output_dir>/rm/<name>/model (full weights, deliberate_rm.json with held-out accuracy), adapter/,
    checkpoints/, summary.json; `rm:<name>` names it as a classifier judge (rl.reward_judge, rl.cost_judge) or
    a MODPO margin. Finished models are reused.
    Example: deliberate rm --recipe recipes/safe-rlhf-cpu.yaml
    """
    from deliberate.services.runs import Layout
    from deliberate.stages.rm import run_rm

    r = load(recipe, set_, model, output)
    rows = []
    for s in run_rm(r, only=name, resume=resume):
        held = s["held_out"]
        acc, base = held["accuracy"], held["baseline_longer_wins"]
        loss = "reused" if s.get("reused") else f"{num(s['first_loss'], 3)} -> {num(s['last_loss'], 3)}"
        sign = held.get("sign_accuracy")
        rows.append([s["model"], s["kind"], s["examples"], s["steps"], loss,
                     f"{acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] (n={held['pairs']})",
                     f"{base['value']:.3f}", f"{sign['value']:.3f}" if sign else "-", f"{s['seconds']:.0f}s"])
    table(f"{r.name}: reward and cost models",
          ["model", "kind", "pairs", "steps", "loss", "held-out accuracy", "longer wins", "sign acc.", "time"], rows)
    say(f"models in {Layout(r).root / 'rm'}")
    _published(r, "rm", r.rm)


@command()
def rl(recipe: RecipeOpt = None, set_: SetOpt = None, model: ModelOpt = None, output: OutputOpt = None,
       algo: Annotated[str | None, typer.Option(help="Shorthand for --set rl.algo=...: grpo, rloo, ppo or "
                                                     "ppo-lagrangian.")] = None,
       resume: ResumeOpt = False) -> None:
    """Online RL with a judge reward: GRPO, RLOO (TRL), PPO with a value model, PPO-Lagrangian (Safe RLHF).

    The judge gets spec_for(category), the prompt and the final answer only, never the reasoning.
    Input: a recipe (rl.start, e.g. stage:sft; prompts; judge; rl settings). Output: <output_dir>/rl/model
    (full weights), adapter/, log.jsonl and training.png (reward, KL, cost, lambda per step), summary.json,
    checkpoints/; `stage:rl` names the model in evals. Runs under `accelerate launch` too.
    Example: deliberate rl --recipe recipes/grpo-demo.yaml --algo ppo
    """
    from deliberate.services.runs import Layout
    from deliberate.services.training import is_main_process
    from deliberate.stages.rl import run_rl

    r = load(recipe, set_, model, output, [f"rl.algo={algo}"] if algo else [])
    s = run_rl(r, resume=resume)
    run = Layout(r).rl
    if not is_main_process():
        return
    _published(r, "rl", r.rl)
    if s.get("reused"):
        say(("rl", "bold"), f": already trained with these inputs; reused {run.model}")
        return
    cost = f"{num(s['cost_first_steps'])} -> {num(s['cost_last_steps'])} (<= {s['cost_threshold']})" \
        if "cost_threshold" in s else "-"
    split = " / ".join(num(s.get(k), 3) for k in ("seconds_generation", "seconds_judge", "seconds_optimisation"))
    table(f"{r.name}: rl ({s['algo']})",
          ["steps", "reward (first quarter -> last)", "cost", "lambda", "s/step: gen / judge / opt", "time"],
          [[s["steps"], f"{num(s['reward_first_steps'])} -> {num(s['reward_last_steps'])}", cost,
            num(s.get("lambda")), split, f"{s['seconds']:.0f}s"]])
    failures = s["reward_scorer"]["failures"] + s.get("cost_scorer", {}).get("failures", 0)
    if failures:
        say((f"{failures} completions got no score (failed judgments) and carried no weight", "yellow"))
    say(f"model in {run.model}; per-step log in {run.folder / 'log.jsonl'}")


@command()
def merge(recipe: RecipeOpt = None, set_: SetOpt = None, output: OutputOpt = None,
          name: Annotated[list[str] | None, typer.Option("--name", help="Run only this merge (repeatable).")] = None
          ) -> None:
    """Merge models with mergekit (linear, task_arithmetic, ties, dare_ties, slerp; P-SACPO sweeps).

    Input: a recipe's merge.merges (models, weights or alphas). Output: <output_dir>/merge/<name>/[a<alpha>/]model;
    `merge:<name>/a<alpha>` refers to it in evals.
    Example: deliberate merge --recipe recipes/sacpo-cpu.yaml
    """
    from deliberate.stages.merge import run_merges

    r = load(recipe, set_, None, output, uses_model=False)
    if not r.merge.merges:
        raise DeliberateError("merge: the recipe lists no merges (merge.merges); nothing to do")
    rows = []
    for s in run_merges(r, only=name):
        how = ", ".join(num(w) for w in s["weights"]) if s["weights"] is not None else f"t={num(s['t'])}"
        rows.append([f"merge:{s['model']}", s["method"], ", ".join(s["models"]), how,
                     "reused" if s.get("reused") else f"{s['seconds']:.0f}s"])
    table(f"{r.name}: merges", ["model", "method", "models", "weights / t", "time"], rows)
    _published(r, "merge", r.merge)


@command(name="eval")
def eval_(recipe: RecipeOpt = None, set_: SetOpt = None, model: ModelOpt = None, output: OutputOpt = None,
          compare: Annotated[list[str] | None, typer.Option(
              "--compare", "-c", help=escape("A model to compare with the recipe's model (repeatable; replaces "
              "eval.models): stage:sft, stage:<dpo stage>[/<variant>], merge:<name>/<variant>, /* for every "
              "variant, a folder or a Hub id."))] = None,
          benchmark: Annotated[list[str] | None, typer.Option("--benchmark", "-b", help="A benchmark (repeatable; "
                                                              "replaces eval.benchmarks).")] = None) -> None:
    """Evaluate the recipe's model and the models it is compared with on safety benchmarks; write a report.

    Input: a recipe (model = the base, judge, generation, eval section: benchmarks by name, packaged or from
    ./eval/<name>.yaml, or a file; models).
    Output: <output_dir>/eval/ (answers, judgments, report.md, report.csv, report.json). Answers are cached per
    model and benchmark.
    Example: deliberate eval --recipe recipes/demo.yaml --compare stage:sft --benchmark xstest
    """
    from deliberate.services.runs import Layout
    from deliberate.stages.evaluate import comparison_rows, report_rows, run_eval

    r = load(recipe, set_, model, output)
    report = run_eval(r, models=compare, benchmarks=benchmark)
    recorded(r, Layout(r).eval)
    warn(report)
    table(f"{r.name}: evaluation ({r.judge.backend} judge{f', {r.judge.model}' if r.judge.model else ''})",
          *report_rows(report["results"]))
    if report["pairwise"]:
        table(f"against {report['base']} (win rate [95% CI], Elo)", *comparison_rows(report))
    u = report["judge_usage"]
    say(f"judge calls: {u['requests']} made, {u['cache_hits']} cached, {u['failures']} failed")
    say(f"report in {Layout(r).eval} (report.md, report.csv, pairwise.csv, elo.csv, report.json"
        f"{''.join(', ' + p for p in report['plots'])})")



@command()
def study(
    file: Annotated[Path, typer.Argument(help="The study file (config/study.py: recipe, seeds, benchmarks, methods).",
                                         metavar="STUDY.yaml")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help=escape(
        "Override a study field: field=value, e.g. seeds=[0,1] or methods[1].set=[dpo.beta=0.05] (repeatable)."),
        metavar="KEY=VALUE")] = None,
) -> None:
    """Compare alignment methods: every method x seed trained end to end, evaluated with the base on the same benchmarks by the same judge, one leaderboard.

    Each run goes to <output_dir>/runs/<method>/seed<k>/ (finished stages are reused: a rerun after a crash
    continues), the evaluation to <output_dir>/eval/, and the comparison to <output_dir>/leaderboard.md, .csv,
    .json and .png: per method the mean over seeds of each rate with a 95% interval over seeds and prompts, and
    its paired difference from the base and from the best method.
    Example: deliberate study recipes/studies/cpu-quick.yaml --set seeds=[0]
    """
    from deliberate.cli.study import load_study, output_dir, run_study

    config, base = load_study(file, set_)
    board = run_study(config, base, say=say)
    rows = [[r["benchmark"], r["metric"].replace("_rate", ""), r["method"] + (" (best)" if r["method"] == r["best"]
             else " =" if r["tied_with_best"] else ""), num(r["rate"]["value"], 3),
             " ".join(num(v, 2) for v in r["rate"]["per_seed"]),
             num(r["vs_base"]["value"], 3) if r["vs_base"] else "-"] for r in board["rows"] if r["benchmark"] == "all"]
    table(f"{config.name}: all benchmarks pooled (mean over seeds; = : not told apart from the best)",
          ["prompts", "rate", "method", "mean", "per seed", "vs base"], rows)
    say(f"leaderboard in {output_dir(config)} (leaderboard.md, .csv, .json{', ' + board['plot'] if board['plot'] else ''})")
