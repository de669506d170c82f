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


def _answers_of(run) -> dict[str, str]:
    return {r["prompt"]: r["answer"] for r in read_jsonl(run.path)}


def test_a_prompt_inserted_at_the_top_of_an_id_less_file_is_answered_and_none_served_twice(recipe_for, tmp_path):
    prompts = ["Tell me about tea.", "How do clocks work?", "Why is the sky blue?"]
    data = tmp_path / "p.csv"
    data.write_text("prompt,expected\n" + "".join(f'"{p}",comply\n' for p in prompts))
    answer_prompts(recipe_for(f"data.source={data}"), show_progress=False)
    data.write_text("prompt,expected\n" + "".join(f'"{p}",comply\n' for p in ["Where do owls live?", *prompts]))
    after = answer_prompts(recipe_for(f"data.source={data}"), show_progress=False)
    rows = read_jsonl(after.path)
    assert [r["prompt"] for r in rows] == ["Where do owls live?", *prompts]
    fresh = answer_prompts(recipe_for(f"data.source={data}", f"output_dir={tmp_path / 'fresh'}"), show_progress=False)
    assert _answers_of(after) == _answers_of(fresh)  # every answer is its own prompt's


def test_an_edited_prompt_with_an_explicit_id_is_answered_again_and_only_it(recipe_for, tmp_path):
    from deliberate.services.io import write_jsonl

    data = tmp_path / "p.jsonl"
    rows = [{"id": i, "prompt": f"Say something about {w}.", "expected": "comply"} for i, w in
            [("a", "tea"), ("b", "rain"), ("c", "maps")]]
    write_jsonl(data, rows)
    answer_prompts(recipe_for(f"data.source={data}"), show_progress=False)
    rows[1]["prompt"] = "Say something about bread."
    write_jsonl(data, rows)
    edited = answer_prompts(recipe_for(f"data.source={data}"), show_progress=False)
    assert edited.generated == 1
    assert [r["prompt"] for r in read_jsonl(edited.path)] == [r["prompt"] for r in rows]
