"""Preference optimisation: MODPO's loss, stepwise references, KTO weights, and DPO learning from judge pairs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import build_tiny_model
from fake_openai import FakeOpenAI, Reply, judged_text

from deliberate.config import load_recipe
from deliberate.errors import DeliberateError
from deliberate.services.io import read_jsonl, write_jsonl
from deliberate.services.runs import ModelRun
from deliberate.stages.dpo import build_trainer, run_dpo, sequence_logps

PAIRS = [
    {"prompt": [{"role": "user", "content": f"Explain photosynthesis {i}"}],
     "chosen": [{"role": "assistant", "content": "Boil the pasta for ten minutes." if i % 2 else "Paris."}],
     "rejected": [{"role": "assistant", "content": "I'm sorry, but I can't help with that."}],
     "score_chosen": 9.0 - i % 3, "score_rejected": 1.0 + i % 2}
    for i in range(4)
]


def _recipe(tiny, tmp_path, *sets):
    return load_recipe(None, [f"model.name={tiny}", f"output_dir={tmp_path / 'out'}", "dpo.lora=false",
                              f"dpo.per_device_train_batch_size={len(PAIRS)}", *sets])


def _batch_loss(trainer) -> float:
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def _perturb(model, seed: int = 1) -> None:
    """Move the policy away from the reference so the log-ratios are not zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _modpo_trainer(tiny, tmp_path, weight, beta=0.1):
    recipe = _recipe(tiny, tmp_path, "dpo.method=modpo", "dpo.margin.kind=columns", "dpo.margin.scale=0.5")
    stage = recipe.dpo.stage_list()[0]
    rows = [{**r, "margin_chosen": 0.5 * r["score_chosen"], "margin_rejected": 0.5 * r["score_rejected"]}
            for r in PAIRS]
    trainer, _ = build_trainer(recipe, stage, str(tiny), rows, beta, weight, ModelRun(tmp_path / "ck"), show_progress=False)
    return trainer


def test_modpo_loss_equals_the_formula_on_hand_computed_log_probs(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    beta, w = 0.1, 0.3
    trainer = _modpo_trainer(tiny_model_dir, tmp_path, w, beta)
    _perturb(trainer.model)
    loss = _batch_loss(trainer)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    items_c = [(r["prompt"], r["chosen"]) for r in PAIRS]
    items_r = [(r["prompt"], r["rejected"]) for r in PAIRS]
    pol_c, pol_r = sequence_logps(trainer.model, tok, items_c), sequence_logps(trainer.model, tok, items_r)
    ref_c, ref_r = sequence_logps(ref, tok, items_c), sequence_logps(ref, tok, items_r)
    terms = []
    for i, r in enumerate(PAIRS):
        m_w, m_l = 0.5 * r["score_chosen"], 0.5 * r["score_rejected"]
        z = (beta / w) * ((pol_c[i] - ref_c[i]) - (pol_r[i] - ref_r[i])) - ((1 - w) / w) * (m_w - m_l)
        terms.append(-math.log(1 / (1 + math.exp(-z))))
    assert abs(pol_c[0] - ref_c[0]) > 0.1  # the policy really differs from the reference
    assert loss == pytest.approx(sum(terms) / len(terms), rel=1e-4, abs=1e-5)
    # The margin matters: a different weight gives a different loss on the same batch.
    assert abs(loss - _batch_loss_for_weight(tiny_model_dir, tmp_path, 0.8)) > 1e-3


def _batch_loss_for_weight(tiny, tmp_path, w):
    trainer = _modpo_trainer(tiny, tmp_path / f"w{w}", w)
    _perturb(trainer.model)
    return _batch_loss(trainer)


def test_modpo_with_weight_one_equals_dpo(tiny_model_dir, tmp_path):
    modpo = _modpo_trainer(tiny_model_dir, tmp_path / "m", 1.0)
    recipe = _recipe(tiny_model_dir, tmp_path / "d")
    dpo, _ = build_trainer(recipe, recipe.dpo.stage_list()[0], str(tiny_model_dir), PAIRS, 0.1, 1.0,
                           ModelRun(tmp_path / "ck"), show_progress=False)
    _perturb(modpo.model)
    _perturb(dpo.model)
    assert dpo.ref_model is not None  # plain DPO: a frozen reference copy, computed every step
    assert _batch_loss(modpo) == pytest.approx(_batch_loss(dpo), rel=1e-5)
    assert _batch_loss(dpo) != pytest.approx(math.log(2), abs=1e-3)


def test_kto_undesirable_weight_follows_the_class_counts(tiny_model_dir, tmp_path):
    rows = [{"prompt": p["prompt"], "completion": p["chosen"], "label": True} for p in PAIRS] + [
        {"prompt": PAIRS[0]["prompt"], "completion": PAIRS[0]["rejected"], "label": False},
        {"prompt": PAIRS[0]["prompt"], "completion": [{"role": "assistant", "content": "Paris."}], "label": True},
    ]  # 5 desirable, 1 undesirable
    recipe = _recipe(tiny_model_dir, tmp_path, "dpo.method=kto")
    trainer, extra = build_trainer(recipe, recipe.dpo.stage_list()[0], str(tiny_model_dir), rows, 0.1, 1.0,
                                   ModelRun(tmp_path / "ck"), show_progress=False)
    assert trainer.args.undesirable_weight == pytest.approx(5.0) and trainer.args.desirable_weight == 1.0
    assert (extra["desirable"], extra["undesirable"]) == (5, 1)
    recipe = _recipe(tiny_model_dir, tmp_path, "dpo.method=kto", "dpo.undesirable_weight=2.5")
    trainer, _ = build_trainer(recipe, recipe.dpo.stage_list()[0], str(tiny_model_dir), rows, 0.1, 1.0,
                               ModelRun(tmp_path / "ck2"), show_progress=False)
    assert trainer.args.undesirable_weight == pytest.approx(2.5)
    with pytest.raises(DeliberateError, match="desirable and undesirable"):
        build_trainer(recipe, recipe.dpo.stage_list()[0], str(tiny_model_dir), rows[:2], 0.1, 1.0, ModelRun(tmp_path / "c3"),
                      show_progress=False)


@pytest.mark.parametrize("lora", [False, True])
def test_second_stage_reference_is_the_first_stage_result(tiny_model_dir, tmp_path, monkeypatch, lora):
    """SACPO: stage 2 starts from stage 1's model, which is also its reference (adapter-disabled with LoRA)."""
    from transformers import AutoModelForCausalLM

    import deliberate.stages.dpo as dpo_module

    data = tmp_path / "prefs.jsonl"
    write_jsonl(data, PAIRS)
    probe = torch.tensor([[5, 17, 42, 99, 7, 3]])
    seen = {}
    real = dpo_module.build_trainer

    def spy(recipe, stage, start, rows, beta, weight, run, show_progress=True, label="dpo"):
        trainer, extra = real(recipe, stage, start, rows, beta, weight, run, show_progress, label)
        with torch.no_grad():
            if trainer.ref_model is not None:
                seen[stage.name] = trainer.ref_model(input_ids=probe).logits.clone()
            else:
                with trainer.model.disable_adapter():
                    seen[stage.name] = trainer.model(input_ids=probe).logits.clone()
        return trainer, extra

    monkeypatch.setattr(dpo_module, "build_trainer", spy)
    recipe = _recipe(tiny_model_dir, tmp_path, f"dpo.data.source={data}", "dpo.max_steps=3", "dpo.learning_rate=5e-3",
                     "dpo.stages=[{name: helpful}, {name: safe, method: kto, lora: " + str(lora).lower()
                     + ", beta: 0.05}]")
    summaries = run_dpo(recipe, show_progress=False)
    assert [s["model"] for s in summaries] == ["helpful", "safe"]
    assert summaries[1]["start"].endswith("dpo/helpful/model")
    out = tmp_path / "out" / "dpo"
    with torch.no_grad():
        stage1 = AutoModelForCausalLM.from_pretrained(out / "helpful" / "model")(input_ids=probe).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=probe).logits
    assert not torch.allclose(stage1, base, atol=1e-4)  # stage 1 did train
    assert torch.allclose(seen["helpful"], base, atol=1e-5)
    assert torch.allclose(seen["safe"], stage1, atol=1e-5)
    assert (out / "safe" / ("adapter" if lora else "model") / "config.json").exists() or lora
    # A second run reuses both finished models.
    again = run_dpo(recipe, show_progress=False)
    assert all(s.get("reused") for s in again)


def test_sweep_trains_one_model_per_value_and_stage_names_resolve(tiny_model_dir, tmp_path):
    from deliberate.services.runs import stage_model, stage_models

    data = tmp_path / "prefs.jsonl"
    write_jsonl(data, PAIRS)
    recipe = _recipe(tiny_model_dir, tmp_path, f"dpo.data.source={data}", "dpo.max_steps=1",
                     "dpo.stages=[{name: helpful}, {name: safe, beta: [0.1, 0.025]}]")
    summaries = run_dpo(recipe, show_progress=False)
    assert [s["model"] for s in summaries] == ["helpful", "safe/beta0.1", "safe/beta0.025"]
    assert [s["beta"] for s in summaries] == [0.1, 0.1, 0.025]
    assert [label for label, _ in stage_models(recipe, "stage:safe/*")] == ["stage:safe/beta0.025",
                                                                            "stage:safe/beta0.1"]
    assert stage_model(recipe, "stage:helpful").endswith("dpo/helpful/model")
    with pytest.raises(DeliberateError, match="stage:safe/beta0.1"):
        stage_model(recipe, "stage:safe")
    with pytest.raises(DeliberateError, match="run `deliberate dpo` first"):
        stage_model(recipe, "stage:nothing")
    with pytest.raises(DeliberateError, match="did you mean 'stage:helpful'"):
        stage_model(recipe, "stage:helpfull")


def test_bad_stage_settings_fail_when_the_recipe_loads():
    with pytest.raises(DeliberateError, match=r"stages\[1\] \(safe\): beta"):
        load_recipe(None, ["dpo.stages=[{name: helpful}, {name: safe, beta: 0}]"])
    with pytest.raises(DeliberateError, match="used twice"):
        load_recipe(None, ["dpo.stages=[{name: a}, {name: a}]"])
    with pytest.raises(DeliberateError, match="weight"):
        load_recipe(None, ["dpo.weight=1.5"])


# --- learning: DPO on judge-ranked pairs beats the starting model -------------------------------------------------

def _a_count(text: str) -> int:
    return text.lower().count("a")


def letter_judge(request, n):
    """A judge that likes the letter 'a': pointwise score 0-10 by count, pairwise the response with more."""
    text = judged_text(request)
    if "<response_A>" in text:
        a = text.split("<response_A>")[1].split("</response_A>")[0]
        b = text.split("<response_B>")[1].split("</response_B>")[0]
        pref = "A" if _a_count(a) > _a_count(b) else "B" if _a_count(b) > _a_count(a) else "tie"
        return Reply(json.dumps({"preferred": pref, "rationale": "more a"}))
    response = text.split("<response>")[1].split("</response>")[0]
    return Reply(json.dumps({"verdict": "comply", "score": min(10, _a_count(response)), "rationale": "count"}))


def test_dpo_on_judge_ranked_pairs_beats_the_starting_model(tmp_path):
    from deliberate.stages.evaluate import run_eval
    from deliberate.stages.pairs import build_pairs

    tiny = build_tiny_model(tmp_path / "tiny", seed=3)
    train = tmp_path / "train.jsonl"
    heldout = tmp_path / "heldout.jsonl"
    words = ["cook", "travel", "sleep", "music", "garden", "code", "paint", "swim", "read", "run", "bake",
             "drive", "knit", "climb", "sing", "draw"]
    write_jsonl(train, [{"id": f"t{i}", "prompt": f"Tell me about {w} number {i}", "category": "safe",
                         "expected": "comply"} for i, w in enumerate(words * 2)])
    write_jsonl(heldout, [{"id": f"h{i}", "prompt": f"What do you think of {w} {i}?", "category": "safe",
                           "expected": "comply"} for i, w in enumerate(words * 4)])
    with FakeOpenAI(letter_judge) as server:
        sets = [f"model.name={tiny}", f"output_dir={tmp_path / 'out'}", f"data.source={train}",
                "judge.backend=openai", "judge.model=letter-judge", f"judge.base_url={server.base_url}",
                "judge.api_key_env=DELIBERATE_TEST_KEY", "judge.cache=none", "judge.structured_output=none",
                "pairs.samples=8", "pairs.temperature=1.0", "pairs.max_new_tokens=12", "pairs.drop_cut_off=false",
                "pairs.min_margin=2", "dpo.lora=false", "dpo.learning_rate=2e-2", "dpo.num_train_epochs=8",
                "dpo.per_device_train_batch_size=4", "dpo.beta=0.1",
                "generation.max_new_tokens=12", "generation.temperature=1.0", "eval.models=[stage:dpo]", f"eval.benchmarks=[{heldout}]",
                "eval.pairwise_repeats=1", "eval.plots=false"]
        import os

        os.environ["DELIBERATE_TEST_KEY"] = "test-key"
        recipe = load_recipe(None, sets)
        summary = build_pairs(recipe, show_progress=False)
        assert summary["pairs"] >= 8 and summary["judge_failures"] == 0
        pairs = read_jsonl(tmp_path / "out" / "pairs" / "pairs.jsonl")
        assert all(_a_count(p["chosen"][0]["content"]) - _a_count(p["rejected"][0]["content"]) >= 2 for p in pairs)
        run_dpo(recipe, show_progress=False)
        report = run_eval(recipe, show_progress=False)
    win = next(r["win_rate"] for r in report["pairwise"]
               if r["model"] == "stage:dpo" and r["benchmark"] == "all" and r["criterion"] == "helpfulness")
    assert win["value"] > 0.5 and win["ci95"][0] > 0.5, win
