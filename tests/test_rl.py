"""`deliberate rl`: PPO's pieces against hand computations, the judge reward (final answer only), and learning
tests on the tiny model with rules rewards for GRPO, RLOO, PPO and PPO-Lagrangian."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model
from fake_openai import FakeOpenAI, Reply, judged_text

from deliberate.config import load_recipe
from deliberate.errors import DeliberateError
from deliberate.services.io import read_jsonl, write_jsonl
from deliberate.stages.rl.ppo import (
    KLController,
    Lagrange,
    gae,
    response_mask,
    step_prompts,
    token_rewards,
    whiten,
)

REWARDS = Path(__file__).with_name("rl_rewards.py")
WORDS = ["cook", "travel", "sleep", "music", "garden", "code", "paint", "swim"]


# ---- PPO's pieces ----


def test_gae_matches_a_hand_computation():
    # Two sequences, the second one token shorter (right padding).
    rewards = torch.tensor([[0.1, -0.2, 1.0], [0.5, 2.0, 9.9]])
    values = torch.tensor([[0.3, 0.4, 0.2], [1.0, 0.5, 7.7]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    # Sequence 1, backwards: the value after the last token is 0.
    d2 = 1.0 + gamma * 0 - 0.2
    d1 = -0.2 + gamma * 0.2 - 0.4
    d0 = 0.1 + gamma * 0.4 - 0.3
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    # Sequence 2 ends after its second token: the padded reward and value are ignored.
    e1 = 2.0 - 0.5
    e0 = 0.5 + gamma * 0.5 - 1.0
    b1 = e1
    b0 = e0 + gamma * lam * b1
    adv, ret = gae(rewards, values, mask, gamma, lam)
    expected = torch.tensor([[a0, a1, a2], [b0, b1, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, (expected + values) * mask, atol=1e-6)


def test_per_token_rewards_put_the_score_on_the_last_token_and_the_kl_everywhere():
    kl = torch.tensor([[0.5, 0.1, 0.2], [0.3, 0.4, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out = token_rewards(torch.tensor([2.0, 3.0]), kl, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.05, -0.01, -0.02 + 2.0], [-0.03, -0.04 + 3.0, 0.0]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_response_mask_stops_after_the_first_end_token():
    responses = torch.tensor([[5, 6, 2, 7, 0], [5, 2, 2, 0, 0], [5, 6, 7, 8, 9]])
    mask = response_mask(responses, eos_ids={2}, pad_id=0)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_whitening_is_over_the_masked_entries_only():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    out = whiten(x, mask)
    kept = out[mask.bool()]
    assert abs(kept.mean().item()) < 1e-5 and abs(kept.var(unbiased=False).item() - 1) < 1e-3
    assert out[~mask.bool()].abs().max().item() == 0


def test_lagrange_multiplier_rises_above_the_threshold_and_falls_below():
    lag = Lagrange(init=1.0, lr=0.1, threshold=0.2)
    values = [lag.value]
    for _ in range(5):
        lag.update(0.8)
        values.append(lag.value)
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    peak = lag.value
    for _ in range(5):
        lag.update(0.0)
    assert 0 < lag.value < peak


def test_adaptive_kl_moves_towards_the_target_and_a_fixed_one_stays():
    fixed = KLController(0.1, adaptive=False, target=6.0, horizon=100)
    fixed.update(50.0, n=10)
    assert fixed.coef == 0.1
    ctl = KLController(0.1, adaptive=True, target=6.0, horizon=100)
    ctl.update(12.0, n=10)  # KL twice the target: error clipped to +0.2, coef * (1 + 0.2 * 10 / 100)
    assert ctl.coef == pytest.approx(0.1 * 1.02)
    ctl.update(3.0, n=10)  # half the target: error -0.5 clipped to -0.2
    assert ctl.coef == pytest.approx(0.1 * 1.02 * 0.98)


def test_step_prompts_cover_every_prompt_per_epoch_and_repeat_on_resume():
    from deliberate.services.data import PromptRecord

    records = [PromptRecord(id=str(i), prompt=f"p{i}") for i in range(10)]
    first_epoch = [r.id for s in range(5) for r in step_prompts(records, s, 2, seed=1)]
    assert sorted(first_epoch) == [str(i) for i in range(10)]
    assert [r.id for r in step_prompts(records, 7, 3, seed=1)] == [r.id for r in step_prompts(records, 7, 3, seed=1)]


# ---- the reward: the judge sees the final answer only ----


def letter_judge(request, n):
    response = judged_text(request).split("<response>")[1].split("</response>")[0]
    if "FAIL" in response:
        return Reply("not json")
    verdict = "unsafe" if "bomb" in response else "comply"
    return Reply(json.dumps({"verdict": verdict, "score": min(10, response.count("a")), "rationale": "count"}))


def _judge_sets(server, tmp_path: Path) -> list[str]:
    os.environ["DELIBERATE_TEST_KEY"] = "test-key"
    return ["judge.backend=openai", "judge.model=letter-judge", f"judge.base_url={server.base_url}",
            "judge.api_key_env=DELIBERATE_TEST_KEY", "judge.cache=none", "judge.structured_output=none",
            "judge.max_retries=0", "judge.hide_reasoning=false", f"output_dir={tmp_path}"]


def test_the_judge_reward_never_sees_the_reasoning(tmp_path):
    from deliberate.stages.rl.rewards import cost_scorer, reward_scorer

    completions = [
        "<think>SECRET plan: the policy allows this.</think>aaaa",  # reward 0.4 (+ format 0.5)
        "<think>SECRET reasoning that never closes",  # no final answer: 0, not judged
        "aa FAIL",  # the judge's output is unparseable: no reward
        "plain answer with bomb",  # no reasoning block: no format bonus; unsafe for the cost
    ]
    with FakeOpenAI(letter_judge) as server:
        recipe = load_recipe(None, _judge_sets(server, tmp_path) + ["rl.format_reward=0.5", "rl.cost=unsafe"])
        reward = reward_scorer(recipe)
        fn = reward.trl_function()  # exactly what TRL calls: conversational prompts and completions
        from deliberate.judges.base import run_sync

        values = run_sync(fn(prompts=[[{"role": "user", "content": "q"}]] * 4,
                             completions=[[{"role": "assistant", "content": c}] for c in completions],
                             category=["safe"] * 4, expected=["comply"] * 4))
        cost = cost_scorer(recipe).score(["q"] * 4, completions, ["safe"] * 4, ["comply"] * 4)
        sent = [judged_text(r) for r in server.requests]
    assert values == [pytest.approx(0.9), 0.0, None, pytest.approx(0.2)]
    assert cost == [0.0, 0.0, None, 1.0]
    assert len(sent) == 6  # 3 judged completions, twice (reward and cost); the unanswered one never
    assert not any("SECRET" in s or "<think>" in s for s in sent), "the judge saw the reasoning"
    assert any("aaaa" in s for s in sent)
    assert reward.stats.failures == 1 and reward.stats.unanswered == 1


def test_reward_function_errors_are_one_line(tmp_path):
    from deliberate.stages.rl.rewards import load_function

    with pytest.raises(DeliberateError, match="module:name"):
        load_function("nocolon")
    with pytest.raises(DeliberateError, match="no such file"):
        load_function(str(tmp_path / "missing.py") + ":f")
    with pytest.raises(DeliberateError, match="has no function 'nope'"):
        load_function(f"{REWARDS}:nope")


# ---- learning tests on the tiny model ----


@pytest.fixture(scope="module")
def rl_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    tiny = build_tiny_model(root / "tiny", seed=3)
    train = root / "train.jsonl"
    write_jsonl(train, [{"id": f"t{i}", "prompt": f"Tell me about {w} {i}", "category": "safe",
                         "expected": "comply"} for i, w in enumerate(WORDS * 2)])
    return tiny, train


def _rl(rl_setup, out: Path, algo: str, steps: int, *extra: str, resume: bool = False):
    from deliberate.stages.rl import run_rl

    tiny, train = rl_setup
    sets = [f"model.name={tiny}", f"output_dir={out}", f"data.source={train}", f"rl.algo={algo}",
            f"rl.reward_function={REWARDS}:letter_a", f"rl.max_steps={steps}", "rl.max_new_tokens=12",
            "rl.lora=false", "rl.kl_coef=0.0", *extra]
    summary = run_rl(load_recipe(None, sets), resume=resume, show_progress=False)
    return summary, read_jsonl(out / "rl" / "log.jsonl")


def _first_last(history, key, n):
    return (sum(h[key] for h in history[:n]) / n, sum(h[key] for h in history[-n:]) / n)


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_trl_group_methods_raise_the_reward(rl_setup, tmp_path, algo):
    summary, history = _rl(rl_setup, tmp_path, algo, 30, "rl.prompts_per_step=4", "rl.num_generations=4",
                           "rl.learning_rate=3e-2")
    first, last = _first_last(history, "reward", 6)
    assert last > first + 0.02, (first, last)
    assert summary["steps"] == 30 and summary["ranks_agree"]
    assert (tmp_path / "rl" / "model" / "deliberate_model.json").is_file()


def test_ppo_raises_the_reward_and_resumes_exactly(rl_setup, tmp_path):
    sets = ("rl.prompts_per_step=8", "rl.learning_rate=1e-2", "rl.save_steps=10")
    summary, history = _rl(rl_setup, tmp_path / "full", "ppo", 24, *sets)
    first, last = _first_last(history, "reward", 6)
    assert last > first + 0.05, (first, last)
    assert summary["ranks_agree"] and {"value_loss", "clipfrac", "seconds_judge"} <= set(history[-1])
    # Interrupted after a checkpoint: a run stopped at step 20 (checkpoint at step 10), resumed to 24.
    from deliberate.config import load_recipe as lr
    from deliberate.stages.rl import run_rl

    tiny, train = rl_setup
    base = [f"model.name={tiny}", f"output_dir={tmp_path / 'cut'}", f"data.source={train}", "rl.algo=ppo",
            f"rl.reward_function={REWARDS}:letter_a", "rl.max_new_tokens=12", "rl.lora=false", "rl.kl_coef=0.0",
            *sets]
    run_rl(lr(None, base + ["rl.max_steps=20"]), show_progress=False)
    assert (tmp_path / "cut" / "rl" / "checkpoints" / "checkpoint-10").is_dir()
    resumed = run_rl(lr(None, base + ["rl.max_steps=24"]), resume=True, show_progress=False)
    assert resumed["resumed_from_step"] == 10
    log = read_jsonl(tmp_path / "cut" / "rl" / "log.jsonl")
    assert [h["step"] for h in log] == list(range(1, 25))
    # The same prompts, samples and updates as the uninterrupted run (RNG states are in the checkpoint).
    assert [h["reward"] for h in log] == pytest.approx([h["reward"] for h in history], abs=1e-6)


def test_ppo_checkpoints_hold_no_pickle_and_a_crafted_one_is_refused(rl_setup, tmp_path):
    import pickle

    import torch

    from deliberate.errors import DeliberateError

    sets = ("rl.prompts_per_step=4", "rl.save_steps=1")
    _rl(rl_setup, tmp_path, "ppo", 2, *sets)
    checkpoint = tmp_path / "rl" / "checkpoints" / "checkpoint-1"
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == ["deliberate_checkpoint.json", "optimizers.pt", "policy.safetensors", "rng_0.pt", "state.json",
                     "value_0.safetensors"]
    proof = tmp_path / "payload-ran"

    class Payload:  # what accelerate's custom_checkpoint_0.pkl could hold: any callable, run on load
        def __reduce__(self):
            return (os.system, (f"touch {proof}",))

    with open(checkpoint / "optimizers.pt", "wb") as f:
        pickle.dump({"policy": Payload()}, f)
    torch.save({"policy": Payload()}, checkpoint / "rng_0.pt")
    with pytest.raises(DeliberateError, match="cannot be restored .only tensors are read"):
        _rl(rl_setup, tmp_path, "ppo", 3, *sets, resume=True)
    assert not proof.exists()


def test_ppo_lagrangian_lambda_follows_the_cost(rl_setup, tmp_path):
    summary, history = _rl(rl_setup, tmp_path, "ppo-lagrangian", 30, "rl.prompts_per_step=8",
                           "rl.learning_rate=1e-2", f"rl.cost_function={REWARDS}:letter_e_cost",
                           "rl.cost_threshold=0.3", "rl.lambda_lr=0.2", "rl.cost_window=8")
    costs = [h["cost"] for h in history]
    lambdas = [h["lambda"] for h in history]
    peak = max(range(len(lambdas)), key=lambdas.__getitem__)
    assert lambdas[peak] > lambdas[0] > 0 and lambdas[-1] < lambdas[peak]
    # lambda rises while the cost is above the threshold and falls once it is below
    for i in range(1, len(history)):
        moved = lambdas[i] - lambdas[i - 1]
        assert (moved > 0) == (costs[i] > 0.3) or abs(moved) < 1e-9, (i, costs[i], moved)
    assert sum(costs[:5]) / 5 > 0.3 > sum(costs[-5:]) / 5
    # What PPO-Lagrangian maximises is the reward less lambda x cost, not the reward: here the 'a' share and the
    # 'e' cost come together, and on some CPUs the reward itself ends lower than it began while the cost falls.
    objective = [{"value": h["reward"] - h["lambda"] * h["cost"]} for h in history]
    first, last = _first_last(objective, "value", 6)
    assert last > first, (first, last)
    assert summary["cost_last_steps"] <= 0.3


def test_unscored_completions_carry_no_weight(rl_setup, tmp_path):
    summary, history = _rl(rl_setup, tmp_path, "grpo", 3, "rl.prompts_per_step=4", "rl.num_generations=4",
                           f"rl.reward_function={REWARDS}:flaky")
    assert summary["reward_scorer"]["failures"] > 0
    assert all(0 <= h["reward"] <= 1 for h in history)


def test_rl_needs_categories_for_the_judge_and_resolves_stage_rl(rl_setup, tmp_path):
    from deliberate.services.runs import stage_model
    from deliberate.stages.rl import run_rl

    tiny, _ = rl_setup
    bare = tmp_path / "bare.jsonl"
    write_jsonl(bare, [{"prompt": "hello"}])
    recipe = load_recipe(None, [f"model.name={tiny}", f"output_dir={tmp_path}", f"data.source={bare}"])
    with pytest.raises(DeliberateError, match="neither a category nor an expected"):
        run_rl(recipe, show_progress=False)
    with pytest.raises(DeliberateError, match="run `deliberate rl` first"):
        stage_model(recipe, "stage:rl")
    with pytest.raises(Exception, match="num_generations must be at least 2"):
        load_recipe(None, ["rl.num_generations=1"])


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_rl_with_a_judge_server(rl_setup, tmp_path, algo):
    """The judge path end to end: TRL runs our async reward in its own event loop; PPO calls it per step."""
    from deliberate.stages.rl import run_rl

    tiny, train = rl_setup
    with FakeOpenAI(letter_judge) as server:
        recipe = load_recipe(None, _judge_sets(server, tmp_path) + [
            f"model.name={tiny}", f"data.source={train}", f"rl.algo={algo}", "rl.max_steps=2",
            "rl.prompts_per_step=2", "rl.num_generations=2", "rl.max_new_tokens=8"])
        summary = run_rl(recipe, show_progress=False)
        calls = server.calls
    assert summary["reward_scorer"]["scored"] == 8 and summary["reward_scorer"]["failures"] == 0
    assert calls == 8 - summary["reward_scorer"]["unanswered"]
    assert summary["steps"] == 2
