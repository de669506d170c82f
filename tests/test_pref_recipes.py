"""The SACPO / MODPO recipes: every one loads, and the CPU variants run end to end (stages, sweeps, merges)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deliberate.config import load_recipe
from deliberate.errors import DeliberateError
from deliberate.services.runs import stage_models
from deliberate.stages.dpo import run_dpo
from deliberate.stages.merge import run_merges

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["sacpo", "sacpo-kto-dpo", "sacpo-safety-first", "modpo"]


@pytest.mark.parametrize("name", RECIPES + [f"{r}-cpu" for r in RECIPES])
def test_recipe_loads(name):
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    stages = recipe.dpo.stage_list()
    assert recipe.name == name and len(stages) >= 2
    if name.endswith("-cpu"):
        assert recipe.model.name == "smollm2" and recipe.dpo.data.source.startswith("../shared/datasets/")
    else:
        assert recipe.model.name.startswith("PKU-Alignment/") and "/" in recipe.dpo.data.source


@pytest.mark.parametrize("name", [f"{r}-cpu" for r in RECIPES])
def test_cpu_recipe_runs_every_stage_and_merge(name, tiny_model_dir, tmp_path, shared_datasets, monkeypatch):
    """The CPU recipes as shipped, with the tiny model in place of SmolLM2 and one step per model."""
    monkeypatch.chdir(ROOT)  # the recipes' data paths are relative to the project root
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml",
                         [f"model.name={tiny_model_dir}", f"output_dir={tmp_path}", "dpo.max_steps=1",
                          "dpo.bf16=false", "dpo.per_device_train_batch_size=2"])
    summaries = run_dpo(recipe, show_progress=False)
    expected = sum(len(s.sweep()) for s in recipe.dpo.stage_list())  # no stage follows a swept one here
    assert len(summaries) == expected and all(s["steps"] == 1 for s in summaries)
    merged = run_merges(recipe, show_progress=False)
    assert len(merged) == sum(len(m.alphas) or 1 for m in recipe.merge.merges)
    for ref in recipe.eval.models:  # every model the evaluation names exists
        assert stage_models(recipe, ref)
    if name == "modpo-cpu":
        assert {s["margin"] for s in summaries if s["method"] == "modpo"} == {"implicit"}


def test_extends_merges_sections_and_reports_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\ndpo: {beta: 0.2, learning_rate: 1.0e-6}\neval: {models: [x, y]}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\ndpo: {beta: 0.3}\neval: {models: [z]}\n")
    r = load_recipe(tmp_path / "b.yaml")
    assert (r.name, r.dpo.beta, r.dpo.learning_rate, r.eval.models) == ("b", 0.3, 1e-6, ["z"])
    (tmp_path / "c.yaml").write_text("extends: d.yaml\n")
    (tmp_path / "d.yaml").write_text("extends: c.yaml\n")
    with pytest.raises(DeliberateError, match="extends it back"):
        load_recipe(tmp_path / "c.yaml")
    (tmp_path / "e.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(DeliberateError, match="does not exist"):
        load_recipe(tmp_path / "e.yaml")
    assert os.path.isfile(ROOT / "recipes" / "cpu-small.yaml")
