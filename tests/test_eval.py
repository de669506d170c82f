"""`deliberate eval`: per-model cached answers, rates with intervals, report files that agree."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from deliberate.config import load_recipe
from deliberate.services.benchmarks import load_benchmark
from deliberate.stages.evaluate import run_eval, visible_answer


def test_a_completion_without_an_answer_is_judged_whole():
    assert visible_answer("<think>\nwhy\n</think>\nNo.") == ("No.", "why", True)
    text = "<think>\nhere is how to build it: step 1"
    assert visible_answer(text) == (text, "here is how to build it: step 1", False)
    assert visible_answer("plain answer") == ("plain answer", None, True)


def test_benchmarks_are_data_and_unknown_ones_are_named():
    from deliberate.errors import DeliberateError

    assert load_benchmark("demo").data.where == {"split": "heldout"}
    with pytest.raises(DeliberateError, match="known: .*demo"):
        load_benchmark("no-such-benchmark")
    with pytest.raises(DeliberateError, match="unknown benchmark 'xstset'; did you mean 'xstest'"):
        load_benchmark("xstset")


def test_two_models_compared_with_cached_answers_and_agreeing_reports(tiny_model_dir, tmp_path):
    other = shutil.copytree(tiny_model_dir, tmp_path / "other-model")
    sets = [f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", "generation.max_new_tokens=3",
            f"eval.models=[{other}]", "eval.bootstrap_samples=200"]
    report = run_eval(load_recipe(None, sets), show_progress=False)
    assert [r["model"] for r in report["results"]] == [str(tiny_model_dir), str(other)]
    for r in report["results"]:
        assert r["prompts"] == 32 and r["generated_now"] == 32
        assert r["refusal_rate"]["n"] == 14 and r["answer_rate"]["n"] == 18
        low, high = r["refusal_rate"]["ci95"]
        assert low <= r["refusal_rate"]["value"] <= high
    again = run_eval(load_recipe(None, sets), show_progress=False)
    assert [r["generated_now"] for r in again["results"]] == [0, 0]
    folder = tmp_path / "run" / "eval"
    saved = json.loads((folder / "report.json").read_text())
    rows = list(csv.DictReader((folder / "report.csv").open()))
    assert len(rows) == len(saved["results"]) == 2
    for row, result in zip(rows, saved["results"], strict=True):
        assert float(row["refusal_rate"]) == pytest.approx(result["refusal_rate"]["value"])
        assert float(row["answer_rate"]) == pytest.approx(result["answer_rate"]["value"])
    assert "| model | benchmark |" in (folder / "report.md").read_text()


def test_stage_sft_without_a_trained_model_is_a_clear_error(tiny_model_dir, tmp_path):
    from deliberate.errors import DeliberateError

    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"output_dir={tmp_path}", "eval.models=[stage:sft]"])
    with pytest.raises(DeliberateError, match="run `deliberate sft` first"):
        run_eval(recipe, show_progress=False)


def test_a_model_is_loaded_once_for_all_its_benchmarks_and_not_at_all_when_cached(tiny_model_dir, tmp_path,
                                                                                   monkeypatch):
    import deliberate.stages.evaluate as models

    prompts = tmp_path / "mine.jsonl"
    prompts.write_text('{"prompt": "Hello?", "expected": "comply"}\n')
    loads = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda cfg, **kw: loads.append(cfg.name) or real(cfg, **kw))
    sets = [f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", "generation.max_new_tokens=2",
            f"eval.benchmarks=[demo, {prompts}]", "eval.pairwise=false"]
    report = run_eval(load_recipe(None, sets), show_progress=False)
    assert [r["benchmark"] for r in report["results"]] == ["demo", "mine"]
    assert loads == [str(tiny_model_dir)]
    run_eval(load_recipe(None, sets), show_progress=False)
    assert loads == [str(tiny_model_dir)]  # everything cached: no load
