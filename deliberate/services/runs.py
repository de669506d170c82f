"""Names for the models a recipe produces, so stages, merges and evals can refer to each other.

- `stage:sft`: the deliberative SFT model (`<output_dir>/sft/model`).
- `stage:<name>`: a `dpo` stage's model (`<output_dir>/dpo/<name>/model`); for a swept stage
  `stage:<name>/<variant>` (e.g. `stage:safe/beta0.025`), and `stage:<name>/*` for every variant.
- `stage:rl`: the `deliberate rl` model (`<output_dir>/rl/model`).
- `merge:<name>/<variant>` (e.g. `merge:p-sacpo/a0.75`), `merge:<name>/*` for all of a merge's outputs.

Anything else is a model as in `model.name` (folder, adapter folder, Hub id, `smollm2`) and is returned as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deliberate.config import Recipe
from deliberate.errors import DeliberateError

DONE = "deliberate_model.json"  # written last into a finished dpo or merge model folder


def is_reference(name: str) -> bool:
    return name.startswith(("stage:", "merge:"))


def _variants(folder: Path) -> dict[str, Path]:
    """Finished models under a stage or merge folder: '' for a single model, else variant name -> folder."""
    if (folder / "model" / DONE).is_file():
        return {"": folder / "model"}
    return {p.parent.name: p for p in sorted(folder.glob("*/model")) if (p / DONE).is_file()}


def stage_models(recipe: Recipe, ref: str) -> list[tuple[str, str]]:
    """(label, path) for every model `ref` names; `*` as the variant expands to all of them."""
    if not is_reference(ref):
        return [(ref, ref)]
    kind, _, rest = ref.partition(":")
    name, _, variant = rest.partition("/")
    out = Path(recipe.output_dir)
    if kind == "stage" and name == "sft":
        from deliberate.stages.sft import sft_paths

        path = sft_paths(recipe)["model"]
        if not path.is_dir():
            raise DeliberateError(f"{ref}: no model yet ({path}); run `deliberate sft` first")
        return [(ref, str(path))]
    if kind == "stage" and name == "rl":
        path = out / "rl" / "model"
        if not (path / DONE).is_file():
            raise DeliberateError(f"{ref}: no model yet ({path}); run `deliberate rl` first")
        return [(ref, str(path))]
    folder = out / ("dpo" if kind == "stage" else "merge") / name
    verb = "dpo" if kind == "stage" else "merge"
    found = _variants(folder)
    if not found:
        raise DeliberateError(f"{ref}: no finished model in {folder}; run `deliberate {verb}` first")
    if variant == "*":
        return [(f"{kind}:{name}" + (f"/{v}" if v else ""), str(p)) for v, p in found.items()]
    if variant in found:
        return [(ref, str(found[variant]))]
    if not variant and len(found) == 1:
        return [(ref, str(next(iter(found.values()))))]
    choices = ", ".join(f"{kind}:{name}/{v}" if v else f"{kind}:{name}" for v in found)
    raise DeliberateError(f"{ref}: no such model; {folder} has: {choices}")


def stage_model(recipe: Recipe, ref: str) -> str:
    """The one model folder (or Hub id) `ref` names."""
    models = stage_models(recipe, ref)
    if len(models) != 1:
        raise DeliberateError(f"{ref}: names {len(models)} models where one is needed")
    return models[0][1]


@dataclass
class StageRun:
    rows: list[dict[str, Any]]
    path: Path
    summary: dict[str, Any]
