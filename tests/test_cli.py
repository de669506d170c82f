"""The command line: the five verbs, one-line errors with exit code 2, and the working verbs end to end."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    import os

    # A wide terminal, so that rich does not wrap table titles that hold long paths.
    return subprocess.run([sys.executable, "-m", "deliberate", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, "COLUMNS": "250"})


def test_help_lists_the_five_stage_verbs():
    out = run("--help")
    assert out.returncode == 0
    for verb in ("sft", "rl", "dpo", "merge", "eval"):
        assert f" {verb} " in out.stdout


@pytest.mark.parametrize("verb", ["sft", "rl", "dpo", "merge", "eval"])
def test_each_stage_verb_has_help_with_an_example(verb):
    out = run(verb, "--help")
    assert out.returncode == 0 and "Example" in out.stdout and "--recipe" in out.stdout


def test_a_bad_recipe_prints_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  learning_rate: fast\n")
    out = run("sft", "--recipe", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.yaml" in lines[0] and "sft.learning_rate" in lines[0]


def test_malformed_yaml_and_unknown_model_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: [\n")
    for args in (["answer", "--recipe", str(bad)], ["answer", "--model", str(tmp_path / "nope")]):
        out = run(*args)
        assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("error:") == 1


def test_rl_on_prompts_the_judge_cannot_score_is_a_one_line_error(tmp_path):
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"prompt": "hello"}\n')
    out = run("rl", "--algo", "ppo", "--set", f"data.source={bare}", "--set", f"output_dir={tmp_path / 'out'}")
    assert out.returncode == 2 and "neither a category nor an expected behaviour" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    bad = run("rl", "--algo", "dqn")
    assert bad.returncode == 2 and "rl.algo" in bad.stderr


def test_spec_render_prints_the_category_policy():
    out = run("spec", "render", "--category", "self-harm")
    assert out.returncode == 0
    assert "Policy for this request's category: self_harm" in out.stdout
    assert "Policy for this request's category: violence" not in out.stdout


def test_spec_validate_accepts_the_default_and_rejects_a_broken_spec(tmp_path):
    assert run("spec", "validate").returncode == 0
    broken = tmp_path / "s.yaml"
    broken.write_text("name: x\n")
    out = run("spec", "validate", str(broken))
    assert out.returncode == 2 and "overview" in out.stderr


def test_answer_writes_answers_and_prints_a_table(tiny_model_dir, tmp_path):
    out = run("answer", "--model", str(tiny_model_dir), "--output", str(tmp_path), "--set", "data.limit=6",
              "--set", "generation.max_new_tokens=3")
    assert out.returncode == 0, out.stderr
    assert "6 answers (6 generated now)" in " ".join(out.stdout.split())
    assert (tmp_path / "answers" / "answers.jsonl").is_file()


def test_data_shows_how_columns_were_read(shared_datasets):
    out = run("data", "--set", f"data.source={shared_datasets / 'xstest' / 'xstest_prompts.csv'}",
              "--set", "data.columns.category=type")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # rich wraps a table title to the table's width
    assert "450 prompts" in text and "homonyms" in text


def test_recipe_show_prints_the_resolved_recipe():
    out = run("recipe", "show", "--set", "sft.learning_rate=1e-4")
    assert out.returncode == 0 and "learning_rate: 0.0001" in out.stdout


def test_judge_cli_scores_a_file_and_never_writes_the_api_key(tmp_path):
    import json
    import os

    sys.path.insert(0, os.path.dirname(__file__))
    from fake_openai import FakeOpenAI

    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": str(i), "prompt": f"q{i}", "answer": a, "category": "safe"}) + "\n"
                               for i, a in enumerate(["Sure, here it is.", "I'm sorry, I can't."])))
    secret = "sk-test-5ecret-never-written"
    cache = tmp_path / "cache.sqlite"
    with FakeOpenAI() as server:
        out = subprocess.run(
            [sys.executable, "-m", "deliberate", "judge", str(answers), "--output", str(tmp_path / "run"),
             "--set", "judge.backend=openai", "--set", "judge.model=judge-test", "--set", f"judge.base_url={server.base_url}",
             "--set", "judge.api_key_env=DELIBERATE_TEST_KEY", "--set", f"judge.cache={cache}"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "DELIBERATE_TEST_KEY": secret})
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "run" / "judge" / "summary.json").read_text())
    assert (summary["judged"], summary["failed"], summary["verdicts"]) == (2, 0, {"comply": 1, "refuse": 1})
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert cache in written
    for path in written:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in out.stdout + out.stderr


def test_filter_before_generate_is_a_one_line_error(tmp_path):
    out = run("filter", "--set", f"output_dir={tmp_path}")
    assert out.returncode == 2 and "run `deliberate generate` first" in out.stderr
    assert "Traceback" not in out.stderr


def test_pipeline_on_a_tiny_model_runs_its_stages_and_stops_cleanly_when_nothing_passes(tiny_model_dir, tmp_path):
    # A random tiny model never writes a well-formed completion: generation and filtering run for real, then
    # the SFT stage refuses to train on nothing, in one line, and the earlier outputs stay.
    out = run("pipeline", "--set", f"model.name={tiny_model_dir}", "--set", f"output_dir={tmp_path}",
              "--set", "data.limit=3", "--set", "generate.samples=2", "--set", "generate.max_new_tokens=8")
    assert out.returncode == 2, out.stderr
    assert "has no completions" in out.stderr and "Traceback" not in out.stderr
    assert "generate" in out.stdout and "kept 0/6" in out.stdout
    assert (tmp_path / "generate" / "completions.jsonl").is_file()
    assert (tmp_path / "filter" / "judged.jsonl").is_file()


def test_preference_verbs_fail_in_one_line_and_run_end_to_end(tmp_path, tiny_model_dir):
    out = run("dpo", "--set", f"output_dir={tmp_path}", "--set", f"model.name={tiny_model_dir}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if line.strip()] == [
        f"error: dpo: {tmp_path}/pairs/pairs.jsonl does not exist; run `deliberate pairs` first"]
    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": "Q", "chosen": "good answer", "rejected": "bad"}\n' * 4)
    sets = ["--set", f"output_dir={tmp_path}", "--set", f"model.name={tiny_model_dir}", "--set",
            f"dpo.data.source={data}", "--set", "dpo.max_steps=1", "--set", "dpo.lora=false"]
    out = run("dpo", "--method", "kto", *sets, "--set", "dpo.logging_steps=1")
    assert out.returncode == 0, out.stderr
    assert "stage:kto" in out.stdout and f"{tmp_path}/dpo" in out.stdout
    # One transient rich bar for training (gone when it ends), no tqdm bars, no printed log dicts, no library
    # deprecation notices: nothing is left on stderr.
    assert not out.stderr.strip(), out.stderr
    for noise in ("{'loss'", "it/s]", "examples/s]", "Warning"):
        assert noise not in out.stdout + out.stderr, noise
    merges = "merge.merges=[{name: half, models: [stage:kto, " + str(tiny_model_dir) + "], alphas: [0.5]}]"
    out = run("merge", *sets, "--set", merges)
    assert out.returncode == 0, out.stderr
    assert "merge:half/a0.5" in out.stdout and (tmp_path / "merge" / "half" / "a0.5" / "model" / "config.json").is_file()
    out = run("merge", *sets, "--set", "merge.merges=[{name: bad, method: ties, models: [stage:kto, stage:kto]}]")
    assert out.returncode == 2 and "needs base_model" in out.stderr


def test_help_texts_keep_angle_and_square_brackets_as_written():
    assert "<think>reasoning</think> then the answer" in run("generate", "--help").stdout
    assert "<output_dir>/dpo/<stage>/[<variant>/]model" in run("dpo", "--help").stdout
    assert "<output_dir>/merge/<name>/[a<alpha>/]model" in run("merge", "--help").stdout
    text = " ".join(run("sft", "--help").stdout.split())
    assert "section.list[i].field=value" in text


WRITERS = ["generate", "filter", "sft", "pipeline", "pairs", "dpo", "rl", "merge", "eval", "answer", "judge"]
MODEL_USERS = ["generate", "sft", "pipeline", "pairs", "dpo", "rl", "eval", "answer"]


@pytest.mark.parametrize("verb", WRITERS)
def test_every_verb_that_writes_takes_output_and_the_ones_with_a_model_take_model(verb):
    text = run(verb, "--help").stdout
    assert "--output" in text and "-o" in text
    assert ("--model" in text) == (verb in MODEL_USERS)
    if verb in MODEL_USERS:
        assert "The recipe's model (model.name)" in " ".join(text.split())


def test_user_text_is_printed_as_written_never_as_markup(tmp_path):
    folder = tmp_path / "[bold]odd[red]"
    folder.mkdir()
    data = folder / "p.jsonl"
    data.write_text('{"prompt": "[INST] hello [/INST] [red]x[/]", "expected": "comply"}\n')
    out = run("data", "--set", f"data.source={data}")
    assert out.returncode == 0, out.stderr
    flat = "".join(out.stdout.split())
    assert "[bold]odd[red]" in flat and "[INST]hello[/INST][red]x[/]" in flat
    missing = run("data", "--set", f"data.source={folder / '[/y]missing.jsonl'}")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "[/y]missing.jsonl: no such file" in missing.stderr


def test_spec_render_prints_the_exact_prompt_without_wrapping():
    import os

    from deliberate.services.spec import load_spec

    out = subprocess.run([sys.executable, "-m", "deliberate", "spec", "render", "--category", "violence"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "40"})
    assert out.returncode == 0 and out.stdout == load_spec().spec_for("violence") + "\n"


def test_recipe_show_one_section_and_the_field_reference():
    import yaml

    out = run("recipe", "show", "--recipe", "recipes/demo.yaml", "--section", "generate", cwd=ROOT)
    assert out.returncode == 0 and list(yaml.safe_load(out.stdout)) == ["generate"]
    fields = run("recipe", "fields", "dpo")
    assert fields.returncode == 0 and "dpo.beta" in fields.stdout and "dpo.stages" in fields.stdout
    bad = run("recipe", "fields", "dpp")
    assert bad.returncode == 2 and "did you mean 'dpo'" in bad.stderr


def test_a_recipe_output_as_the_model_must_exist_and_says_how_to_make_it(tmp_path):
    out = run("answer", "--model", "stage:sft", "--output", str(tmp_path))
    assert out.returncode == 2 and "run `deliberate sft` first" in out.stderr and "Traceback" not in out.stderr


def test_a_typo_in_a_verb_or_a_benchmark_gets_a_suggestion(tmp_path):
    verb = run("evl")
    assert verb.returncode == 2 and "Did you mean 'eval'" in verb.stderr
    bench = run("eval", "--benchmark", "xstset", "--output", str(tmp_path))
    assert bench.returncode == 2 and "did you mean 'xstest'" in bench.stderr
