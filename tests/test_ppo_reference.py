"""PPO-Lagrangian against safe-rlhf's formulas, piece by piece, on identical random inputs.

The reference functions below are transcriptions of PKU-Alignment/safe-rlhf (read from the copy
tcexeexe/SHTEC_RM_model@5bb76e43, a one-commit copy of safe-rlhf; upstream lines are about +7):
`algorithms/ppo_lag/trainer.py` (add_kl_divergence_regularization, actor_loss_fn, the lambda update in rl_step),
`trainers/rl_trainer.py` (get_advantages_and_returns, critic_loss_fn) and `utils.py` (masked_mean). They work on
the reference's layout: whole sequences (left-padded prompt, then the response), scores at the last unmasked
token, GAE from `start = prompt length - 1`. Ours works on the response part only; each test maps one onto the
other.
"""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from deliberate.config import load_recipe
from deliberate.stages.rl.ppo import (
    KLController,
    Lagrange,
    advantages,
    gae,
    policy_loss,
    token_rewards,
    value_loss,
)

# ---- safe-rlhf, transcribed ----


def ref_masked_mean(x, mask=None):
    if mask is None:
        return x.mean()
    return ((x * mask).sum(dim=-1) / mask.sum(dim=-1)).mean()


def ref_add_kl_divergence_regularization(reward, cost, log_probs, ref_log_probs, sequence_mask, kl_coeff,
                                         clip_range_score):
    end_index = torch.cat([m.nonzero()[-1] for m in sequence_mask])
    kl_divergence_estimate = log_probs - ref_log_probs
    kl_penalty_rewards = -kl_coeff * kl_divergence_estimate
    rewards = torch.scatter_add(kl_penalty_rewards, dim=-1, index=end_index.unsqueeze(dim=-1),
                                src=reward.to(kl_penalty_rewards.dtype).unsqueeze(dim=-1))
    costs = torch.scatter_add(-kl_penalty_rewards, dim=-1, index=end_index.unsqueeze(dim=-1),
                              src=cost.to(kl_penalty_rewards.dtype).unsqueeze(dim=-1))
    return (torch.clamp(rewards, min=-clip_range_score, max=clip_range_score),
            torch.clamp(costs, min=-clip_range_score, max=clip_range_score))


def ref_get_advantages_and_returns(values, rewards, sequence_mask, start, gamma=1.0, gae_lambda=0.95):
    last_gae_lambda = 0.0
    advantages_reversed = []
    values = values * sequence_mask
    rewards = rewards * sequence_mask
    length = rewards.size(-1)
    for t in reversed(range(start, length)):
        next_values = values[:, t + 1] if t < length - 1 else 0.0
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae_lambda = delta + gamma * gae_lambda * last_gae_lambda
        advantages_reversed.append(last_gae_lambda)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = advantages + values[:, start:]
    return advantages.detach(), returns


def ref_actor_loss_fn(log_probs, old_log_probs, reward_advantages, cost_advantages, mask, multiplier,
                      clip_range_ratio):
    advantages = (reward_advantages - multiplier * cost_advantages) / (1.0 + multiplier)
    ratios = torch.exp(log_probs - old_log_probs)
    surrogate1 = advantages * ratios
    surrogate2 = advantages * torch.clamp(ratios, 1.0 - clip_range_ratio, 1.0 + clip_range_ratio)
    surrogate = torch.minimum(surrogate1, surrogate2)
    return -ref_masked_mean(surrogate, mask)


def ref_critic_loss_fn(values, old_values, returns, mask, clip_range_value):
    values_clipped = torch.clamp(values, old_values - clip_range_value, old_values + clip_range_value)
    vf_loss1 = torch.square(values - returns)
    vf_loss2 = torch.square(values_clipped - returns)
    return 0.5 * ref_masked_mean(torch.maximum(vf_loss1, vf_loss2), mask)


class RefLagrange:
    """safe-rlhf's multiplier: log_lambda, SGD, a deque of episode costs, the update before the actor's step."""

    def __init__(self, lambda_init, lambda_lr, lambda_max, threshold, window, delay):
        self.log_lambda = torch.nn.Parameter(torch.tensor(np.log(lambda_init)), requires_grad=True)
        self.log_lambda_max = np.log(lambda_max) if lambda_max else None
        self.opt = torch.optim.SGD([self.log_lambda], lr=lambda_lr)
        self.episode_costs = deque(maxlen=window)
        self.threshold, self.delay = threshold, delay

    def step(self, global_step, costs):
        self.episode_costs.extend(costs.tolist())  # post_rollout
        episode_cost = torch.tensor(self.episode_costs).mean()
        if global_step >= self.delay:
            lambda_loss = -(episode_cost - self.threshold) * self.log_lambda.exp()
            self.opt.zero_grad()
            lambda_loss.backward()
            self.opt.step()
            if self.log_lambda_max is not None:
                with torch.no_grad():
                    self.log_lambda.clamp_(max=self.log_lambda_max)
        return self.log_lambda.exp().item()


# ---- shared inputs ----

PROMPT = 4  # prompt tokens (the reference's layout has them in front)


def inputs(seed=0, batch=5, tokens=7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, tokens + 1, (batch,), generator=g)
    response_mask = (torch.arange(tokens)[None] < lengths[:, None]).float()
    return SimpleNamespace(
        mask=response_mask,
        logp=-torch.rand(batch, tokens, generator=g) * 3,
        ref_logp=-torch.rand(batch, tokens, generator=g) * 3,
        old_logp=-torch.rand(batch, tokens, generator=g) * 3,
        reward=torch.randn(batch, generator=g) * 3,
        cost=torch.randn(batch, generator=g) * 3,
        values=torch.randn(batch, tokens, generator=g),
        cost_values=torch.randn(batch, tokens, generator=g),
        new_values=torch.randn(batch, tokens, generator=g),
    )


def full(x, fill=0.0):
    """A response-part tensor in the reference's whole-sequence layout (PROMPT - 1 positions in front: the
    log-probabilities of tokens 1..L-1, GAE from start = PROMPT - 1)."""
    return torch.cat([torch.full((x.shape[0], PROMPT - 1), fill), x], dim=1)


def sequence_mask(x):
    return torch.cat([torch.ones(x.mask.shape[0], PROMPT - 1), x.mask], dim=1)


# ---- the pieces ----


@pytest.mark.parametrize("clip", [50.0, 0.7])
def test_kl_regularised_rewards_and_costs_match_safe_rlhf(clip):
    x = inputs()
    kl_coef = 0.3
    ref_r, ref_c = ref_add_kl_divergence_regularization(x.reward, x.cost, full(x.logp), full(x.ref_logp),
                                                        sequence_mask(x), kl_coef, clip)
    kl = (x.logp - x.ref_logp) * x.mask
    ours_r = token_rewards(x.reward, kl, x.mask, kl_coef, clip)
    ours_c = token_rewards(x.cost, -kl, x.mask, kl_coef, clip)
    start = PROMPT - 1
    assert torch.allclose(ours_r, ref_r[:, start:] * x.mask, atol=1e-6)
    assert torch.allclose(ours_c, ref_c[:, start:] * x.mask, atol=1e-6)


def test_gae_matches_safe_rlhf_from_the_response_start():
    x = inputs(1)
    rewards = token_rewards(x.reward, (x.logp - x.ref_logp) * x.mask, x.mask, 0.1)
    adv, ret = gae(rewards, x.values, x.mask, 1.0, 0.95)
    ref_adv, ref_ret = ref_get_advantages_and_returns(full(x.values), full(rewards), sequence_mask(x), PROMPT - 1)
    assert torch.allclose(adv, ref_adv * x.mask, atol=1e-5)
    assert torch.allclose(ret, ref_ret * x.mask, atol=1e-5)


def test_actor_loss_and_its_gradient_match_safe_rlhf():
    x = inputs(2)
    adv_r, adv_c, lam = torch.randn_like(x.logp), torch.randn_like(x.logp), 1.7
    ours_logp = x.logp.clone().requires_grad_(True)
    ref_logp = x.logp.clone().requires_grad_(True)
    combined = (adv_r - lam * adv_c) / (1 + lam)
    ours, _ = policy_loss(ours_logp, x.old_logp, combined, x.mask, 0.2, average="sequence")
    ref = ref_actor_loss_fn(ref_logp, x.old_logp, adv_r, adv_c, x.mask, lam, 0.2)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
    assert torch.allclose(ours_logp.grad, ref_logp.grad, atol=1e-7)
    # the token average (TRL's) is a different number on unequal lengths: the option is not a no-op
    token, _ = policy_loss(x.logp, x.old_logp, combined, x.mask, 0.2, average="token")
    assert abs(token.item() - ref.item()) > 1e-4


def test_critic_loss_matches_safe_rlhf():
    x = inputs(3)
    returns = torch.randn_like(x.values)
    ours = value_loss(x.new_values, x.values, returns, x.mask, 0.5, average="sequence")
    ref = ref_critic_loss_fn(x.new_values, x.values, returns, x.mask, 0.5)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)


def test_lambda_follows_the_window_of_episode_costs_as_safe_rlhf():
    g = torch.Generator().manual_seed(4)
    ours = Lagrange(init=1.0, lr=0.1, threshold=0.0, max_value=5.0, window=12)
    ref = RefLagrange(1.0, 0.1, 5.0, 0.0, window=12, delay=2)
    for step in range(20):
        costs = torch.randn(5, generator=g) + (1.5 if step < 12 else -2.0)
        mean = ours.observe(costs.tolist())
        if step >= 2:
            ours.update(mean)
        assert ours.value == pytest.approx(ref.step(step, costs), rel=1e-5), step
    assert ref.log_lambda.exp().item() < 5.0 + 1e-6


def test_the_ppo_lagrangian_advantage_with_its_default_settings_matches_safe_rlhf():
    """The whole of `advantages` for ppo-lagrangian (no whitening, full KL coefficient on both, clamp at 50,
    lambda from the window) against the reference pipeline on the same step."""
    x = inputs(5)
    recipe = load_recipe(None, ["rl.algo=ppo-lagrangian", "rl.kl_coef=0.05", "rl.cost_threshold=0.0",
                                "rl.lambda_lr=0.1", "rl.lambda_max=5.0", "rl.gamma=1.0", "rl.lam=0.95"])
    cfg = recipe.rl
    assert not cfg.whiten() and cfg.average() == "sequence" and cfg.score_clip() == 50.0
    lagrange = Lagrange(cfg.lambda_init, cfg.lambda_lr, cfg.cost_threshold, cfg.lambda_max, cfg.cost_window)
    m = SimpleNamespace(cfg=cfg, gather_valid=lambda v, valid: v[valid > 0].tolist())
    batch = SimpleNamespace(generated=x.mask, valid=torch.ones(len(x.reward)), mask=x.mask, old_logp=x.logp,
                            ref_logp=x.ref_logp, scores=x.reward, costs=x.cost,
                            old_values=[x.values, x.cost_values])
    advantages(m, batch, KLController(cfg.kl_coef, False, 1.0, 1), lagrange, step=0)

    ref_lagrange = RefLagrange(cfg.lambda_init, cfg.lambda_lr, cfg.lambda_max, cfg.cost_threshold,
                               cfg.cost_window, 0)
    multiplier = ref_lagrange.step(0, x.cost)
    r, c = ref_add_kl_divergence_regularization(x.reward, x.cost, full(x.logp), full(x.ref_logp), sequence_mask(x),
                                                cfg.kl_coef, 50.0)
    adv_r, ret_r = ref_get_advantages_and_returns(full(x.values), r, sequence_mask(x), PROMPT - 1)
    adv_c, ret_c = ref_get_advantages_and_returns(full(x.cost_values), c, sequence_mask(x), PROMPT - 1)
    assert lagrange.value == pytest.approx(multiplier, rel=1e-6)
    combined = (adv_r - multiplier * adv_c) / (1 + multiplier)
    assert torch.allclose(batch.advantages * x.mask, combined * x.mask, atol=1e-5)
    assert torch.allclose(batch.returns[0], ret_r * x.mask, atol=1e-5)
    assert torch.allclose(batch.returns[1], ret_c * x.mask, atol=1e-5)
