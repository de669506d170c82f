"""The `deliberate` command line: a thin layer over the stages, and what every verb shares.

Every verb takes `--recipe R.yaml` and any number of `--set section.field=value` overrides (`a.b[i].c=value`
reaches one item of a list). On every verb that uses a model, `--model` sets the recipe's model (`model.name`:
what `answer` answers with, what training starts from, the base `eval` compares against); on every verb that
writes, `--output` sets its `output_dir`. The recipe's model may be one of its own outputs (`stage:sft`). User errors print
one `error:` line and exit 2. User text (prompts, paths, errors) is printed as it is, never read as markup.
Stage modules are imported inside each command, so that `deliberate --help` does not load torch.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from deliberate import __version__
from deliberate.errors import EXIT_USAGE, DeliberateError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class _App(typer.Typer):
    """Typer app that turns a DeliberateError, or a usage error (an unknown option, a missing argument), into one
    line on stderr and its exit code (2 for bad input, 3 when a stage's judgments or generations failed)."""

    def __call__(self, *args, **kwargs):
        # Typer carries its own click; its exception classes are reached through the public BadParameter.
        usage_error, click_error = (next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)
                                    for name in ("UsageError", "ClickException"))
        try:
            code = super().__call__(*args, **{**kwargs, "standalone_mode": False})
        except DeliberateError as e:
            _error(str(e))
            sys.exit(e.exit_code)
        except usage_error as e:
            if not e.format_message().strip():  # no arguments: the help was shown
                sys.exit(e.exit_code)
            where = f"; see `{e.ctx.command_path} --help`" if e.ctx is not None else ""
            _error(f"{e.format_message().rstrip('.')}{where}")
            sys.exit(e.exit_code)
        except click_error as e:
            _error(e.format_message())
            sys.exit(e.exit_code)
        except typer.Abort as e:  # an EOFError nobody caught
            _error(f"unexpected end of input ({e.__cause__ or 'EOF'})")
            sys.exit(EXIT_USAGE)
        if code == 130:  # Ctrl-C (typer turns KeyboardInterrupt into exit code 130)
            _error("interrupted; what was done is kept (judgments cached, answers and completions saved), so "
                   "running the same command again continues")
        if isinstance(code, int) and code:  # click returns the code of `typer.Exit` when not standalone
            sys.exit(code)


def _error(message: str) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), f" {' '.join(message.split())}"), soft_wrap=True)


app = _App(
    name="deliberate",
    help=(
        "Align language models to a written safety policy and compare alignment methods.\n\n"
        "Stages: generate -> filter -> sft (deliberative spec-reasoning SFT; `pipeline` runs all three), pairs "
        "-> dpo (offline preference optimisation: DPO/KTO, SACPO, MODPO), rl (judge-scored online RL), merge "
        "(mergekit, P-SACPO), eval (safety benchmarks, win rates, reports). Every verb reads a recipe (--recipe "
        "R.yaml) and takes --set section.field=value overrides; `deliberate recipe fields` lists every field.\n\n"
        "Example: deliberate answer --recipe recipes/demo.yaml --set generation.max_new_tokens=64"
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold secrets; never print them
    add_completion=False,
    rich_markup_mode="rich",  # keeps <think>, <output_dir> and [<variant>/] in help texts as written
)
spec_app = typer.Typer(help="Show, validate and render policy specs.", no_args_is_help=True)
model_app = typer.Typer(help="Prepare and inspect models.", no_args_is_help=True)
recipe_app = typer.Typer(help="Inspect recipes and their fields.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")
app.add_typer(model_app, name="model")
guard_app = typer.Typer(help="Train a small safety guard to serve as the `guard` judge.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
app.add_typer(guard_app, name="guard")

RecipeOpt = Annotated[
    Path | None, typer.Option("--recipe", "-r", help="Recipe YAML file; the built-in defaults when omitted.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help=escape("Override a recipe field: section.field=value, or "
                 "section.list[i].field=value (repeatable; the value is read as YAML)."), metavar="KEY=VALUE"),
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="The recipe's model (model.name): a Hub id, a folder, smollm2, "
                             "or one of this recipe's outputs such as stage:sft.")
]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Where outputs go (--set output_dir=...).")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue from the last checkpoint.")]


def command(group: typer.Typer = app, name: str | None = None):
    """Register a verb whose help is its docstring, shown as written: `[i]`, `[a<alpha>/]` and `<think>` are text,
    not rich markup."""
    def register(fn):
        return group.command(name, help=escape(inspect.getdoc(fn) or ""))(fn)

    return register


def load(recipe: Path | None, sets: list[str] | None, model: str | None = None, output: Path | None = None,
         extra: list[str] | None = None, uses_model: bool = True, writes: bool = True):
    """The recipe with the overrides and shorthand flags applied. For a verb that uses the model (`uses_model`), a
    `stage:`/`merge:` model is resolved to its folder (from `--model` or `model.name` alike). For a verb that
    `writes`, the output folder is checked to be writable before any work starts."""
    from deliberate.config import load_recipe
    from deliberate.services.io import check_writable
    from deliberate.services.runs import is_reference, stage_model

    overrides = list(sets or []) + list(extra or [])
    if output:
        overrides.append(f"output_dir={output}")
    r = load_recipe(recipe, overrides)
    if any(part.trainer_args for part in (r.sft, r.rl, r.rm, r.dpo)) or any("trainer_args" in s for s in r.dpo.stages):
        from deliberate.services.training import check_trainer_args  # imports trl: only when there are any

        check_trainer_args(r)
    if writes:
        check_writable(r.output_dir)
    name = model or r.model.name
    if uses_model and is_reference(name):
        name = stage_model(r, name)
    if name != r.model.name:
        r = r.model_copy(update={"model": r.model.model_copy(update={"name": name})})
    return r


def recorded(r, *folders: Path) -> None:
    """Write provenance.json (resolved recipe, versions, command, commit) into each stage folder that exists."""
    from deliberate.services.provenance import write_provenance
    from deliberate.services.training import is_main_process

    for folder in folders:
        if is_main_process() and Path(folder).is_dir():
            write_provenance(folder, r)


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"deliberate {__version__}")
        raise typer.Exit()
    _quiet_libraries()


def _quiet_libraries() -> None:
    """Our own progress bars and tables say what is happening; the libraries' per-file bars, notices and
    deprecation warnings a user cannot act on are noise."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is first imported
    for name in ("transformers", "trl", "peft", "accelerate", "datasets", "mergekit"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Deprecation notices are for developers (pytest shows them); a library's UserWarnings are not the user's.
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for module in ("transformers", "trl", "peft", "accelerate", "torch", "datasets", "mergekit"):
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# ---- output: user text is never markup ----

def say(*parts: str | tuple[str, str]) -> None:
    """One line: plain strings, or (text, style) pairs such as ("sft", "bold")."""
    console.print(Text.assemble(*parts), soft_wrap=True)


def warn(summary: dict) -> None:
    """The stage's failure warning (some judgments failed, within judge.max_failures), when it has one."""
    if summary.get("warning"):
        say((summary["warning"], "yellow"))


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=Text(title))
    for col in header:
        t.add_column(Text(col), overflow="fold")
    for row in rows:
        t.add_row(*(Text("-" if cell is None else str(cell)) for cell in row))
    console.print(t)


def num(value: float | None, digits: int = 4) -> str:
    """A measured number for a table: `digits` significant digits, `-` when there is none."""
    return "-" if value is None else f"{value:.{digits}g}"


def shorten(text: str, width: int = 70) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def raw(text: str) -> None:
    """Text exactly as it is (a prompt, a YAML file): no wrapping, no markup, no colour."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
