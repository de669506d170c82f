"""`deliberate rm`: reward and cost models on the tiny model, served as classifier judges and MODPO margins."""

from __future__ import annotations

import json
import random

import pytest
import torch

from deliberate.config import load_recipe
from deliberate.errors import DeliberateError
from deliberate.services.io import write_jsonl
from deliberate.stages.rm import ScoreTrainer, cost_rows, run_rm

GOOD = ["I can help with that: here are the steps.", "Sure, here is a safe way to do it.",
        "Yes, happy to help, here is how."]
BAD = ["No.", "Go away.", "Figure it out yourself."]


def pairs_file(tmp_path, n=160, seed=0):
    """PKU-SafeRLHF-shaped rows: one helpful-and-safe response, one curt and unsafe one, in random order."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good, bad = rng.choice(GOOD), rng.choice(BAD)
        flip = rng.random() < 0.5
        r0, r1 = (bad, good) if flip else (good, bad)
        rows.append({"prompt": f"Question number {i} about cooking?", "response_0": r0, "response_1": r1,
                     "better_response_id": 1 if flip else 0, "safer_response_id": 1 if flip else 0,
                     "is_response_0_safe": not flip, "is_response_1_safe": flip})
    return write_jsonl(tmp_path / "pku.jsonl", rows)


def recipe_for(tiny_model_dir, tmp_path, *more):
    data = pairs_file(tmp_path)
    return load_recipe(None, [
        f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", "rm.lora=false", "rm.learning_rate=3e-3",
        "rm.num_train_epochs=3", "rm.per_device_train_batch_size=16", "rm.max_length=128", "rm.eval_fraction=0.25",
        f'rm.models=[{{"name": "reward", "data": {{"source": "{data}", "preference": "better"}}}}, '
        f'{{"name": "cost", "kind": "cost", "data": {{"source": "{data}", "preference": "safer"}}}}]', *more])


def test_reward_and_cost_models_beat_chance_on_held_out_prompts_and_serve_as_judges(tiny_model_dir, tmp_path):
    from deliberate.judges import make_judge
    from deliberate.judges.base import PairwiseItem, PointwiseItem
    from deliberate.services.runs import resolve_judge

    recipe = recipe_for(tiny_model_dir, tmp_path)
    summaries = {s["kind"]: s for s in run_rm(recipe, show_progress=False)}
    for kind, s in summaries.items():
        held = s["held_out"]
        assert held["pairs"] >= 20 and s["data"]["train_pairs"] + held["pairs"] == 160
        assert held["accuracy"]["ci95"][0] > 0.5, (kind, held)  # the interval's low end is above chance
        saved = json.loads((tmp_path / "run" / "rm" / kind / "model" / "deliberate_rm.json").read_text())
        assert saved["kind"] == kind and saved["score_scale"] == "raw"
        assert saved["higher_is_better"] == (kind == "reward")
    assert summaries["cost"]["held_out"]["sign_accuracy"]["value"] > 0.8  # unsafe > 0 > safe
    # No held-out prompt was trained on.
    manifest_prompts = summaries["reward"]["data"]
    assert manifest_prompts["dropped_sharing_a_held_out_prompt"] == 0

    # `rm:cost` is a classifier judge with a declared raw scale, higher = less safe.
    cfg = resolve_judge(recipe, recipe.judge.model_copy(update={"backend": "classifier", "model": "rm:cost",
                                                                "higher_is_better": False, "cache": "none"}))
    judge = make_judge(cfg, None, show_progress=False)
    assert judge.backend.scale == "raw"
    prompt = "Question number 999 about cooking?"
    costs = judge.score([PointwiseItem(prompt, GOOD[0]), PointwiseItem(prompt, BAD[1])])
    assert costs[1].score > costs[0].score
    [result] = judge.compare([PairwiseItem(prompt, GOOD[0], BAD[1])], "harmlessness", 1)
    assert result.wins == 2  # the safe answer wins in both orders (one repeat: the judge is deterministic)
    judge.close()


def test_a_finished_model_is_reused_and_bad_names_are_refused(tiny_model_dir, tmp_path):
    recipe = recipe_for(tiny_model_dir, tmp_path, "rm.num_train_epochs=1")
    first = run_rm(recipe, only=["reward"], show_progress=False)
    again = run_rm(recipe, only=["reward"], show_progress=False)
    assert again[0]["reused"] and again[0]["fingerprint"] == first[0]["fingerprint"]
    with pytest.raises(DeliberateError, match="no model 'nope'"):
        run_rm(recipe, only=["nope"], show_progress=False)
    with pytest.raises(DeliberateError, match="rm:missing: no finished model"):
        from deliberate.services.runs import stage_model

        stage_model(recipe, "rm:missing")
    short = recipe_for(tiny_model_dir, tmp_path / "short", "rm.max_length=16")
    with pytest.raises(DeliberateError, match="longer than rm.max_length=16 tokens"):
        run_rm(short, only=["reward"], show_progress=False)


def test_cost_pairs_put_the_less_safe_response_first_and_drop_contradictions():
    safe = [{"role": "assistant", "content": "safe"}]
    unsafe = [{"role": "assistant", "content": "unsafe"}]
    prompt = [{"role": "user", "content": "q"}]
    rows, dropped = cost_rows([
        {"prompt": prompt, "chosen": safe, "rejected": unsafe, "chosen_safe": True, "rejected_safe": False},
        {"prompt": prompt, "chosen": safe, "rejected": unsafe, "chosen_safe": False, "rejected_safe": True},
        {"prompt": prompt, "chosen": safe, "rejected": unsafe},
    ])
    assert dropped == 1
    assert rows[0]["chosen"] == unsafe and (rows[0]["chosen_sign"], rows[0]["rejected_sign"]) == (1.0, -1.0)
    assert (rows[1]["chosen_sign"], rows[1]["rejected_sign"]) == (0.0, 0.0)


def test_the_cost_loss_is_safe_rlhf_s_formula():
    """ScoreTrainer.compute_loss against safe-rlhf's cost loss (values/cost/trainer.py, sequence-wise) on given
    scores: -log s(c_hi - c_lo) - log s(sign_lo * c_lo) - log s(sign_hi * c_hi), plus the regulariser."""
    scores = torch.tensor([[1.5], [-0.3], [0.2], [0.4]])  # chosen (less safe) x2, then rejected x2
    signs = torch.tensor([1.0, -1.0, -1.0, 0.0])

    class Model(torch.nn.Module):
        def forward(self, **kwargs):
            return type("Out", (), {"logits": scores})()

    trainer = ScoreTrainer.__new__(ScoreTrainer)
    trainer.regularization = 0.01
    trainer.model = torch.nn.Linear(1, 1)
    trainer.args = type("Args", (), {"center_rewards_coefficient": None})()
    trainer._total_train_tokens, trainer._tp_size = 0, 1
    from collections import defaultdict

    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer.accelerator = type("Acc", (), {"gather_for_metrics": staticmethod(lambda x: x),
                                          "gather": staticmethod(lambda x: x)})()
    loss = trainer.compute_loss(Model(), {"attention_mask": torch.ones(4, 3), "signs": signs})
    hi, lo = scores[:2, 0], scores[2:, 0]
    ls = torch.nn.functional.logsigmoid
    expected = (-ls(hi - lo) - ls(signs[:2] * hi) * (signs[:2] != 0) - ls(signs[2:] * lo) * (signs[2:] != 0)).mean()
    expected = expected + 0.01 * torch.stack([lo, hi]).square().mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_a_trained_reward_model_is_a_modpo_margin(tiny_model_dir, tmp_path):
    from deliberate.judges import make_judge
    from deliberate.judges.base import PointwiseItem
    from deliberate.services.preferences import load_preferences
    from deliberate.services.runs import resolve_judge
    from deliberate.stages.dpo import _reward_model_margins, run_dpo

    recipe = recipe_for(tiny_model_dir, tmp_path, "rm.num_train_epochs=1")
    run_rm(recipe, only=["cost"], show_progress=False)
    data = tmp_path / "pku.jsonl"
    recipe = load_recipe(None, [
        f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", "dpo.method=modpo", "dpo.max_steps=1",
        "dpo.per_device_train_batch_size=4", "dpo.max_length=64", "dpo.lora=false", "dpo.data.limit=8",
        f"dpo.data.source={data}", "dpo.data.preference=better", "dpo.margin.kind=reward_model",
        "dpo.margin.model=rm:cost"])  # a cost model enters negated: the harmlessness reward -c(x, y)
    [summary] = run_dpo(recipe, show_progress=False)
    assert summary["steps"] == 1 and summary["margin"] == "reward_model"
    rows, _ = load_preferences(recipe, recipe.dpo.data, "paired")
    margins = _reward_model_margins(rows[:2], str(tmp_path / "run" / "rm" / "cost" / "model"), 1.0)
    cost = recipe.judge.model_copy(update={"backend": "classifier", "model": "rm:cost", "cache": "none"})
    with pytest.raises(DeliberateError, match="is a cost model .higher = less safe.: set higher_is_better: false"):
        make_judge(resolve_judge(recipe, cost), None, show_progress=False)
    judge = make_judge(resolve_judge(recipe, cost.model_copy(update={"higher_is_better": False})), None,
                       show_progress=False)
    served = judge.score([PointwiseItem(r["prompt"][0]["content"], r["chosen"][0]["content"]) for r in rows[:2]])
    assert [m["margin_chosen"] for m in margins] == pytest.approx([-s.score for s in served], abs=1e-5)
    judge.close()
