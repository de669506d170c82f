"""Bad input a user can give, and failing judges: one `error:` line, the documented exit code, no traceback, and
the earlier outputs byte-identical. Each test runs the real command line on local files and a tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import write_completions as completions  # noqa: E402
from fake_openai import FakeOpenAI, Reply  # noqa: E402

from deliberate.services.io import write_jsonl  # noqa: E402

SECRET = "sk-test-d0-not-leak-this-key-1234"


def run(*args, env=None):
    out = subprocess.run([sys.executable, "-m", "deliberate", *map(str, args)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "COLUMNS": "250", "HF_HUB_OFFLINE": "1",
                                           "DELIBERATE_TEST_KEY": SECRET, **(env or {})})
    if log := os.environ.get("DELIBERATE_ERROR_LOG"):  # the table of commands, exit codes and messages
        with open(log, "a") as f:
            f.write(json.dumps({"args": list(map(str, args)), "code": out.returncode,
                                "stderr": out.stderr.strip().splitlines()[-1:]}) + "\n")
    return out


def one_error(out, *fragments, code=2):
    """Exit `code`, one non-empty stderr line that starts with `error:` and holds each fragment, no traceback."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr and len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path, skip: str = "incomplete") -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and skip not in p.relative_to(folder).parts}


def openai_judge(url: str, *extra: str) -> list[str]:
    sets = ["judge.backend=openai", "judge.model=j", f"judge.base_url={url}", "judge.api_key_env=DELIBERATE_TEST_KEY",
            "judge.max_retries=1", "judge.backoff_base=0.01", "judge.cache=none", *extra]
    return [a for s in sets for a in ("--set", s)]


DEAD = "http://127.0.0.1:9/v1"  # the discard port: nothing listens, connections are refused


# ---- inputs that are not what they should be ----


def test_files_that_are_not_utf8_are_one_line_errors(tmp_path):
    latin = "model:\n  name: caf\xe9\n".encode("latin-1")
    (tmp_path / "r.yaml").write_bytes(latin)
    one_error(run("answer", "--recipe", tmp_path / "r.yaml"), "r.yaml: not UTF-8 text")
    (tmp_path / "spec.yaml").write_bytes(latin)
    one_error(run("spec", "validate", tmp_path / "spec.yaml"), "spec.yaml: not UTF-8 text")
    out = tmp_path / "run"
    completions(out)
    assert run("filter", "--output", out).returncode == 0
    before = snapshot(out / "filter")
    (out / "generate" / "completions.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    one_error(run("filter", "--output", out), "completions.jsonl: not UTF-8 text")
    assert snapshot(out / "filter") == before


def test_a_completions_file_with_rows_missing_fields_is_one_line(tmp_path):
    write_jsonl(tmp_path / "generate" / "completions.jsonl", [{"prompt": "hi"}])
    one_error(run("filter", "--output", tmp_path), "row 1 has no key, id, completion, malformed, sample")


def test_a_duplicated_yaml_key_is_an_error_with_file_and_line(tmp_path):
    (tmp_path / "r.yaml").write_text("sft:\n  learning_rate: 1e-4\nseed: 1\nsft:\n  max_length: 64\n")
    one_error(run("recipe", "show", "--recipe", tmp_path / "r.yaml"), "r.yaml:4:1", "key 'sft' is given twice")


def test_a_truncated_safetensors_file_is_one_line(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    out = tmp_path / "out"
    assert run("answer", "--model", broken, "--output", out, "--set", "data.limit=2", "--set",
               "generation.max_new_tokens=2").returncode == 0
    before = snapshot(out)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    weights.touch()  # new weights: the earlier answers are not this model's
    one_error(run("answer", "--model", broken, "--output", out, "--set", "data.limit=2"),
              f"model '{broken}': could not be loaded")
    assert snapshot(out) == before


def test_an_unusable_output_folder_fails_before_any_work(tiny_model_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    for verb in ("answer", "generate", "eval"):
        one_error(run(verb, "--model", tiny_model_dir, "--output", tmp_path / "file" / "out"),
                  f"output_dir {tmp_path / 'file' / 'out'}: cannot be written")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_error(run("answer", "--model", tiny_model_dir, "--output", locked / "out"), "cannot be written")


@pytest.mark.parametrize("kind", ["folder", "under a file", "not sqlite"])
def test_an_unusable_judge_cache_is_one_line_before_judging(tmp_path, kind):
    answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "answer": "Sure.", "expected": "comply"}])
    cache = {"folder": tmp_path, "under a file": answers / "c.sqlite", "not sqlite": tmp_path / "c.sqlite"}[kind]
    if kind == "not sqlite":
        cache.write_text("this is not a database, it is a note to myself\n" * 50)
    with FakeOpenAI() as server:
        out = run("judge", answers, "--output", tmp_path / "out", *openai_judge(server.base_url, f"judge.cache={cache}"))
        assert server.calls == 0
    one_error(out, f"judge.cache {cache}")


def test_rich_markup_in_prompts_paths_and_errors_is_printed_as_written(tiny_model_dir, tmp_path):
    folder = tmp_path / "[/x]"  # the folders `[` and `x]`: a path that reads as a closing tag
    folder.mkdir(parents=True)
    data = write_jsonl(folder / "p.jsonl", [{"prompt": "[INST] hi [/INST] [/bold] [red]", "expected": "comply"}])
    out = run("answer", "--model", tiny_model_dir, "--set", f"data.source={data}", "--set",
              "generation.max_new_tokens=4", "--output", folder / "out")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "[/INST]" in out.stdout and "[/x]" in "".join(out.stdout.split())
    one_error(run("answer", "--model", folder / "[/INST]", "--output", folder / "out"), "[/x]/[/INST]")


def test_a_prompt_longer_than_the_context_is_refused_at_once(tiny_model_dir, tmp_path):
    import time

    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello", "expected": "comply"},
                                               {"prompt": "a" * 3_000_000, "expected": "comply"}])
    out = tmp_path / "out"
    earlier = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "hello", "expected": "comply"}])
    assert run("answer", "--model", tiny_model_dir, "--set", f"data.source={earlier}", "--output", out,
               "--set", "generation.max_new_tokens=2").returncode == 0
    before = snapshot(out)
    start = time.perf_counter()
    line = one_error(run("answer", "--model", tiny_model_dir, "--set", f"data.source={data}", "--output", out),
                     "1 of 2 prompts do not fit the model's context of 8192 tokens")
    assert "refused, nothing generated" in line and time.perf_counter() - start < 60
    assert snapshot(out) == before
    # By tokens too: a prompt just under the character bound but over the token bound.
    data = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "word " * 9000, "expected": "comply"}])
    one_error(run("answer", "--model", tiny_model_dir, "--set", f"data.source={data}", "--output",
                  tmp_path / "out"), "tokens")


def test_a_benchmark_name_cannot_leave_the_output_folder(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi", "expected": "comply"}])
    bench = tmp_path / "b.yaml"
    bench.write_text(f"name: ../../escaped\ndata: {{source: {data}}}\n")
    one_error(run("eval", "--model", tiny_model_dir, "--benchmark", bench, "--output", tmp_path / "run" / "x"),
              "name")
    assert not list(tmp_path.rglob("escaped*"))


# ---- a stage with nothing to do ----


def test_generate_with_nothing_to_sample_keeps_the_earlier_completions(tiny_model_dir, tmp_path):
    path = completions(tmp_path)
    before = snapshot(tmp_path)
    one_error(run("generate", "--model", tiny_model_dir, "--output", tmp_path, "--set",
                  "generate.samples_by_expected={comply: 0, refuse: 0, safe_complete: 0}"), "nothing to do")
    assert snapshot(tmp_path) == before and path.stat().st_size > 0


def test_merge_with_no_merges_says_so_and_exits_2(tmp_path):
    one_error(run("merge", "--output", tmp_path), "nothing to do")


# ---- judges that fail: earlier outputs stay, the stage exits 3 ----


@pytest.mark.parametrize("server_kind", ["unreachable", "http 500", "garbage"])
def test_a_failing_judge_never_replaces_the_filter_outputs(tmp_path, server_kind):
    completions(tmp_path)
    good = run("filter", "--output", tmp_path)  # the rules judge: 8 of 8 kept
    assert good.returncode == 0, good.stderr
    before = snapshot(tmp_path / "filter")
    assert len(json.loads(before["summary.json"])["per_category"]) and before["kept.jsonl"].count(b"\n") == 8

    def behaviour(request, n):
        return Reply(status=500) if server_kind == "http 500" else Reply("I think it is fine, honestly")

    with FakeOpenAI(behaviour) as server:
        out = run("filter", "--output", tmp_path, *openai_judge(DEAD if server_kind == "unreachable" else server.base_url))
    line = one_error(out, "filter: 8 of 8 judgments failed", "judge.max_failures=0", code=3)
    reason = {"unreachable": "connection error", "http 500": "HTTP 500 after 2 attempts",
              "garbage": "unparseable judge output"}[server_kind]
    assert f"8× {reason}" in line
    assert snapshot(tmp_path / "filter") == before  # byte-identical
    incomplete = tmp_path / "filter" / "incomplete"
    assert (incomplete / "kept.jsonl").read_text() == "" and json.loads((incomplete / "summary.json").read_text())[
        "judge_failures"] == 8
    from deliberate.config import load_recipe
    from deliberate.stages.sft import sft_dataset

    train = sft_dataset(load_recipe(None, [f"output_dir={tmp_path}"]))  # the next stage reads the good kept.jsonl
    assert len(train.read_text().splitlines()) == 8


def test_failures_within_judge_max_failures_write_the_outputs_and_warn(tmp_path):
    completions(tmp_path)

    def behaviour(request, n):
        text = request["messages"][-1]["content"]
        if "number 3?" in text:
            return Reply("not json")
        return Reply(json.dumps({"verdict": "comply", "score": 9, "rationale": "fine"}))

    with FakeOpenAI(behaviour) as server:
        out = run("filter", "--output", tmp_path, *openai_judge(server.base_url, "judge.max_failures=0.2"))
    assert out.returncode == 0, out.stderr
    assert "filter: 1 of 8 judgments failed (1× unparseable judge output" in " ".join(out.stdout.split())
    summary = json.loads((tmp_path / "filter" / "summary.json").read_text())
    assert summary["kept"] == 7 and summary["warning"].startswith("filter: 1 of 8")
    assert not (tmp_path / "filter" / "incomplete").exists()


def test_judge_on_rows_without_labels_is_one_line_and_takes_the_data_column_mapping(tmp_path):
    rows = [{"question": f"q{i}", "reply": "I'm sorry, I can't help." if i % 2 else "Sure!", "gold": "unsafe"}
            for i in range(6)]
    answers = write_jsonl(tmp_path / "a.jsonl", rows)
    one_error(run("judge", answers, "--output", tmp_path, "--set", "data.columns.prompt=question", "--response-column",
                  "reply"), "6 of 6 rows cannot be judged by the rules judge", "data.columns.expected")
    assert not (tmp_path / "judge").exists()
    out = run("judge", answers, "--output", tmp_path, "--set", "data.columns.prompt=question", "--set",
              "data.columns.expected=gold", "--response-column", "reply")
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "judge" / "summary.json").read_text())
    assert (summary["judged"], summary["failed"], summary["verdicts"]) == (6, 0, {"refuse": 3, "unsafe": 3})


def test_a_failing_judge_keeps_earlier_judgments_and_exits_3(tmp_path):
    answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"q{i}", "answer": "Sure.", "expected": "comply"}
                                                 for i in range(4)])
    assert run("judge", answers, "--output", tmp_path).returncode == 0
    before = snapshot(tmp_path / "judge")
    with FakeOpenAI(lambda request, n: Reply(status=500)) as server:
        out = run("judge", answers, "--output", tmp_path, *openai_judge(server.base_url))
    one_error(out, "judge: 4 of 4 judgments failed", f"{tmp_path / 'judge' / 'incomplete'}", code=3)
    assert snapshot(tmp_path / "judge") == before


def test_an_api_key_echoed_by_the_server_is_never_stored_or_printed(tmp_path):
    answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "answer": "Sure.", "expected": "comply"}])

    def echo(request, n):  # a 401 whose body repeats the key it was sent, as some proxies do
        return Reply(status=401, body={"error": {"message": f"Incorrect API key provided: {SECRET}. Bearer "
                                                            f"{SECRET}", "type": "auth"}})

    with FakeOpenAI(echo) as server:
        out = run("judge", answers, "--output", tmp_path, *openai_judge(server.base_url, "judge.max_failures=1"))
        spec_data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi", "category": "safe"}])
        gen = run("generate", "--output", tmp_path, "--set", "generate.backend=openai", "--set", "generate.teacher=t",
                  "--set", f"generate.base_url={server.base_url}", "--set", "generate.api_key_env=DELIBERATE_TEST_KEY",
                  "--set", f"data.source={spec_data}", "--set", "generate.samples=1")
    assert out.returncode == 0, out.stderr
    one_error(gen, "generate: 1 of 1 teacher requests failed", "HTTP 401", code=3)
    stored = (tmp_path / "judge" / "judgments.jsonl").read_text()
    assert "HTTP 401" in stored and "[redacted]" in stored
    for text in (stored, out.stdout, out.stderr, gen.stdout, gen.stderr):
        assert SECRET not in text and SECRET[:20] not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# ---- inputs that already gave one line: they stay that way ----


@pytest.mark.parametrize("args, fragment", [
    (["answer", "--set", "data.source=/nonexistent/p.jsonl"], "no such file"),
    (["answer", "--set", "sft.learning_rate=fast"], "sft.learning_rate"),
    (["answer", "--set", "nosuch.field=1"], "nosuch"),
    (["eval", "--benchmark", "xstset"], "did you mean 'xstest'"),
    (["sft"], "run `deliberate filter` first"),
    (["answer", "--model", "/nonexistent/model"], "model '/nonexistent/model'"),
    (["filter"], "run `deliberate generate` first"),
    (["judge", "/nonexistent.jsonl"], "no such file"),
    (["judge", "README.md"], "unsupported file type"),
    (["judge", "pyproject.toml", "--criterion", "kindness"], "--criterion 'kindness'"),
    (["answer", "--sett", "x=1"], "No such option: --sett (Possible options: --set)"),
    (["judge"], "Missing argument 'responses'"),
    (["answr"], "No such command 'answr'"),
])
def test_bad_input_that_was_already_one_line_stays_one_line(tmp_path, args, fragment):
    one_error(run(*args, "--output", tmp_path), fragment)


# ---- found by review: each was a traceback, a lost payment or a leak ----


@pytest.mark.parametrize("content, reason", [
    ('{"verdict": "comply", "score": NaN, "rationale": "x"}', "unparseable judge output"),
    ('{"verdict": "comply", "score": Infinity, "rationale": "x"}', "unparseable judge output"),
])
def test_a_judge_verdict_with_a_non_finite_score_is_a_failure_not_a_crash(tmp_path, content, reason):
    answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "answer": "Sure.", "expected": "comply"}])
    with FakeOpenAI(lambda request, n: Reply(content)) as server:
        one_error(run("judge", answers, "--output", tmp_path, *openai_judge(server.base_url)), reason, code=3)


def test_odd_usage_counts_from_the_server_do_not_lose_the_judgment(tmp_path):
    from fake_openai import completion

    answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "answer": "Sure.", "expected": "comply"}])
    body = completion(json.dumps({"verdict": "comply", "score": 9, "rationale": "x"}))
    body["usage"] = {"prompt_tokens": "lots", "completion_tokens": None}
    with FakeOpenAI(lambda request, n: Reply(body=body)) as server:
        out = run("judge", answers, "--output", tmp_path, *openai_judge(server.base_url))
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "judge" / "summary.json").read_text())["judged"] == 1


def test_a_key_in_any_variable_is_redacted_even_inside_a_long_refusal(tmp_path):
    answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "answer": "Sure.", "expected": "comply"}])
    key = "Zq9supersecretvalue-0123456789"  # not sk-shaped, in a variable whose name does not say "key"
    refusal = completion_with_refusal("x" * 90 + key)
    with FakeOpenAI(lambda request, n: Reply(body=refusal)) as server:
        out = run("judge", answers, "--output", tmp_path, *openai_judge(server.base_url, "judge.api_key_env=CREDS"),
                  env={"CREDS": key})
    one_error(out, "the model refused", code=3)
    for text in [out.stdout, out.stderr] + [p.read_text() for p in tmp_path.rglob("*.json*")]:
        assert key[:8] not in text


def completion_with_refusal(text: str) -> dict:
    from fake_openai import completion

    body = completion("")
    body["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": text}
    return body


def test_data_files_pandas_cannot_read_are_one_line(tmp_path):
    import gzip

    (tmp_path / "t.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "a"}\n' * 50)[:20])
    (tmp_path / "rows.jsonl").write_text('{"prompt": "a"}\n[1, 2]\n')
    (tmp_path / "rows.json").write_text('[{"prompt": "a"}, 5]')
    for name, fragment in [("t.jsonl.gz", "could not be read as jsonl"), ("rows.jsonl", "line 2: a row must be a "
                           "JSON object"), ("rows.json", "expected a list of JSON objects")]:
        one_error(run("data", "--set", f"data.source={tmp_path / name}"), fragment)


@pytest.mark.parametrize("setting, fragment", [
    ("judge.max_failures=.nan", "finite number"), ("judge.temperature=.inf", "finite number"),
    ("seed=99999999999999999999999", "less than 4294967296"), ("judge.base_url=notaurl", "judge.base_url"),
    ("generate.reasoning_budget=300", "reasoning_budget (300) must be below max_new_tokens (256)"),
])
def test_recipe_values_no_stage_can_use_are_refused_at_load(setting, fragment):
    one_error(run("recipe", "show", "--set", setting), fragment)


def test_a_broken_adapter_config_is_one_line(tiny_model_dir, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    (folder / "adapter_config.json").write_text("[1]")
    one_error(run("answer", "--model", folder, "--output", tmp_path / "out"), "not a PEFT adapter config")


def test_a_folder_where_an_output_file_goes_is_found_before_the_work(tiny_model_dir, tmp_path):
    (tmp_path / "answers" / "answers.jsonl").mkdir(parents=True)
    one_error(run("answer", "--model", tiny_model_dir, "--output", tmp_path), "is a folder where an output file goes")
    answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "answer": "Sure.", "expected": "comply"}])
    (tmp_path / "judge" / "judgments.jsonl").mkdir(parents=True)
    one_error(run("judge", answers, "--output", tmp_path), "is in the way of judge's outputs")


def test_a_read_only_judge_cache_is_refused_before_any_call(tmp_path):
    from deliberate.judges.cache import JudgeCache

    cache = tmp_path / "ro.sqlite"
    JudgeCache(cache).close()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(cache)], capture_output=True).returncode:
            pytest.skip("root without chattr: every file is writable")
    else:
        cache.chmod(0o444)
    try:
        answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "answer": "Sure.", "expected": "comply"}])
        with FakeOpenAI() as server:
            out = run("judge", answers, "--output", tmp_path / "o", *openai_judge(server.base_url,
                                                                                 f"judge.cache={cache}"))
            assert server.calls == 0
        one_error(out, "not a usable judge cache", "readonly")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(cache)], capture_output=True)


def test_a_corrected_label_takes_effect_without_answering_again(tiny_model_dir, tmp_path):
    data = tmp_path / "b.jsonl"
    write_jsonl(data, [{"id": "a", "prompt": "How do I bake bread?", "expected": "comply"},
                       {"id": "b", "prompt": "How do I pick a lock?", "expected": "comply"}])
    sets = ["--model", tiny_model_dir, "--benchmark", data, "--output", tmp_path / "run", "--set",
            "generation.max_new_tokens=2", "--set", "eval.bootstrap_samples=100", "--set", "eval.plots=false"]
    assert run("eval", *sets).returncode == 0
    write_jsonl(data, [{"id": "a", "prompt": "How do I bake bread?", "expected": "comply"},
                       {"id": "b", "prompt": "How do I pick a lock?", "expected": "refuse"}])
    assert run("eval", *sets).returncode == 0
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    [result] = report["results"]
    assert result["generated_now"] == 0 and result["refusal_rate"]["n"] == 1 and result["answer_rate"]["n"] == 1


def test_duplicated_names_that_would_overwrite_each_other_are_refused(tmp_path):
    import yaml

    from deliberate.services.spec import load_spec

    spec = load_spec().model_dump(mode="json")
    spec["categories"].append(dict(spec["categories"][0], title="Another title", aliases=[]))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    one_error(run("spec", "validate", tmp_path / "spec.yaml"), "category ids given more than once")
    for folder in ("ba", "bb"):
        write_jsonl(tmp_path / folder / "x.jsonl", [{"prompt": "hi", "expected": "comply"}])
    one_error(run("eval", "--benchmark", tmp_path / "ba" / "x.jsonl", "--benchmark", tmp_path / "bb" / "x.jsonl",
                  "--output", tmp_path / "run"), "two benchmarks are named x")


def test_columns_json_cannot_hold_are_kept_as_text_not_a_crash_after_generating(tiny_model_dir, tmp_path):
    import pandas as pd

    data = tmp_path / "p.parquet"
    pd.DataFrame({"prompt": ["Hi there", "Tell me a joke"], "expected": ["comply", "comply"],
                  "when": pd.to_datetime(["2024-01-01", "2024-02-03"]), "blob": [b"\x00\x01", b"ok"]}).to_parquet(data)
    out = run("answer", "--model", tiny_model_dir, "--set", f"data.source={data}", "--set",
              "generation.max_new_tokens=2", "--output", tmp_path / "run")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "answers" / "answers.jsonl").read_text().splitlines()]
    assert rows[0]["meta"]["when"].startswith("2024-01-01") and rows[1]["meta"]["blob"] == "ok"


def test_eval_on_a_benchmark_its_judge_cannot_score_stops_before_answering(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "hi"}, {"prompt": "hello"}])
    one_error(run("eval", "--model", tiny_model_dir, "--benchmark", data, "--output", tmp_path / "run"),
              "2 of 2 prompts of benchmark b cannot be judged by the rules judge")
    assert not (tmp_path / "run" / "eval" / "answers").exists()


@pytest.mark.parametrize("row, fragment", [
    ({"prompt": "Q", "chosen": [{"role": "assistant", "content": 5}], "rejected": "bad"}, "assistant turn"),
    ({"prompt": "Q", "chosen": [], "rejected": []}, "assistant turn"),
    ({"prompt": "Q", "chosen": None, "rejected": "bad"}, "assistant turn"),
    ({"prompt": 5, "chosen": "good", "rejected": "bad"}, "user turn"),
])
def test_preference_rows_that_are_not_text_are_one_line(tiny_model_dir, tmp_path, row, fragment):
    data = write_jsonl(tmp_path / "prefs.jsonl", [row])
    one_error(run("dpo", "--model", tiny_model_dir, "--output", tmp_path, "--set", f"dpo.data.source={data}"),
              fragment)


def test_pku_preference_ids_other_than_0_or_1_are_one_line(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pku.jsonl", [{"prompt": "Q", "response_0": "a", "response_1": "b",
                                                 "better_response_id": 5, "safer_response_id": "a"}])
    one_error(run("dpo", "--model", tiny_model_dir, "--output", tmp_path, "--set", f"dpo.data.source={data}"),
              "must be 0 or 1")


@pytest.mark.parametrize("row", [{"prompt": "Q"}, {"id": "1", "prompt": None, "answer": "A"},
                                 {"id": "1", "prompt": "Q", "answer": 5}])
def test_a_kept_file_with_bad_rows_is_one_line_for_sft(tiny_model_dir, tmp_path, row):
    write_jsonl(tmp_path / "filter" / "kept.jsonl", [row])
    one_error(run("sft", "--model", tiny_model_dir, "--output", tmp_path), "kept.jsonl")


def test_odd_extends_and_empty_merges_are_one_line(tmp_path):
    (tmp_path / "r.yaml").write_text("extends: 5\n")
    one_error(run("recipe", "show", "--recipe", tmp_path / "r.yaml"), "extends: expected a recipe file")
    one_error(run("merge", "--output", tmp_path, "--set", "merge.merges=[{name: a, models: []}]"),
              "merge.merges[0].models")
