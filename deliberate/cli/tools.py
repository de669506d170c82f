"""The working verbs: answer, judge, data, and the spec, model, recipe and guard groups."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from statistics import mean
from typing import Annotated

import typer
import yaml

from deliberate.cli.app import (
    ModelOpt,
    OutputOpt,
    RecipeOpt,
    SetOpt,
    command,
    guard_app,
    load,
    model_app,
    num,
    raw,
    recipe_app,
    recorded,
    say,
    shorten,
    spec_app,
    table,
    warn,
)
from deliberate.errors import DeliberateError


@command()
def answer(
    recipe: RecipeOpt = None,
    set_: SetOpt = None,
    model: ModelOpt = None,
    output: OutputOpt = None,
    examples: Annotated[int, typer.Option(help="Example answers to print per group.")] = 1,
) -> None:
    """Answer the recipe's prompts with the recipe's model (no spec in the prompt) and summarise the answers.

    Input: a recipe's model, data and generation sections. Output: <output_dir>/answers/answers.jsonl (one
    row per prompt with the answer, its token count and why it stopped) and summary.json. Resumable: rerunning
    generates only what is missing.
    Example: deliberate answer --model smollm2 --set data.where.split=heldout --set generation.max_new_tokens=64
    """
    from deliberate.services.answering import answer_prompts

    r = load(recipe, set_, model, output)
    run = answer_prompts(r)
    recorded(r, run.path.parent)
    summary = run.path.with_name("summary.json")
    if summary.is_file():
        warn(json.loads(summary.read_text(encoding="utf-8")))  # answers that failed within judge.max_failures
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in run.rows:
        groups[(row.get("meta") or {}).get("kind") or row.get("expected") or "all"].append(row)
    rows = []
    for key, members in sorted(groups.items()):
        shown = "\n".join(f"Q: {shorten(x['prompt'], 50)}\nA: {shorten(x['answer'])}" for x in members[:examples])
        rows.append([key, len(members), f"{mean(x['num_tokens'] for x in members):.0f}",
                     sum(x["finish_reason"] == "length" for x in members), shown])
    table(f"{r.model.name}: {len(run.rows)} answers ({run.generated} generated now)",
          ["group", "prompts", "mean tokens", "cut at max", "example"], rows)
    if run.generated:
        say(f"{run.stats.new_tokens} new tokens in {run.stats.seconds:.1f}s "
            f"({run.stats.tokens_per_second:.0f} tokens/s); answers in {run.path}")
    else:
        say(f"every answer was already in {run.path}; nothing generated")


@command()
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

    Output: <output_dir>/judge/judgments.jsonl or pairwise.jsonl, summary.json and judge_usage.json. Columns
    are read with the recipe's data mapping (--set data.columns.expected=label, data.expected=refuse, ...).
    Judgments are cached as they arrive, so a rerun makes no new calls; when more fail than
    judge.max_failures allows, the outputs go to judge/incomplete/ and the command exits 3. `judge.hide_reasoning` says whether the judge sees the reasoning.
    Example: deliberate judge runs/demo/answers/answers.jsonl --set judge.backend=openai --set judge.model=gpt-4o
    """
    from deliberate.errors import did_you_mean
    from deliberate.judges import make_judge
    from deliberate.judges.prompts import CRITERIA
    from deliberate.services.runs import Layout, resolve_judge
    from deliberate.services.spec import load_spec
    from deliberate.stages.judge import compare_files, judge_file

    if criterion not in CRITERIA:
        raise DeliberateError(f"--criterion '{criterion}': {did_you_mean(criterion, CRITERIA)}expected one of "
                              f"{', '.join(CRITERIA)}")
    r = load(recipe, set_, None, output, uses_model=False)
    spec = load_spec(r.spec)
    j = make_judge(resolve_judge(r, r.judge), spec)
    out_dir = Layout(r).judge
    how = {"data": r.data, "spec": spec, "max_failures": r.judge.max_failures}
    try:
        if against is None:
            s = judge_file(j, responses, out_dir, response_column, **how)
            table(f"{responses}: judged by {r.judge.backend}", ["items", "judged", "failed", "mean score", "verdicts"],
                  [[s["items"], s["judged"], s["failed"], num(s["mean_score"]),
                    ", ".join(f"{k} {v}" for k, v in s["verdicts"].items())]])
        else:
            s = compare_files(j, responses, against, out_dir, criterion, response_column, **how)
            table(f"{responses} vs {against} on {criterion}", ["pairs", "wins", "losses", "ties", "failed", "win rate"],
                  [[s["items"], s["wins"], s["losses"], s["ties"], s["failures"], num(s["win_rate"], 3)]])
    finally:
        j.close()
    recorded(r, out_dir)
    warn(s)
    say(j.usage.line())
    say(f"outputs in {out_dir}")


@command()
def data(
    recipe: RecipeOpt = None,
    set_: SetOpt = None,
    rows: Annotated[int, typer.Option(help="Rows to print.")] = 5,
) -> None:
    """Load the recipe's prompt data and show how its columns were read (counts and first rows).

    Example: deliberate data --set data.source=prompts.csv --set data.columns.prompt=question
    """
    from deliberate.services.benchmarks import training_prompts
    from deliberate.services.spec import load_spec

    r = load(recipe, set_, uses_model=False, writes=False)
    spec = load_spec(r.spec)
    records = training_prompts(r.data, spec, r.eval.datasets_dir)
    counts = Counter((rec.category or "-", rec.expected or "-") for rec in records)
    table(f"{' + '.join(m.name for m in r.data.mix) or r.data.source}: {len(records)} prompts", ["category", "in spec", "expected", "prompts"],
          [[cat, "yes" if spec.find(cat) else "no", exp, n] for (cat, exp), n in sorted(counts.items())])
    for rec in records[:rows]:
        say((rec.id, "dim"), f" [{rec.category or '-'} / {rec.expected or '-'}] {shorten(rec.prompt, 100)}")


@command(spec_app, "show")
def spec_show(
    spec: Annotated[str, typer.Argument(help="'default' or a spec YAML file.")] = "default",
) -> None:
    """Print the whole spec: overview, styles and every category's policy."""
    from deliberate.services.spec import load_spec

    raw(load_spec(spec).render_full())


@command(spec_app, "validate")
def spec_validate(spec: Annotated[str, typer.Argument(help="A spec YAML file.")] = "default") -> None:
    """Check a spec file; prints a summary, or one error line and exit 2."""
    from deliberate.services.spec import load_spec

    s = load_spec(spec)
    say(f"ok: spec '{s.name}' version {s.version}: {len(s.categories)} categories ({', '.join(s.category_ids)}), "
        f"styles: {', '.join(s.styles)}")


@command(spec_app, "render")
def spec_render(
    spec: Annotated[str, typer.Argument(help="'default' or a spec YAML file.")] = "default",
    category: Annotated[str, typer.Option("--category", "-c", help="Category id, title or alias.")] = "safe",
) -> None:
    """Print spec_for(category) exactly as the model sees it in its system prompt for a request of that category.

    Example: deliberate spec render --category "illicit behaviour" > prompt.txt
    """
    from deliberate.services.spec import load_spec

    raw(load_spec(spec).spec_for(category))


@command(model_app, "prepare")
def model_prepare(model: Annotated[str, typer.Argument(help="Hub id, folder, adapter folder or smollm2.")] = "smollm2") -> None:
    """Resolve a model (converting the embedded SmolLM2 once) and print where it is and its size."""
    from deliberate.config import ModelConfig
    from deliberate.services.models import load_model

    loaded = load_model(ModelConfig(name=model))
    n = sum(p.numel() for p in loaded.model.parameters())
    say(f"{model}: {loaded.path} ({n / 1e6:.1f}M parameters, {loaded.model.dtype}, {loaded.device})"
        + (f" on base {loaded.base_path}" if loaded.base_path else ""))


def _metric(m: dict | None, name: str) -> str:
    value = (m or {}).get(name) or {}
    if value.get("value") is None:
        return "-"
    low, high = value["ci95"]
    return f"{value['value']:.3f} [{low:.3f}, {high:.3f}]"


@command(guard_app, "train")
def guard_train(recipe: RecipeOpt = None, set_: SetOpt = None, output: OutputOpt = None) -> None:
    """Train a guard (probes on a transformer's middle layer) on the recipe's `guard.sources`, and report it on
    the held-out side of every source.

    Output: <output_dir>/guard (or guard.output): a model folder that `judge.backend: guard` serves, with
    manifest.jsonl (every example's train/test side) and summary.json (held-out accuracy, F1, AUROC).
    Example: deliberate guard train --recipe recipes/guard.yaml
    """
    from deliberate.stages.guard import run_guard_train

    r = load(recipe, set_, None, output, uses_model=False)
    s = run_guard_train(r)
    recorded(r, Path(s["output"]))
    counts = s["examples"]
    reading = (f"{s['features_read_now']} items read at {s['items_per_second']}/s" if s["features_read_now"]
               else "every item's features from the cache")
    table(f"guard: layer {s['layer']} of {s['of_layers']}, trained in {s['seconds']:.0f}s ({reading})",
          ["question", "train", "test", "accuracy [95% CI]", "F1", "AUROC"],
          [[task, counts[task]["train"], counts[task]["test"], _metric(s["heldout"].get(task), "accuracy"),
            _metric(s["heldout"].get(task), "f1"), _metric(s["heldout"].get(task), "auroc")] for task in counts])
    if "category" in s["heldout"]:
        c = s["heldout"]["category"]
        say(f"category (held-out harmful requests with a mapped category, and harmless ones): accuracy "
            f"{c['accuracy']:.3f} (n={c['n']})")
    dropped = s["dropped"]
    say(f"left out of training: {dropped['shares_a_test_prompt']} examples sharing a held-out prompt, "
        f"{dropped['excluded_prompt']} with an evaluation prompt ({s['excluded_prompts']} excluded prompts)")
    say(f"guard in {s['output']}; use it with --set judge.backend=guard --set judge.model={s['output']}")


@command(recipe_app, "show")
def recipe_show(
    recipe: RecipeOpt = None,
    set_: SetOpt = None,
    section: Annotated[str | None, typer.Option("--section", help="Only this section (sft, dpo, judge, ...).")] = None,
) -> None:
    """Print the fully resolved recipe (defaults filled in, overrides applied) as YAML.

    Example: deliberate recipe show --recipe recipes/demo.yaml --section generate
    """
    from deliberate.config.reference import reference

    r = load(recipe, set_, uses_model=False, writes=False)
    dumped = r.model_dump(mode="json")
    if section is not None:
        reference(section)  # an unknown section is an error with a did-you-mean
        dumped = {section: dumped[section]}
    raw(yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True))


@command(recipe_app, "fields")
def recipe_fields(
    section: Annotated[str | None, typer.Argument(help="Only this section (sft, dpo, judge, ...).")] = None,
    markdown: Annotated[bool, typer.Option(help="Print the whole reference as Markdown (docs/recipe.md).")] = False,
) -> None:
    """The recipe's fields: each one's type, default and what it does (from the field docstrings).

    Example: deliberate recipe fields dpo
    """
    from deliberate.config import reference as ref

    if markdown:
        raw(ref.markdown())
        return
    table(f"recipe fields{f': {section}' if section else ''}", ["field", "type", "default", "what it does"],
          [[r.path, r.type, r.default, r.doc] for r in ref.reference(section)])


def _summary(path: Path) -> str:
    """The first line of a packaged file's opening comment, which says what it is."""
    from deliberate.config.yamlio import read_text

    first = (read_text(path).lstrip().splitlines() or [""])[0]
    return shorten(first.removeprefix("#").strip(), 80) if first.startswith("#") else ""


@command(recipe_app, "list")
def recipe_list(
    paths_only: Annotated[bool, typer.Option("--paths-only", help="Print only the files' paths, one a line.")] = False,
) -> None:
    """The recipes and accelerate configs that ship with deliberate, and where they are.

    A packaged recipe is used by its name (`--recipe demo`), or copied to start your own (`deliberate recipe init
    --from demo`); an accelerate config is for `accelerate launch --config_file PATH`.
    Example: deliberate recipe list
    """
    from deliberate.resources import accelerate_configs, packaged_recipes, resource_path

    files = [*packaged_recipes().values(), *accelerate_configs().values()]
    if paths_only:
        raw("\n".join(str(path) for path in files))
        return
    folder = resource_path("recipes")
    table(f"packaged recipes (--recipe NAME) and accelerate configs (--config_file PATH), in {folder}",
          ["file", "what it is"], [[path.relative_to(folder), _summary(path)] for path in files])


@command(recipe_app, "init")
def recipe_init(
    path: Annotated[Path, typer.Argument(help="The recipe file to write.")] = Path("recipe.yaml"),
    source: Annotated[str, typer.Option("--from", help="The recipe to start from: a packaged recipe's name "
                                        "(deliberate recipe list) or a recipe file.")] = "demo",
    force: Annotated[bool, typer.Option("--force", help="Overwrite PATH when it exists.")] = False,
) -> None:
    """Write a starter recipe to edit: a packaged recipe copied as it is (comments included), or, when it
    `extends` others, merged with them into one file that needs none of them.

    Example: deliberate recipe init my.yaml --from sacpo-cpu
    """
    from deliberate.config.recipe import load_recipe, read_recipe
    from deliberate.config.yamlio import read_text
    from deliberate.resources import resource_path
    from deliberate.services.io import atomic_write_text

    if path.exists() and not force:
        raise DeliberateError(f"{path}: exists; choose another file, or add --force to overwrite it")
    load_recipe(source)  # a broken source is an error before anything is written
    files, merged = read_recipe(source)
    packaged = resource_path("recipes").resolve()
    names = [str(f.resolve().relative_to(packaged)) if f.resolve().is_relative_to(packaged) else str(f)
             for f in files]
    if len(files) == 1:
        text, what = read_text(files[0]), f"a copy of {names[0]}"
    else:
        text = (f"# Written by `deliberate recipe init --from {source}`: {', '.join(names)} merged into one\n"
                "# file (later ones win), so that it extends nothing. Every field: deliberate recipe fields\n"
                + yaml.safe_dump(merged, sort_keys=False, allow_unicode=True))
        what = f"{names[-1]} merged with what it extends ({', '.join(names[:-1])})"
    atomic_write_text(path, text)
    say(f"wrote {path}: {what}")
    say(f"run it: deliberate pipeline --recipe {path} (or generate, pairs, dpo, rl, eval, ... --recipe {path}); "
        f"see it resolved: deliberate recipe show --recipe {path}")
