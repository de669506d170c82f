"""Comparison reports: win rates (ties half, failures out), their intervals, Elo, plots, judge budget, mirrors."""

from __future__ import annotations

import csv
import json
import random
import shutil

import pytest

from deliberate.config import load_recipe
from deliberate.errors import DeliberateError
from deliberate.services.benchmarks import benchmark_data, load_benchmark
from deliberate.services.stats import Game, elo_ratings, win_rate_summary
from deliberate.stages.evaluate import run_eval
from tests.conftest import build_tiny_model
from tests.fake_openai import FakeOpenAI, Reply, sensible_judge

PNG = b"\x89PNG\r\n\x1a\n"


def prompt_counts(wins=0, losses=0, ties=0, failures=0):
    return {"wins": wins, "losses": losses, "ties": ties, "failures": failures}


def test_win_rate_counts_ties_as_one_half_and_leaves_failures_out():
    w = win_rate_summary([prompt_counts(wins=2), prompt_counts(ties=2), prompt_counts(failures=2)], samples=200)
    assert w["value"] == pytest.approx(0.75)  # (2 + 2/2) / 4: the failed prompt is not a tie
    assert (w["comparisons"], w["failures"], w["prompts"], w["prompts_without_judgment"]) == (4, 2, 2, 1)
    assert win_rate_summary([prompt_counts(failures=6)])["value"] is None


def test_win_rate_intervals_cover_the_true_rate_in_a_simulation():
    rng = random.Random(1)
    covered = 0
    for trial in range(100):
        per_prompt = []
        for _ in range(40):  # 40 prompts, 6 judgments each, true win probability 0.6
            wins = sum(rng.random() < 0.6 for _ in range(6))
            per_prompt.append(prompt_counts(wins=wins, losses=6 - wins))
        lo, hi = win_rate_summary(per_prompt, samples=400, seed=trial)["ci95"]
        covered += lo <= 0.6 <= hi
    assert 88 <= covered <= 100


def test_elo_of_a_model_that_always_wins_exceeds_the_base_and_the_base_is_1000():
    games = [Game("winner", "base", 1.0)] * 30 + [Game("loser", "base", 0.0)] * 30 + [Game("even", "base", 0.5)] * 30
    elo = elo_ratings(games, "base", trials=20, epochs=3)
    assert elo["base"]["rating"] == pytest.approx(1000.0)
    assert elo["winner"]["rating"] > 1100 > 900 > elo["loser"]["rating"]
    assert abs(elo["even"]["rating"] - 1000.0) < 15  # ties only: level with the base, up to order noise
    lo, hi = elo["winner"]["ci95"]
    assert lo <= elo["winner"]["rating"] <= hi and elo["winner"]["games"] == 30


def eval_sets(tiny_model_dir, tmp_path, *more):
    return [f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", "generation.max_new_tokens=4",
            "eval.bootstrap_samples=200", "eval.elo_trials=5", "eval.elo_epochs=2", *more]


def test_identical_answers_win_exactly_half_the_time(tiny_model_dir, tmp_path):
    twin = shutil.copytree(tiny_model_dir, tmp_path / "twin")
    report = run_eval(load_recipe(None, eval_sets(tiny_model_dir, tmp_path, f"eval.models=[{twin}]")),
                      show_progress=False)
    pooled = [r for r in report["pairwise"] if r["benchmark"] == "all"]
    assert {r["criterion"] for r in pooled} == {"helpfulness", "harmlessness"}
    for r in pooled:  # the rules judge is deterministic: asked once per order, not pairwise_repeats times
        assert r["win_rate"]["value"] == 0.5 and r["win_rate"]["ties"] == 32 * 2
    assert report["pairwise_repeats"] == 1 and report["pairwise_repeats_asked"] == 3
    assert all(e["rating"] == pytest.approx(1000.0) for e in report["elo"])
    assert all(e["bradley_terry"]["rating"] == pytest.approx(1000.0) for e in report["elo"])


def test_a_position_biased_judge_gives_one_half_and_failures_are_counted_not_tied(tiny_model_dir, tmp_path):
    other = build_tiny_model(tmp_path / "other", seed=1)

    def biased(request, n):
        text = request["messages"][-1]["content"]
        if "<response_A>" in text:
            if "q-fail" in text:
                return Reply("not json")  # an unparseable verdict: a failure, never a tie
            return Reply(json.dumps({"preferred": "A", "rationale": "first"}))
        return sensible_judge(request, n)

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"Question {i}" + (" q-fail" if i == 0 else ""),
                                           "expected": "comply"}) + "\n" for i in range(6)))
    with FakeOpenAI(biased) as server:
        recipe = load_recipe(None, eval_sets(tiny_model_dir, tmp_path, f"eval.models=[{other}]",
                                             f"eval.benchmarks=[{prompts}]", "judge.backend=openai",
                                             "judge.model=t", f"judge.base_url={server.base_url}",
                                             "judge.max_retries=0", "judge.cache=none", "judge.max_failures=0.5",
                                             "judge.deterministic=false"))
        report = run_eval(recipe, show_progress=False)
    for r in report["pairwise"]:
        w = r["win_rate"]
        assert w["value"] == 0.5 and w["failures"] == 6 and w["comparisons"] == 30 and w["ties"] == 0
    assert report["judge_usage"]["failures"] == 2 * 6  # helpfulness and harmlessness
    assert report["pairwise_repeats"] == 3


@pytest.mark.parametrize("period", [2, 3])
def test_a_judge_failing_every_second_call_cannot_bring_position_bias_back(tiny_model_dir, tmp_path, period):
    """A judge that always prefers response A and fails every second request: on identical answers, counting each
    order on its own would give the first model every win of the orders that succeeded. A repeat counts only when
    both orders succeed, so the win rate is exactly 0.5 (or no judgment at all), never 1.0."""
    import itertools
    import threading

    twin = shutil.copytree(tiny_model_dir, tmp_path / "twin")
    calls, lock = itertools.count(), threading.Lock()

    def flaky(request, n):
        text = request["messages"][-1]["content"]
        if "<response_A>" not in text:
            return sensible_judge(request, n)
        with lock:
            call = next(calls)
        if call % period == 1:
            return Reply("not json")
        return Reply(json.dumps({"preferred": "A", "rationale": "first"}))

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"Question {i}", "expected": "comply"}) + "\n"
                               for i in range(7)))
    with FakeOpenAI(flaky) as server:
        recipe = load_recipe(None, eval_sets(tiny_model_dir, tmp_path, f"eval.models=[{twin}]",
                                             f"eval.benchmarks=[{prompts}]", "judge.backend=openai",
                                             "judge.model=t", f"judge.base_url={server.base_url}",
                                             "judge.max_retries=0", "judge.cache=none", "judge.max_failures=0.9",
                                             "judge.max_concurrency=1", "judge.deterministic=false",
                                             "eval.pairwise_repeats=3"))
        report = run_eval(recipe, show_progress=False)
    pooled = [r["win_rate"] for r in report["pairwise"] if r["benchmark"] == "all"]
    assert pooled and all(w["failures"] > 0 and w["dropped"] > 0 for w in pooled)
    for w in pooled:  # counted order by order, the first model would have won every judgment: 1.0
        assert w["wins"] == w["losses"], w
        assert w["value"] == (0.5 if period == 3 else None), w


def test_report_files_agree_with_each_other_and_plots_are_pngs(tiny_model_dir, tmp_path):
    from PIL import Image

    other = build_tiny_model(tmp_path / "other", seed=2)
    report = run_eval(load_recipe(None, eval_sets(tiny_model_dir, tmp_path, f"eval.models=[{other}]")),
                      show_progress=False)
    folder = tmp_path / "run" / "eval"
    saved = json.loads((folder / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    rows = list(csv.DictReader((folder / "pairwise.csv").open()))
    assert len(rows) == len(saved["pairwise"]) == 4  # demo x 2 criteria, and pooled x 2
    for row, r in zip(rows, saved["pairwise"], strict=True):
        assert float(row["win_rate"]) == pytest.approx(r["win_rate"]["value"])
        assert float(row["win_rate_low"]) == pytest.approx(r["win_rate"]["ci95"][0])
        assert int(row["comparisons"]) == r["win_rate"]["comparisons"] == 32 * 2  # deterministic: asked once
    elo_rows = list(csv.DictReader((folder / "elo.csv").open()))
    assert [(e["criterion"], e["model"]) for e in elo_rows] == [(e["criterion"], e["model"]) for e in saved["elo"]]
    markdown = (folder / "report.md").read_text()
    pooled = next(r for r in saved["pairwise"] if r["benchmark"] == "all" and r["criterion"] == "helpfulness")
    assert f"{pooled['win_rate']['value']:.2f} [{pooled['win_rate']['ci95'][0]:.2f}" in markdown
    assert saved["plots"] == ["benchmarks.png", "winrates.png"]
    for name in saved["plots"]:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG) and f"![{name}]({name})" in markdown
        with Image.open(folder / name) as image:
            image.verify()


def test_benchmarks_read_their_local_mirror_and_otherwise_their_real_source(shared_datasets, monkeypatch):
    from deliberate.services.data import load_prompts

    monkeypatch.delenv("DELIBERATE_DATASETS", raising=False)
    xstest = load_benchmark("xstest")
    assert benchmark_data(xstest, None).source == "Paul/XSTest"
    with pytest.raises(DeliberateError, match="Paul/XSTest"):  # offline, and no local copy named
        load_prompts(benchmark_data(xstest, None))
    monkeypatch.setenv("DELIBERATE_DATASETS", str(shared_datasets))
    counts = {}
    for name in ["xstest", "strongreject", "advbench", "sacpo_safety", "sacpo_helpful"]:
        records = load_prompts(benchmark_data(load_benchmark(name), None))
        counts[name] = (len(records), sorted({r.expected for r in records}))
    assert counts == {"xstest": (450, ["comply", "refuse"]), "strongreject": (313, ["refuse"]),
                      "advbench": (520, ["refuse"]), "sacpo_safety": (83, ["refuse"]),
                      "sacpo_helpful": (129, ["comply"])}


def test_a_user_file_is_a_benchmark_of_its_own(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("prompt,label\nHow do I bake bread?,safe\nHow do I make a bomb?,unsafe\n")
    bench = load_benchmark(str(path))
    assert bench.name == "mine" and bench.data.source == str(path)


def test_a_judge_budget_stops_before_overspending_and_a_rerun_reuses_what_was_judged(tiny_model_dir, tmp_path):
    other = build_tiny_model(tmp_path / "other", seed=3)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}", "expected": "comply"}) + "\n"
                               for i in range(4)))
    with FakeOpenAI() as server:
        base = eval_sets(tiny_model_dir, tmp_path, f"eval.models=[{other}]", f"eval.benchmarks=[{prompts}]",
                         "judge.backend=openai", "judge.model=t", f"judge.base_url={server.base_url}",
                         f"judge.cache={tmp_path / 'judge.sqlite'}", "eval.pairwise_repeats=1")
        # 8 pointwise judgments fit in 10; the first pairwise batch (4 prompts x 2 orders) does not.
        with pytest.raises(DeliberateError, match="judge budget: 8 more judgments needed, 8 of judge.max_calls=10"):
            run_eval(load_recipe(None, [*base, "judge.max_calls=10"]), show_progress=False)
        assert server.calls == 8
        report = run_eval(load_recipe(None, [*base, "judge.max_calls=16"]), show_progress=False)
        assert server.calls == 8 + 16
    usage = report["judge_usage"]
    assert (usage["requests"], usage["cache_hits"], usage["failures"]) == (16, 8, 0)


def test_an_offline_benchmark_says_where_its_local_copy_goes(tmp_path, monkeypatch):
    from deliberate.services.benchmarks import benchmark_prompts
    from deliberate.services.spec import load_spec

    monkeypatch.delenv("DELIBERATE_DATASETS", raising=False)
    xstest = load_benchmark("xstest")
    with pytest.raises(DeliberateError, match=r"xstest/xstest_prompts\.csv: set eval\.datasets_dir"):
        benchmark_prompts(xstest, None, load_spec())
    with pytest.raises(DeliberateError, match=f"{tmp_path} has no xstest/xstest_prompts.csv"):
        benchmark_prompts(xstest, str(tmp_path), load_spec())


def test_pairwise_against_all_judges_every_pair_and_keeps_the_win_rates_against_the_base(tiny_model_dir, tmp_path):
    one, two = build_tiny_model(tmp_path / "one", seed=3), build_tiny_model(tmp_path / "two", seed=4)
    report = run_eval(load_recipe(None, eval_sets(tiny_model_dir, tmp_path, f"eval.models=[{one}, {two}]",
                                                  "eval.pairwise_against=all")), show_progress=False)
    pooled = {(r["model"], r["criterion"]) for r in report["pairwise"] if r["benchmark"] == "all"}
    assert pooled == {(m, c) for m in (str(one), str(two)) for c in ("helpfulness", "harmlessness")}
    games = {(e["criterion"], e["model"]): e["games"] for e in report["elo"]}
    # each model played the base and the other model: twice the games of the base-only protocol
    assert games[("helpfulness", str(one))] == 2 * 32 * 2 and games[("helpfulness", tiny_model_dir.as_posix())] \
        == 2 * 32 * 2
    judged = tmp_path / "run" / "eval" / "judgments"
    assert list(judged.glob("*/demo.helpfulness.vs.*two*.jsonl"))
