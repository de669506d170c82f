"""Deliberative SFT data: spec in the system prompt, strict parsing, min-of-k filtering, spec stripping, resume."""

from __future__ import annotations

import json
from collections import Counter

import pytest

import deliberate.stages.generate as generate_stage
from deliberate.config import load_recipe
from deliberate.services.generation import Generation
from deliberate.services.io import read_jsonl
from deliberate.services.reasoning import retrieval_correct
from deliberate.services.spec import load_spec
from deliberate.stages.filter import filter_completions
from deliberate.stages.generate import FEW_SHOT, generate_completions, last_sentences, parse_completion
from deliberate.stages.sft import sft_dataset

REFUSAL = "<think>\nCategory: violence. The policy disallows this. Style: refuse.\n</think>\nI'm sorry, but I can't help with that."
ANSWER = "<think>\nCategory: safe. Style: comply.\n</think>\nSure! Boil the pasta for ten minutes."


@pytest.fixture
def recipe_for(tiny_model_dir, tmp_path):
    def make(*sets):
        return load_recipe(None, [f"model.name={tiny_model_dir}", f"output_dir={tmp_path}", "data.where.split=train",
                                  "generate.max_new_tokens=6", "generate.batch_size=2", "generate.samples=2",
                                  *sets])
    return make


def scripted(texts_for):
    """A stand-in for the model's sampling only: the rest of generate_completions runs for real."""
    seen = []

    def fake(model, tokenizer, conversations, settings, *, on_batch=None, stats=None, **kwargs):
        seen.extend(conversations)
        gens = [Generation(texts_for(c), 10, "stop") for c in conversations]
        if on_batch:
            on_batch(list(range(len(gens))), gens)
        return gens
    return fake, seen


def test_the_system_prompt_carries_the_spec_of_the_prompts_category(recipe_for, monkeypatch):
    fake, seen = scripted(lambda c: "</think> ok")
    monkeypatch.setattr(generate_stage, "generate", fake)
    recipe = recipe_for("data.limit=6")
    run = generate_completions(recipe, show_progress=False)
    spec = load_spec()
    assert len(seen) == len(run.rows) == 12
    for conversation, row in zip(seen, run.rows, strict=True):
        system, *shots, user, prefill = conversation
        assert system["role"] == "system"
        assert system["content"].startswith(spec.spec_for(row["category"]))
        assert f"category: {row['category']}" in system["content"]
        assert user == {"role": "user", "content": row["prompt"]}
        assert prefill == {"role": "assistant", "content": "<think>\n"}
        assert len(shots) == 2 * len(FEW_SHOT)


def test_a_prefill_can_start_the_reasoning_with_the_prompts_category(recipe_for, monkeypatch):
    fake, seen = scripted(lambda c: " The policy says so.\n</think>\nAn answer.")
    monkeypatch.setattr(generate_stage, "generate", fake)
    recipe = recipe_for("data.limit=4", "generate.samples=1", 'generate.prefill="<think>\\nCategory: {category}."')
    run = generate_completions(recipe, show_progress=False)
    for conversation, row in zip(seen, run.rows, strict=True):
        start = f"<think>\nCategory: {row['category']}."
        assert conversation[-1] == {"role": "assistant", "content": start}
        assert row["completion"].startswith(start + " The policy says so.")
        assert row["reasoning"] == f"Category: {row['category']}. The policy says so."
        assert row["malformed"] is None
    assert run.summary["policy_retrieval"]["correct"] == run.summary["policy_retrieval"]["n"]


def test_k_can_depend_on_the_expected_behaviour_and_on_another_column(recipe_for, monkeypatch):
    fake, _ = scripted(lambda c: "</think> ok")
    monkeypatch.setattr(generate_stage, "generate", fake)
    recipe = recipe_for("generate.samples=2", "generate.samples_by_expected={refuse: 1}",
                        "generate.samples_by_meta={kind: {borderline: 3}}")
    rows = generate_completions(recipe, show_progress=False).rows
    per_prompt = Counter(r["id"] for r in rows)
    by_id = {r["id"]: r for r in rows}
    kinds = Counter(by_id[i]["meta"]["kind"] for i in per_prompt)
    assert kinds["borderline"] and kinds["safe"] and kinds["harmful"]  # the training prompts mix all three
    for prompt_id, k in per_prompt.items():
        row = by_id[prompt_id]
        want = 3 if row["meta"]["kind"] == "borderline" else 1 if row["expected"] == "refuse" else 2
        assert k == want, row


def test_parsing_is_strict():
    assert parse_completion(REFUSAL, "stop")["malformed"] is None
    assert parse_completion("<think>\nno end", "stop")["malformed"] == "no answer after the reasoning"
    assert parse_completion("<think>x</think>", "stop")["malformed"] == "no answer after the reasoning"
    assert parse_completion("just an answer", "stop")["malformed"] == "no reasoning block"
    assert parse_completion(REFUSAL, "length")["malformed"] == "cut off at max_new_tokens"


def test_malformed_completions_are_dropped_and_the_sft_data_has_no_system_prompt(recipe_for, monkeypatch):
    def texts(conversation):
        harmful = "category: safe" not in conversation[0]["content"]
        return (REFUSAL if harmful else ANSWER)[len("<think>\n"):]

    fake, _ = scripted(texts)
    monkeypatch.setattr(generate_stage, "generate", fake)
    recipe = recipe_for("data.limit=10", "filter.keep_per_prompt=0")
    generate_completions(recipe, show_progress=False)
    # Break one completion by hand: a reasoning block that never closes.
    path = recipe.output_dir / "generate" / "completions.jsonl"
    rows = read_jsonl(path)
    rows[0].update(completion="<think>\nstill thinking", **parse_completion("<think>\nstill thinking", "stop"))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = filter_completions(recipe, show_progress=False)
    judged = read_jsonl(recipe.output_dir / "filter" / "judged.jsonl")
    assert judged[0]["dropped"].startswith("malformed")
    assert run.summary["malformed"] == 1
    assert len(run.rows) == run.summary["kept"] > 0
    assert all(r["key"] != rows[0]["key"] for r in run.rows)
    data = read_jsonl(sft_dataset(recipe))
    assert len(data) == len(run.rows)
    for example in data:
        assert [m["role"] for m in example["prompt"]] == ["user"]
        assert [m["role"] for m in example["completion"]] == ["assistant"]
        target = example["completion"][0]["content"]
        assert target.startswith("<think>\n") and "</think>\n" in target
    answers_only = read_jsonl(sft_dataset(load_recipe(None, [*_sets(recipe), "sft.keep_reasoning=false"])))
    assert all("<think>" not in e["completion"][0]["content"] for e in answers_only)


def _sets(recipe):
    return [f"model.name={recipe.model.name}", f"output_dir={recipe.output_dir}", "data.where.split=train"]


def test_the_min_of_k_filter_drops_a_completion_with_one_low_score(recipe_for, monkeypatch, tmp_path):
    from tests.fake_openai import FakeOpenAI, Reply, judged_text

    calls: dict[str, int] = {}

    def judge(request, n):
        text = judged_text(request)
        calls[text] = calls.get(text, 0) + 1
        low = "UNLUCKY" in text and calls[text] == 2  # the second of two judgments is low
        return Reply(json.dumps({"verdict": "refuse", "score": 2 if low else 9, "rationale": "t"}))

    fake, _ = scripted(lambda c: REFUSAL[len("<think>\n"):] + (" UNLUCKY" if len(c[-2]["content"]) % 2
                                                                  else ""))
    monkeypatch.setattr(generate_stage, "generate", fake)
    with FakeOpenAI(judge) as server:
        recipe = recipe_for("data.limit=30", "generate.samples=1", "judge.backend=openai", "judge.model=t",
                            f"judge.base_url={server.base_url}", "judge.repeats=2", "judge.cache=none", "judge.deterministic=false",
                            "judge.max_retries=0")
        generate_completions(recipe, show_progress=False)
        run = filter_completions(recipe, show_progress=False)
    judged = read_jsonl(recipe.output_dir / "filter" / "judged.jsonl")
    unlucky = [r for r in judged if "UNLUCKY" in r["completion"]]
    assert unlucky and all(r["score"] == 2 and r["dropped"].startswith("score 2") for r in unlucky)
    assert all(r["score"] == 9 and r["dropped"] is None for r in judged if "UNLUCKY" not in r["completion"])
    assert run.summary["kept"] == len(judged) - len(unlucky)


def test_an_interrupted_generation_resumes_without_duplicates_or_gaps(recipe_for, monkeypatch):
    real = generate_stage.generate
    calls = {"n": 0}

    def crash_on_second_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_stage, "generate", crash_on_second_chunk)
    recipe = recipe_for("data.limit=5")  # 10 completions, saved in chunks of 8 (batch_size 2 x 4)
    with pytest.raises(KeyboardInterrupt):
        generate_completions(recipe, show_progress=False)
    monkeypatch.setattr(generate_stage, "generate", real)
    resumed = generate_completions(recipe, show_progress=False)
    assert resumed.summary["generated_now"] == 2
    keys = [(r["id"], r["sample"]) for r in read_jsonl(resumed.path)]
    assert len(keys) == len(set(keys)) == 10
    assert generate_completions(recipe, show_progress=False).summary["generated_now"] == 0


def test_a_resumed_sampling_run_draws_what_the_uninterrupted_one_drew(recipe_for, monkeypatch, tmp_path):
    """Each row samples with a seed from its own key, so the rows made after a crash are those an
    uninterrupted run makes (budget forcing on, so both phases are covered)."""
    sets = ("data.limit=5", "generate.temperature=1.0", "generate.top_p=0.9", "generate.reasoning_budget=3",
            "generate.repetition_penalty=1.2")
    whole = generate_completions(recipe_for(*sets, f"output_dir={tmp_path / 'whole'}"), show_progress=False)
    real = generate_stage.generate
    calls = {"n": 0}

    def crash_in_the_second_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # chunk one's reasoning and answers are saved; chunk two dies
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    recipe = recipe_for(*sets, f"output_dir={tmp_path / 'resumed'}")
    monkeypatch.setattr(generate_stage, "generate", crash_in_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        generate_completions(recipe, show_progress=False)
    monkeypatch.setattr(generate_stage, "generate", real)
    resumed = generate_completions(recipe, show_progress=False)
    assert 0 < resumed.summary["generated_now"] < len(whole.rows)
    by_key = {r["key"]: r["completion"] for r in whole.rows}
    assert {r["key"]: r["completion"] for r in resumed.rows} == by_key
    assert len(set(by_key.values())) > 1  # sampled, not all alike


def test_budget_forcing_closes_the_reasoning_and_then_answers(recipe_for):
    recipe = recipe_for("data.limit=2", "generate.samples=1", "generate.reasoning_budget=3")
    run = generate_completions(recipe, show_progress=False)
    for row in run.rows:
        assert row["completion"].startswith("<think>\n") and "\n</think>\n" in row["completion"]
        assert row["num_tokens"] <= 6 and row["reasoning"] is not None
    assert 0 <= run.summary["reasoning_closed_by_budget"] <= len(run.rows) == 2


def test_reasoning_closed_by_the_budget_is_cut_back_to_its_last_sentence(recipe_for, monkeypatch):
    def texts(conversation):
        if "</think>" in conversation[-1]["content"]:  # the answer, after the closed block
            return "Boil it for ten minutes."
        return "Category: safe. The rule says \"answer fully.\" Style: com"

    fake, seen = scripted(texts)
    monkeypatch.setattr(generate_stage, "generate", fake)
    run = generate_completions(recipe_for("data.limit=1", "generate.samples=1", "generate.reasoning_budget=3"),
                               show_progress=False)
    (row,) = run.rows
    assert row["reasoning"] == 'Category: safe. The rule says "answer fully."'
    assert seen[-1][-1]["content"] == '<think>\nCategory: safe. The rule says "answer fully."\n</think>\n'
    assert row["answer"] == "Boil it for ten minutes." and row["malformed"] is None
    assert run.summary["reasoning_closed_by_budget"] == 1
    assert last_sentences("no sentence ends here") == "no sentence ends here"
    assert last_sentences(" The user wants", head="<think>\nCategory: violence.") == ""
    assert last_sentences(" It is. The user", head="<think>\nCategory: violence.") == " It is."


def test_policy_retrieval_counts_reasonings_that_cite_the_category():
    spec = load_spec()
    assert retrieval_correct(spec, "This is Illicit behaviour: fraud.", "illicit_behavior") is True
    assert retrieval_correct(spec, "Category: violence.", "illicit_behavior") is False
    assert retrieval_correct(spec, "anything", "safe") is None
    assert retrieval_correct(spec, None, "violence") is None


def test_prompts_without_a_category_get_the_one_the_judge_assigns(tiny_model_dir, tmp_path, monkeypatch):
    from tests.fake_openai import FakeOpenAI, Reply

    def judge(request, n):
        text = request["messages"][-1]["content"]
        assert '"enum"' in json.dumps(request["response_format"])  # the ids are a schema enum
        return Reply(json.dumps({"category": "violence" if "hurt" in text else "safe", "rationale": "t"}))

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "How do I hurt someone?"}\n{"prompt": "What is the capital of France?"}\n')
    fake, seen = scripted(lambda c: "</think> ok")
    monkeypatch.setattr(generate_stage, "generate", fake)
    with FakeOpenAI(judge) as server:
        recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'run'}",
                                    f"data.source={prompts}", "generate.samples=1", "judge.backend=openai",
                                    "judge.model=t", f"judge.base_url={server.base_url}", "judge.cache=none"])
        run = generate_completions(recipe, show_progress=False)
    assert [r["category"] for r in run.rows] == ["violence", "safe"]
    assert all(r["meta"]["category_by"] == "judge" for r in run.rows)
    hurt = next(c for c in seen if "hurt" in c[-2]["content"])
    assert hurt[0]["content"].startswith(load_spec().spec_for("violence"))


def test_the_rules_judge_cannot_assign_categories(tiny_model_dir, tmp_path):
    from deliberate.errors import DeliberateError

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "How do I hurt someone?"}\n')
    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"output_dir={tmp_path}", f"data.source={prompts}"])
    with pytest.raises(DeliberateError, match="cannot assign categories"):
        generate_completions(recipe, show_progress=False)


def test_completions_are_reused_only_for_the_dtype_the_teacher_ran_in(recipe_for, monkeypatch):
    fake, seen = scripted(lambda c: "</think> ok")
    monkeypatch.setattr(generate_stage, "generate", fake)
    first = generate_completions(recipe_for("data.limit=2"), show_progress=False)
    assert first.summary["generated_now"] == 4
    again = generate_completions(recipe_for("data.limit=2"), show_progress=False)
    assert again.summary["generated_now"] == 0  # nothing changed: every completion is reused
    other = generate_completions(recipe_for("data.limit=2", "model.dtype=bfloat16"), show_progress=False)
    assert other.summary["generated_now"] == 4  # the teacher now samples in bfloat16: new completions
    assert other.summary["settings"]["dtype"] == "bfloat16"


def test_the_spec_scaffold_opens_the_reasoning_with_the_category_the_quoted_rule_and_the_style():
    from deliberate.services.data import PromptRecord
    from deliberate.stages.generate import prefill_for

    spec = load_spec()
    scaffold = '<think>\nCategory: {category}. The policy says: "{rule}". Style: {style}.'
    poison = PromptRecord("1", "How do I poison my neighbour's dog?", "violence", "refuse")
    text = prefill_for(scaffold, poison, spec)
    rule = next(r for r in spec.category("violence").disallowed if "poison" in r)
    assert text == f'<think>\nCategory: violence. The policy says: "{rule.rstrip(".")}". Style: refuse.'
    kill = PromptRecord("2", "How do I kill a Python process?", "violence", "comply")  # alarming but allowed
    assert prefill_for(scaffold, kill, spec).endswith("Style: comply.")
    assert any(f'"{r.rstrip(".")}"' in prefill_for(scaffold, kill, spec) for r in spec.category("violence").allowed)
    crisis = PromptRecord("3", "I want to end it all", "self_harm", "refuse")
    assert prefill_for(scaffold, crisis, spec).endswith("Style: safe_complete.")  # the category's own style
    assert "Style: comply." in prefill_for(scaffold, PromptRecord("4", "Bake bread?", "safe", "comply"), spec)


def test_the_stated_style_is_checked_against_what_the_answer_did():
    from deliberate.services.reasoning import stated_style, style_followed

    assert stated_style("Category: violence. Style: refuse.") == "refuse"
    assert stated_style("style: Safe complete, then style: comply") == "comply"  # the last one said
    assert stated_style("Category: safe.") is None
    assert style_followed("Style: refuse.", "refuse") and style_followed("Style: comply.", "comply")
    assert style_followed("Style: safe_complete.", "refuse")  # both decline the harmful part
    assert style_followed("Style: refuse.", "comply") is False and style_followed("Style: comply.", "refuse") is False
    assert style_followed("Style: comply.", "unsafe")  # it said comply, and complied (harmfully: the rates say so)
    assert style_followed(None, "refuse") is None and style_followed("Style: refuse.", None) is None


def test_sft_can_train_on_another_runs_kept_completions(recipe_for, tmp_path):
    from deliberate.services.io import write_jsonl

    kept = write_jsonl(tmp_path / "other" / "kept.jsonl", [
        {"id": "a", "prompt": "Q?", "reasoning": "Category: safe. Style: comply.", "answer": "A.", "category": "safe"}])
    recipe = recipe_for(f"sft.kept={kept}", "sft.keep_reasoning=true")
    rows = read_jsonl(sft_dataset(recipe))
    assert rows[0]["completion"][0]["content"].startswith("<think>") and rows[0]["completion"][0]["content"].endswith("A.")
    with pytest.raises(Exception, match="sft.kept: .* does not exist"):
        sft_dataset(recipe_for(f"sft.kept={tmp_path / 'missing.jsonl'}"))


def test_the_answer_can_be_generated_from_the_prompt_and_the_reasoning_alone(recipe_for, monkeypatch):
    fake, seen = scripted(lambda c: "Done." if "</think>" in c[-1]["content"] else "Fine.")
    monkeypatch.setattr(generate_stage, "generate", fake)
    recipe = recipe_for("data.sample=12", "generate.samples=1", "generate.reasoning_budget=3",
                        "generate.answer_sees_spec=[refuse, safe_complete]",
                        'generate.prefill="<think>\\nStyle: {style}."')
    run = generate_completions(recipe, show_progress=False)
    answers = [c for c in seen if "</think>" in c[-1]["content"]]
    assert len(answers) == len(run.rows) == 12
    styles = {c[-1]["content"].split("Style: ")[1].split(".")[0] for c in answers}
    assert "comply" in styles and styles & {"refuse", "safe_complete"}
    for c in answers:
        if "Style: comply." in c[-1]["content"]:  # no spec, no worked examples: the user's prompt and the reasoning
            assert [m["role"] for m in c] == ["user", "assistant"]
        else:
            assert c[0]["role"] == "system" and len(c) == 2 + 2 * len(FEW_SHOT) + 1
    with pytest.raises(Exception, match="needs backend hf and a reasoning_budget"):
        recipe_for("generate.answer_sees_spec=false")


def test_a_reasoning_model_that_gives_no_reasoning_for_a_prompt_with_a_policy_retrieved_nothing():
    from deliberate.services.reasoning import retrieved

    cited = {"cites_category": True, "policy": "violence", "reasoning": "Category: violence."}
    silent = {"cites_category": None, "policy": "violence", "reasoning": None}
    assert retrieved(cited, reasons=True) is True and retrieved(cited, reasons=False) is True
    assert retrieved(silent, reasons=True) is False  # it reasons elsewhere, so not reasoning here is a miss
    assert retrieved(silent, reasons=False) is None  # a model that never reasons has no retrieval to score
    assert retrieved({**silent, "policy": None}, reasons=True) is None  # a safe prompt: no policy to retrieve
