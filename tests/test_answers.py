"""`answer_prompts`: one row per prompt, resumable, and no new generation for what is already answered."""

import pytest

from deliberate.config import load_recipe
from deliberate.services.answering import answer_prompts
from deliberate.services.io import read_jsonl


@pytest.fixture
def recipe_for(tiny_model_dir, tmp_path):
    def make(*sets):
        return load_recipe(None, [f"model.name={tiny_model_dir}", f"output_dir={tmp_path}",
                                  "generation.max_new_tokens=4", "generation.batch_size=3", *sets])
    return make


def test_every_prompt_gets_one_answer_row_with_its_labels(recipe_for):
    run = answer_prompts(recipe_for("data.where.split=heldout"), show_progress=False)
    rows = read_jsonl(run.path)
    assert len(rows) == run.generated == 32
    assert len({r["id"] for r in rows}) == 32
    assert all(r["expected"] and r["category"] and r["finish_reason"] in {"stop", "length"} for r in rows)
    assert (run.path.parent / "summary.json").is_file()


def test_a_rerun_generates_nothing_and_a_larger_run_only_the_new_prompts(recipe_for):
    first = answer_prompts(recipe_for("data.limit=5"), show_progress=False)
    again = answer_prompts(recipe_for("data.limit=5"), show_progress=False)
    more = answer_prompts(recipe_for("data.limit=8"), show_progress=False)
    assert (first.generated, again.generated, more.generated) == (5, 0, 3)
    assert [r["answer"] for r in more.rows[:5]] == [r["answer"] for r in first.rows]


def test_changed_generation_settings_are_not_served_from_old_answers(recipe_for):
    answer_prompts(recipe_for("data.limit=4"), show_progress=False)
    changed = answer_prompts(recipe_for("data.limit=4", "generation.max_new_tokens=2"), show_progress=False)
    assert changed.generated == 4
    assert all(r["num_tokens"] <= 2 for r in read_jsonl(changed.path))


def test_a_crash_mid_run_resumes_where_it_stopped(recipe_for, monkeypatch):
    import deliberate.services.answering as answers

    real = answers.generate

    def crash_after_first_batch(*args, on_batch=None, **kwargs):
        def once(idx, gens):
            on_batch(idx, gens)
            raise KeyboardInterrupt

        return real(*args, on_batch=once, **kwargs)

    monkeypatch.setattr(answers, "generate", crash_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        answer_prompts(recipe_for("data.limit=7"), show_progress=False)
    monkeypatch.setattr(answers, "generate", real)
    resumed = answer_prompts(recipe_for("data.limit=7"), show_progress=False)
    assert resumed.generated == 4  # the first batch of 3 was kept
    assert len({r["id"] for r in read_jsonl(resumed.path)}) == 7
