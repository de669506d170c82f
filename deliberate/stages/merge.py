"""`deliberate merge`: model merging with mergekit's Python API (linear, task_arithmetic, ties, dare_ties,
slerp), including SACPO's P-SACPO sweep.

Each entry of `merge.merges` names its models (folders, `stage:...` / `merge:...` outputs of this recipe, Hub
ids, or LoRA adapter folders, which mergekit merges into their base first). With `alphas` and two models, one
merge per a with weights (1 - a, a): P-SACPO is `[stage:helpful, stage:helpful-then-safe]` and the naive
baseline `[stage:helpful, stage:safe-only]`. Paths are made absolute before mergekit sees them (relative ones
make it query the Hub offline) and our own model card replaces mergekit's, which needs the Hub.

Outputs in `<output_dir>/merge/<name>/` (`<name>/a<a>/` per alpha): `model/` (weights, tokenizer, card, and
the mergekit configuration as `mergekit_config.yml`) and `summary.json`. A finished merge whose inputs have not
changed is reused.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge

from deliberate.config import MergeSpec, Recipe
from deliberate.errors import DeliberateError
from deliberate.services.io import atomic_write_text
from deliberate.services.models import adapter_base, resolve_model_path
from deliberate.services.provenance import model_card
from deliberate.services.runs import Layout, ModelRun, fingerprint, model_identity, stage_model

WEIGHTED = ("linear", "task_arithmetic", "ties", "dare_ties")
NEEDS_BASE = ("task_arithmetic", "ties", "dare_ties")


def _reference(recipe: Recipe, name: str) -> str:
    """A mergekit model reference: an absolute folder, `base+adapter` for a LoRA adapter, or a Hub id."""
    path = resolve_model_path(stage_model(recipe, name))
    if not Path(path).is_dir():
        return path
    base = adapter_base(path)
    return f"{resolve_model_path(base)}+{path}" if base else path


def variants(spec: MergeSpec) -> list[tuple[str, list[float] | None, float | None]]:
    """(variant name, per-model weights, slerp t) for every merge the entry makes."""
    n = len(spec.models)
    if spec.alphas:
        if n != 2:
            raise DeliberateError(f"merge '{spec.name}': alphas need exactly two models (got {n})")
        if spec.method == "slerp":
            return [(f"a{a:g}", None, a) for a in spec.alphas]
        return [(f"a{a:g}", [1 - a, a], None) for a in spec.alphas]
    if spec.method == "slerp":
        raise DeliberateError(f"merge '{spec.name}': slerp needs alphas (its interpolation factor t)")
    if spec.weights and len(spec.weights) != n:
        raise DeliberateError(f"merge '{spec.name}': {len(spec.weights)} weights for {n} models")
    return [("", spec.weights or [1.0 / n] * n, None)]


def mergekit_config(recipe: Recipe, spec: MergeSpec, weights: list[float] | None, t: float | None) -> dict[str, Any]:
    """The mergekit configuration (the same mapping `mergekit-yaml` reads) for one merge."""
    models = [_reference(recipe, m) for m in spec.models]
    config: dict[str, Any] = {"merge_method": spec.method, "dtype": spec.dtype}
    if spec.method == "slerp":
        base = _reference(recipe, spec.base_model) if spec.base_model else models[0]
        config.update(base_model=base, models=[{"model": m} for m in models], parameters={"t": t})
        return config
    entries = []
    for model, w in zip(models, weights or [], strict=True):
        params: dict[str, Any] = {"weight": w}
        if spec.method in ("ties", "dare_ties"):
            params["density"] = spec.density
        entries.append({"model": model, "parameters": params})
    config["models"] = entries
    if spec.method in NEEDS_BASE:
        if not spec.base_model:
            raise DeliberateError(f"merge '{spec.name}': {spec.method} needs base_model (e.g. the SFT model)")
        config["base_model"] = _reference(recipe, spec.base_model)
    if spec.method in ("linear", "ties", "dare_ties"):
        config["parameters"] = {"normalize": spec.normalize}
    return config


def run_merges(recipe: Recipe, only: list[str] | None = None, show_progress: bool = True) -> list[dict[str, Any]]:
    """Run every merge of the recipe (or the named ones); returns one summary per merged model."""
    specs = recipe.merge.merges
    names = [s.name for s in specs]
    for name in only or []:
        if name not in names:
            raise DeliberateError(f"merge: no merge '{name}' (merges: {', '.join(names)})")
    out = []
    for spec in specs:
        if only and spec.name not in only:
            continue
        for variant, weights, t in variants(spec):
            out.append(merge_one(recipe, spec, weights, t, Layout(recipe).merge(spec.name, variant),
                                 f"{spec.name}{'/' + variant if variant else ''}", show_progress))
    return out


def merge_one(recipe: Recipe, spec: MergeSpec, weights: list[float] | None, t: float | None, run: ModelRun,
              label: str, show_progress: bool = True) -> dict[str, Any]:
    config = mergekit_config(recipe, spec, weights, t)
    inputs = [part for m in config["models"] for part in m["model"].split("+")] + (
        config["base_model"].split("+") if config.get("base_model") else [])
    fp = fingerprint({"config": config, "inputs": [model_identity(p) for p in inputs]})
    if reused := run.reusable(fp):
        return reused
    try:
        merge_config = MergeConfiguration.model_validate(config)
    except Exception as e:  # pydantic ValidationError: report its first line
        raise DeliberateError(f"merge '{spec.name}': mergekit rejects the configuration: "
                              f"{str(e).splitlines()[0]}") from None
    tmp = run.folder / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    options = MergeOptions(copy_tokenizer=True, write_model_card=False, quiet=not show_progress,
                           lora_merge_cache=str(Layout(recipe).root / "merge" / ".lora_cache"),
                           random_seed=recipe.seed, trust_remote_code=recipe.model.trust_remote_code)
    t0 = time.perf_counter()
    try:
        run_merge(merge_config, out_path=str(tmp), options=options)
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DeliberateError(f"merge '{label}': mergekit failed: {str(e).strip().splitlines()[0]}") from None
    summary = {"fingerprint": fp, "merge": spec.name, "model": label, "method": spec.method,
               "models": spec.models, "weights": weights, "t": t, "base_model": spec.base_model,
               "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_text(tmp / "mergekit_config.yml", yaml.safe_dump(config, sort_keys=False))
    how = f"weights {weights}" if weights is not None else f"t = {t}"
    card = model_card(recipe, f"{label} (mergekit {spec.method})",
                      f"Merged by `deliberate merge` from {', '.join(f'`{m}`' for m in spec.models)} with {how}.",
                      {"mergekit configuration": config}, base_model=inputs[-1] if config.get("base_model") else inputs[0],
                      tags=["merge", "mergekit", spec.method])
    run.finish(tmp, summary, card)
    return summary
