"""Preference data: judge-ranked pairs (never from a failed judgment) and importers for public formats."""

from __future__ import annotations

import json
import os

import pytest
from fake_openai import FakeOpenAI, Reply, judged_text

from deliberate.config import PreferenceData, load_recipe
from deliberate.errors import DeliberateError
from deliberate.services.io import read_jsonl, write_jsonl
from deliberate.services.preferences import load_preferences, parse_hh
from deliberate.stages.pairs import rank_pairs


def _judged(pid, sample, score, text=None):
    return {"id": pid, "sample": sample, "prompt": f"prompt {pid}", "category": "safe",
            "completion": text or f"{pid}-{sample}", "score": score}


def test_rank_pairs_best_vs_worst_margin_ties_and_failures():
    judged = [
        _judged("a", 0, 3.0), _judged("a", 1, None), _judged("a", 2, 9.0), _judged("a", 3, 5.0),  # pair 9 vs 3
        _judged("b", 0, 7.0), _judged("b", 1, 7.0),  # tie: no pair
        _judged("c", 0, None), _judged("c", 1, 10.0),  # one judged: no pair, never the failed one
        _judged("d", 0, 6.0), _judged("d", 1, 5.5),  # below the margin
    ]
    pairs, kto, ties = rank_pairs(judged, min_margin=1.0, kto_threshold=7.0)
    assert [(p["id"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("a", "a-2", "a-0")]
    assert (pairs[0]["score_chosen"], pairs[0]["score_rejected"]) == (9.0, 3.0)
    assert ties == 1
    assert {k["completion"][0]["content"] for k in kto} == {"a-0", "a-2", "a-3", "b-0", "b-1", "c-1", "d-0", "d-1"}
    assert {k["completion"][0]["content"]: k["label"] for k in kto}["b-0"] is True
    assert {k["completion"][0]["content"]: k["label"] for k in kto}["a-3"] is False


def flaky_judge(request, n):
    """Scores by length; cannot judge (unparseable output) any response containing the letter 'e' twice."""
    text = judged_text(request)
    response = text.split("<response>")[1].split("</response>")[0]
    if response.count("e") == 2:
        return Reply("I will not judge this.")
    return Reply(json.dumps({"verdict": "comply", "score": min(10, len(response) % 11), "rationale": "len"}))


def test_pairs_are_never_built_from_a_failed_judgment(tiny_model_dir, tmp_path):
    from deliberate.stages.pairs import build_pairs

    data = tmp_path / "p.jsonl"
    write_jsonl(data, [{"id": str(i), "prompt": f"Say something about {w}", "category": "safe"}
                       for i, w in enumerate(["tea", "rain", "maps", "bread", "clocks", "owls"])])
    os.environ["DELIBERATE_TEST_KEY"] = "k"
    with FakeOpenAI(flaky_judge) as server:
        recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'out'}",
                                    f"data.source={data}", "judge.backend=openai", "judge.model=j",
                                    f"judge.base_url={server.base_url}", "judge.api_key_env=DELIBERATE_TEST_KEY",
                                    "judge.cache=none", "judge.structured_output=none", "judge.max_retries=0",
                                    "pairs.samples=8", "pairs.max_new_tokens=10", "pairs.drop_cut_off=false",
                                    "pairs.min_margin=0.5", "judge.max_failures=0.9"])
        summary = build_pairs(recipe, show_progress=False)
        calls = server.calls
        again = build_pairs(recipe, show_progress=False)  # resumes: nothing generated again
    folder = tmp_path / "out" / "pairs"
    judged = read_jsonl(folder / "judged.jsonl")
    failed = {(j["id"], j["completion"]) for j in judged if j["score"] is None}
    assert summary["judge_failures"] == len(failed) > 0
    pairs = read_jsonl(folder / "pairs.jsonl")
    assert pairs, summary
    for p in pairs:
        for side in ("chosen", "rejected"):
            assert (p["id"], p[side][0]["content"]) not in failed
        assert p["score_chosen"] - p["score_rejected"] >= 0.5
    assert all(k["score"] is not None for k in read_jsonl(folder / "kto.jsonl"))
    assert summary["completions"] == 48 and again["generated_now"] == 0 and calls > 0


def test_hh_transcripts_become_conversations():
    messages = parse_hh("\n\nHuman: How do I pick a lock?\n\nAssistant: Why?\n\nHuman: Locked out.\n\nAssistant: "
                        "Call a locksmith.")
    assert messages == [{"role": "user", "content": "How do I pick a lock?"},
                        {"role": "assistant", "content": "Why?"}, {"role": "user", "content": "Locked out."},
                        {"role": "assistant", "content": "Call a locksmith."}]


def _prefs(source, kind="paired", **kw):
    return load_preferences(load_recipe(), PreferenceData(source=str(source), **kw), kind)


def test_pku_saferlhf_pairs_follow_the_chosen_preference(shared_datasets):
    path = shared_datasets / "pku_saferlhf" / "train.json"
    raw = json.loads(path.read_text())
    safer, s = _prefs(path, preference="safer")
    better, _ = _prefs(path, preference="better")
    assert s["format"] == "pku" and len(safer) == len(raw) == 32
    for row, a, b in zip(raw, safer, better, strict=True):
        assert a["chosen"][0]["content"] == row[f"response_{row['safer_response_id']}"]
        assert a["rejected"][0]["content"] == row[f"response_{1 - row['safer_response_id']}"]
        assert b["chosen"][0]["content"] == row[f"response_{row['better_response_id']}"]
        assert a["prompt"] == [{"role": "user", "content": row["prompt"]}]
    labels, _ = _prefs(path, kind="unpaired")  # KTO on absolute safe / unsafe labels
    assert len(labels) == 64
    assert [x["label"] for x in labels[:2]] == [raw[0]["is_response_0_safe"], raw[0]["is_response_1_safe"]]


def test_hh_rlhf_and_pair_list_files(shared_datasets):
    hh, s = _prefs(shared_datasets / "hh_rlhf" / "harmless-base" / "test.jsonl.gz", limit=50)
    assert s["format"] == "hh" and len(hh) == 50
    assert all(p["prompt"][-1]["role"] == "user" and p["chosen"][0]["role"] == "assistant" for p in hh)
    assert all(p["chosen"] != p["rejected"] for p in hh)
    pl, s = _prefs(shared_datasets / "pku_saferlhf" / "pku_seferlhf_realign_dpo_5k.json", limit=5)
    raw = json.loads((shared_datasets / "pku_saferlhf" / "pku_seferlhf_realign_dpo_5k.json").read_text())[:5]
    assert s["format"] == "pair_list"
    assert [p["chosen"][0]["content"] for p in pl] == [r["response"][0] for r in raw]


def test_trl_formats_and_conversions(tmp_path):
    paired = tmp_path / "paired.jsonl"
    write_jsonl(paired, [{"prompt": "Q1", "chosen": "good", "rejected": "bad", "score_chosen": 8}])
    rows, s = _prefs(paired)
    assert s["format"] == "trl" and rows[0]["score_chosen"] == 8
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "good"}]
    kto, _ = _prefs(paired, kind="unpaired")  # a pair is one desirable and one undesirable example
    assert [(k["completion"][0]["content"], k["label"]) for k in kto] == [("good", True), ("bad", False)]
    unpaired = tmp_path / "unpaired.csv"
    unpaired.write_text("prompt,completion,label\nQ1,good,true\nQ1,bad,false\nQ2,meh,true\n")
    rows, s = _prefs(unpaired)  # paired up per prompt for DPO
    assert s["format"] == "trl_unpaired" and len(rows) == 1 and rows[0]["rejected"][0]["content"] == "bad"
    odd = tmp_path / "odd.csv"
    odd.write_text("question,answer\nQ,A\n")
    with pytest.raises(DeliberateError, match="match no known format"):
        _prefs(odd)
    with pytest.raises(DeliberateError, match="needs column"):
        _prefs(odd, format="trl")
    with pytest.raises(DeliberateError, match="run `deliberate pairs` first"):
        load_preferences(load_recipe(None, [f"output_dir={tmp_path}"]), PreferenceData(), "paired")


def test_where_picks_the_pairs_of_prompts_to_answer_or_to_refuse(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"prompt": "Q1", "chosen": "answer", "rejected": "refusal", "expected": "comply"},
                        {"prompt": "Q2", "chosen": "refusal", "rejected": "how to", "expected": "refuse"},
                        {"prompt": "Q3", "chosen": "support", "rejected": "how to", "expected": "safe_complete"}])
    rows, _ = _prefs(pairs, where={"expected": "comply"})
    assert [r["prompt"][0]["content"] for r in rows] == ["Q1"]
    rows, _ = _prefs(pairs, where={"expected": ["refuse", "safe_complete"]})
    assert [r["prompt"][0]["content"] for r in rows] == ["Q2", "Q3"]
    with pytest.raises(DeliberateError, match="no column 'kind'"):
        _prefs(pairs, where={"kind": "x"})
    from deliberate.services.runs import Layout

    recipe = load_recipe(None, [f"output_dir={tmp_path}"])
    conversation = [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": "a"}],
                     "rejected": [{"role": "assistant", "content": "b"}], "expected": e}
                    for q, e in [("Q1", "comply"), ("Q2", "refuse")]]
    write_jsonl(Layout(recipe).pairs / "pairs.jsonl", conversation)
    rows, _ = load_preferences(recipe, PreferenceData(where={"expected": "refuse"}), "paired")
    assert [r["prompt"][0]["content"] for r in rows] == ["Q2"]


def test_also_from_pools_a_second_models_samples_and_resumes(tiny_model_dir, tmp_path):
    from conftest import build_tiny_model

    from deliberate.stages.pairs import build_pairs

    other = build_tiny_model(tmp_path / "other", seed=1)
    data = tmp_path / "p.jsonl"
    write_jsonl(data, [{"id": str(i), "prompt": f"Say something about {w}", "category": "safe"}
                       for i, w in enumerate(["tea", "rain", "maps", "bread"])])
    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'out'}",
                                f"data.source={data}", "judge.backend=rules", "pairs.samples=2",
                                "pairs.max_new_tokens=6", "pairs.drop_cut_off=false", "pairs.min_margin=0",
                                f"pairs.also_from=[{other}]"])
    summary = build_pairs(recipe, show_progress=False)
    folder = tmp_path / "out" / "pairs"
    judged = read_jsonl(folder / "judged.jsonl")
    assert summary["completions"] == 16 and summary["generated_now"] == 16
    assert summary["policy"] == str(tiny_model_dir) and summary["also_from"] == [str(other)]
    by_prompt = {}
    for j in judged:
        by_prompt.setdefault(j["id"], []).append((j["sample"], j["writer"]))
    # samples 0-1 from the policy (the file it always had), 2-3 from the other model (a file of its own)
    assert all(sorted(v) == [(0, "base"), (1, "base"), (2, str(other)), (3, str(other))] for v in by_prompt.values())
    assert len(read_jsonl(folder / "completions.jsonl")) == len(read_jsonl(folder / "completions-1.jsonl")) == 8
    for p in read_jsonl(folder / "pairs.jsonl"):
        writer = {0: "base", 1: "base", 2: str(other), 3: str(other)}
        assert (p["chosen_writer"], p["rejected_writer"]) == (writer[p["chosen_sample"]], writer[p["rejected_sample"]])
    assert build_pairs(recipe, show_progress=False)["generated_now"] == 0  # both files resume
