"""PPO with a value model, and PPO-Lagrangian (Safe RLHF), written once on transformers + accelerate.

TRL no longer has PPO, so this is ours. One step (`ppo_step`, over one `Rollout` batch):

1. **`rollout`**: sample `num_generations` completions for each of the step's prompts from the policy.
2. **`score`**: the reward scorer (and, for PPO-Lagrangian, the cost scorer) rate each completion (`rewards.py`:
   the judge sees the final answer only). A completion with no score keeps its place in the batch (so every
   process runs the same number of updates) but carries no weight.
3. **`logprob_pass`**: log-probabilities of the sampling policy and of the reference, and the values.
4. **`advantages`**: per-token rewards, -kl_coef * (log pi - log pi_ref) on every token, plus the score on the last one,
   each token clamped to [-clip_range_score, clip_range_score] when set. PPO-Lagrangian follows safe-rlhf's
   `ppo_lag` trainer formula by formula (`recipes/safe-rlhf.yaml` names the commit read): the cost sequence is
   +kl_coef * (log pi - log pi_ref) per token (the full coefficient, opposite sign) plus the cost on the last
   token, clamped the same way.
   **Generalised advantage estimation** (`gae`) against the value model's predictions (a second value model
   for the cost); advantages whitened over the step's tokens for `ppo` (as TRL), not for `ppo-lagrangian` (as
   safe-rlhf), unless `whiten_advantages` says otherwise.
   **PPO-Lagrangian**: this step's costs join a window of the last `cost_window` costs; the multiplier
   lambda = exp(log_lambda) takes an SGD step on -(window mean cost - threshold) * lambda (so it rises while the
   mean cost is above the threshold and falls below it), is clamped to `lambda_max`, and the updated lambda
   gives the policy's advantage (A_reward - lambda * A_cost) / (1 + lambda).
5. **`update`**: `ppo_epochs` passes over the step's completions in mini-batches: the clipped policy loss on the ratio
   pi / pi_old, and the clipped value loss, each with its own AdamW optimiser and learning-rate schedule; the
   losses average over tokens (`ppo`) or per sequence then over sequences (`ppo-lagrangian`, safe-rlhf's
   masked_mean), as `loss_average` says.
6. The KL coefficient stays fixed or follows Ziegler et al.'s adaptive controller.

The reference is the starting model: the adapter-disabled policy with LoRA, a frozen copy otherwise. The value
model is the starting model's transformer body with a scalar head (LoRA on the body with LoRA). Checkpoints
(models as safetensors, optimiser tensors read back with `weights_only=True`, the controller, lambda and history
as JSON; never an arbitrary pickle) let `--resume` continue the same run where it stopped; the prompts of step k
are the same on a resumed run.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import get_peft_model
from safetensors.torch import load_model, save_model
from torch import nn
from trl.trainer.utils import disable_dropout_in_model

from deliberate.config import Recipe, RLOptions
from deliberate.errors import DeliberateError
from deliberate.judges.base import run_sync
from deliberate.services.data import PromptRecord
from deliberate.services.io import write_json, write_jsonl
from deliberate.services.progress import progress_bar
from deliberate.services.runs import CHECKPOINT_MARKER, ModelRun, checkpoints, mark_checkpoint
from deliberate.services.training import (
    gather_digests,
    load_start,
    lora_config,
    mean_or_none,
    on_cpu,
    refuse_sharded,
    run_label,
    use_bf16,
)
from deliberate.stages.rl.rewards import Scorer, score_all

# ---- the pieces, each testable on its own ----


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def loss_mean(x: torch.Tensor, mask: torch.Tensor, average: str) -> torch.Tensor:
    """A loss over (batch, tokens): the mean over every masked token (`token`, TRL), or each sequence's mean and
    then the mean over sequences (`sequence`, safe-rlhf's masked_mean); a sequence with no token counts in
    neither."""
    if average == "token":
        return masked_mean(x, mask)
    lengths = mask.sum(-1)
    present = (lengths > 0).float()
    per_sequence = (x * mask).sum(-1) / lengths.clamp(min=1)
    return (per_sequence * present).sum() / present.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to std 1 (and mean 0) over the masked entries."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (batch, tokens), right-padded with `mask` 0 after each sequence:
    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, returns = A + V.
    The value after a sequence's last token is 0 (the episode ends there)."""
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    steps = rewards.shape[1]
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float,
                  clip: float | None = None) -> torch.Tensor:
    """-kl_coef * kl on every token, plus each sequence's score on its last token, each token's value clamped
    to [-clip, clip] when `clip` is set (safe-rlhf's clip_range_score, applied after the score is added)."""
    out = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    out[torch.arange(len(scores)), last] += scores * (mask.sum(1) > 0)
    if clip is not None:
        out = out.clamp(-clip, clip) * mask
    return out


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float, average: str = "token") -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate -min(A * ratio, A * clip(ratio, 1 - e, 1 + e)), averaged by `loss_mean`."""
    ratio = torch.exp(logprobs - old_logprobs)
    losses = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))
    with torch.no_grad():
        stats = {"clipfrac": masked_mean(((ratio - 1).abs() > clip).float(), mask).item(),
                 "approx_kl": masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask).item()}
    return loss_mean(losses, mask, average), stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float, average: str = "token") -> torch.Tensor:
    """0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2), averaged by `loss_mean`."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * loss_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask, average)


class KLController:
    """A fixed KL coefficient, or Ziegler et al.'s adaptive one (towards a target KL over a horizon)."""

    def __init__(self, coef: float, adaptive: bool, target: float, horizon: int):
        self.coef, self.adaptive, self.target, self.horizon = coef, adaptive, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.adaptive:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.coef *= 1 + error * n / self.horizon


class Lagrange(nn.Module):
    """lambda = exp(log_lambda) >= 0, moved by SGD on -(J_c - threshold) * lambda, where J_c is the mean cost of
    the last `window` completions (safe-rlhf's deque of episode costs, this step's included)."""

    def __init__(self, init: float, lr: float, threshold: float, max_value: float | None = None, window: int = 128):
        super().__init__()
        self.log_lambda = nn.Parameter(torch.tensor(math.log(init)))
        self.threshold, self.max_value = threshold, max_value
        self.costs: deque[float] = deque(maxlen=window)
        self.optimizer = torch.optim.SGD([self.log_lambda], lr=lr)  # as Safe RLHF: no momentum

    @property
    def value(self) -> float:
        return self.log_lambda.exp().item()

    def observe(self, costs: list[float]) -> float:
        """Add this step's costs to the window; returns the window's mean."""
        self.costs.extend(costs)
        return sum(self.costs) / len(self.costs) if self.costs else 0.0

    def update(self, mean_cost: float) -> None:
        self.optimizer.zero_grad()
        loss = -(mean_cost - self.threshold) * self.log_lambda.exp()
        loss.backward()
        self.optimizer.step()
        if self.max_value is not None:
            with torch.no_grad():
                self.log_lambda.clamp_(max=math.log(self.max_value))


class ValueModel(nn.Module):
    """A transformer body with a scalar head: V(prefix) for every position."""

    def __init__(self, body: nn.Module, hidden_size: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask, position_ids):
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left-padded rows (as generation used them)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: int,
                      temperature: float, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(token) and the entropy at each response position (input = left-padded prompt of `context` tokens,
    then the response), with the sampling temperature applied as in generation."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
                   use_cache=False).logits[:, context - 1 : -1].float() / temperature
    logp = torch.log_softmax(logits, -1)
    chosen = logp.gather(-1, input_ids[:, context:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1) if with_entropy else None
    return chosen, entropy


def response_values(value_model, input_ids, attention_mask, context: int) -> torch.Tensor:
    """V at the position before each response token (the state the token is chosen in)."""
    return value_model(input_ids, attention_mask, positions(attention_mask))[:, context - 1 : -1].float()


def response_mask(responses: torch.Tensor, eos_ids: set[int], pad_id: int | None) -> torch.Tensor:
    """1 up to and including the first end-of-sequence token, 0 after (and on padding)."""
    is_end = torch.zeros_like(responses, dtype=torch.bool)
    for e in eos_ids:
        is_end |= responses == e
    after_end = (is_end.long().cumsum(1) - is_end.long()) > 0
    mask = ~after_end
    if pad_id is not None and pad_id not in eos_ids:
        mask &= responses != pad_id
    return mask.float()


# ---- the training loop ----


@dataclass
class PPOState:
    """What a checkpoint holds beside the models and optimisers."""

    step: int = 0
    kl_coef: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    lagrange: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "kl_coef": self.kl_coef, "history": self.history, "lagrange": self.lagrange}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.kl_coef = state["step"], state["kl_coef"]
        self.history, self.lagrange = state["history"], state["lagrange"]


CHECKPOINT_FILES = ("state.json", "optimizers.pt")


def save_checkpoint(m: PPOModels, state: PPOState, folder: Path, fp: str) -> None:
    """Everything a resumed run needs, with no pickle of arbitrary objects: the models as safetensors, the
    optimisers' and Lagrange multiplier's tensors with `torch.save` (read back with `weights_only=True`), the
    step, KL coefficient and history as JSON, each process's random state; the marker last."""
    acc = m.accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CHECKPOINT_MARKER).unlink(missing_ok=True)
        for name, model in _checkpointed_models(m):
            save_model(acc.unwrap_model(model), str(folder / f"{name}.safetensors"))
        torch.save({"policy": m.opt_policy.state_dict(), "values": [o.state_dict() for o in m.opt_values],
                    "lagrange": state.lagrange}, folder / "optimizers.pt")
        write_json(folder / "state.json", {"step": state.step, "kl_coef": state.kl_coef, "history": state.history})
    acc.wait_for_everyone()
    rng = {"python": random.getstate(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    torch.save(rng, folder / f"rng_{acc.process_index}.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        mark_checkpoint(folder, fp)


def load_checkpoint(m: PPOModels, state: PPOState, folder: Path) -> None:
    """Restore what `save_checkpoint` wrote (tensors only: `weights_only=True` refuses any other object)."""
    import pickle

    from safetensors import SafetensorError

    acc = m.accelerator
    try:
        for name, model in _checkpointed_models(m):
            load_model(acc.unwrap_model(model), str(folder / f"{name}.safetensors"), device=str(acc.device))
        saved = torch.load(folder / "optimizers.pt", map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeliberateError(f"rl --resume: {folder} cannot be restored (only tensors are read from a "
                              f"checkpoint): {first[:200]}") from None
    m.opt_policy.load_state_dict(saved["policy"])
    for opt, sd in zip(m.opt_values, saved["values"], strict=True):
        opt.load_state_dict(sd)
    info = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    state.load_state_dict({**info, "lagrange": saved["lagrange"]})
    rng_file = folder / f"rng_{acc.process_index}.pt"
    if rng_file.is_file():  # a run resumed on a different number of processes starts their streams afresh
        rng = torch.load(rng_file, weights_only=True)
        random.setstate(_as_tuple(rng["python"]))
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def _checkpointed_models(m: PPOModels) -> list[tuple[str, Any]]:
    return [("policy", m.policy), *((f"value_{i}", v) for i, v in enumerate(m.value_models))]


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def step_prompts(records: list[PromptRecord], step: int, per_step: int, seed: int) -> list[PromptRecord]:
    """The prompts of step `step`: consecutive slices of a per-epoch shuffle (the same on a resumed run)."""
    out: list[PromptRecord] = []
    n = len(records)
    position = step * per_step
    while len(out) < per_step:
        epoch, offset = divmod(position, n)
        order = list(range(n))
        random.Random(seed + epoch).shuffle(order)
        take = min(per_step - len(out), n - offset)
        out += [records[i] for i in order[offset : offset + take]]
        position += take
    return out


def _value_model(model, cfg: RLOptions):
    """A value model on a copy of `model`'s transformer body (its LM head is not needed)."""
    body = copy.deepcopy(getattr(model, model.base_model_prefix))
    if cfg.lora:
        lora = lora_config(cfg)
        lora.task_type = "FEATURE_EXTRACTION"
        body = get_peft_model(body, lora)
    return ValueModel(body, model.config.hidden_size)


@dataclass
class PPOModels:
    """What one PPO step works with: the policy, its reference, the value models and their optimisers."""

    cfg: RLOptions
    accelerator: Any
    policy: Any
    reference: Any  # None with LoRA: the adapter-disabled policy is the reference
    value_models: list[Any]
    opt_policy: Any
    opt_values: list[Any]
    tokenizer: Any
    pad_id: int
    eos_ids: set[int]
    schedulers: list[Any] = field(default_factory=list)  # the policy's, then each value model's

    def gather_mean(self, x: torch.Tensor, weights: torch.Tensor) -> float:
        """The weighted mean of a per-completion value over every process's completions."""
        gather = self.accelerator.gather
        return (gather(x * weights).sum() / gather(weights).sum().clamp(min=1)).item()

    def gather_valid(self, x: torch.Tensor, valid: torch.Tensor) -> list[float]:
        """Every process's values of its scored completions, in process order."""
        values, keep = self.accelerator.gather(x), self.accelerator.gather(valid)
        return values[keep > 0].tolist()


@dataclass
class Rollout:
    """One step's completions on this process: prompt (`context` tokens, left-padded) + response, and what is
    computed about them in order (scores, then log-probabilities and values, then advantages)."""

    records: list[PromptRecord]
    input_ids: torch.Tensor
    attention: torch.Tensor
    context: int
    generated: torch.Tensor  # 1 on the response tokens each completion really has
    completions: list[str]
    valid: torch.Tensor | None = None  # per completion: 1 when every scorer gave it a value
    scores: torch.Tensor | None = None
    costs: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    old_values: list[torch.Tensor] = field(default_factory=list)
    advantages: torch.Tensor | None = None
    returns: list[torch.Tensor] = field(default_factory=list)

    @property
    def mask(self) -> torch.Tensor:
        """The tokens that count: generated ones of scored completions (an unscored one stays, with no weight)."""
        return self.generated * self.valid[:, None]

    def __len__(self) -> int:
        return len(self.records)


def rollout(m: PPOModels, records: list[PromptRecord]) -> Rollout:
    """Sample one completion per record from the policy."""
    cfg, tokenizer = m.cfg, m.tokenizer
    unwrapped = m.accelerator.unwrap_model(m.policy)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": r.prompt}], tokenize=False,
                                           add_generation_prompt=True) for r in records]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(m.accelerator.device)
    context = enc["input_ids"].shape[1]
    unwrapped.eval()
    with torch.no_grad(), m.accelerator.autocast():
        out = unwrapped.generate(**enc, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
                                 max_new_tokens=cfg.max_new_tokens, pad_token_id=m.pad_id)
    responses = out[:, context:]
    generated = response_mask(responses, m.eos_ids, m.pad_id)
    completions = tokenizer.batch_decode([r[: int(g.sum())] for r, g in zip(responses, generated, strict=True)],
                                         skip_special_tokens=True)
    return Rollout(records, out, torch.cat([enc["attention_mask"], generated.long()], 1), context, generated,
                   completions)


def score(m: PPOModels, batch: Rollout, reward: Scorer, cost: Scorer | None) -> None:
    """Reward (and cost) per completion; the judge sees the final answer only (`rewards.py`)."""
    scorers = [reward] + ([cost] if cost is not None else [])
    records = batch.records
    values = run_sync(score_all(scorers, [r.prompt for r in records], batch.completions,
                                [r.category for r in records], [r.expected for r in records]))
    device = m.accelerator.device
    batch.valid = torch.tensor([all(v[i] is not None for v in values) for i in range(len(records))],
                               dtype=torch.float32, device=device)
    as_tensor = lambda vs: torch.tensor([v if v is not None else 0.0 for v in vs], device=device)  # noqa: E731
    batch.scores = as_tensor(values[0])
    batch.costs = as_tensor(values[1]) if cost is not None else None


def logprob_pass(m: PPOModels, batch: Rollout) -> None:
    """The log-probabilities of the sampling policy and the reference, and the values, before any update."""
    cfg, context = m.cfg, batch.context
    unwrapped = m.accelerator.unwrap_model(m.policy)
    size = cfg.mini_batch_size or len(batch)
    old_logp, ref_logp, old_values = [], [], [[] for _ in m.value_models]
    with torch.no_grad(), m.accelerator.autocast():
        for s in range(0, len(batch), size):
            ids, att = batch.input_ids[s : s + size], batch.attention[s : s + size]
            old_logp.append(response_logprobs(unwrapped, ids, att, context, cfg.temperature)[0])
            if m.reference is None:
                with unwrapped.disable_adapter():
                    ref_logp.append(response_logprobs(unwrapped, ids, att, context, cfg.temperature)[0])
            else:
                ref_logp.append(response_logprobs(m.reference, ids, att, context, cfg.temperature)[0])
            for k, vm in enumerate(m.value_models):
                old_values[k].append(response_values(vm, ids, att, context))
    batch.old_logp, batch.ref_logp = torch.cat(old_logp), torch.cat(ref_logp)
    batch.old_values = [torch.cat(v) for v in old_values]


def advantages(m: PPOModels, batch: Rollout, kl_ctl: KLController, lagrange: Lagrange | None,
               step: int) -> torch.Tensor:
    """Per-token rewards (the KL penalty on every token, the score on the last), GAE against the value model;
    PPO-Lagrangian also the cost's, then the multiplier's step and the combined advantage. Returns the per-token
    KL to the reference."""
    cfg, mask = m.cfg, batch.mask
    kl = (batch.old_logp - batch.ref_logp) * mask
    clip = cfg.score_clip()
    if lagrange is None:
        rewards = token_rewards(batch.scores, kl, mask, kl_ctl.coef, clip)
        adv, ret = gae(rewards, batch.old_values[0], mask, cfg.gamma, cfg.lam)
        batch.advantages = whiten(adv, mask) if cfg.whiten() else adv
        batch.returns = [ret]
        return kl
    # safe-rlhf's add_kl_divergence_regularization: the full coefficient on both, reward - beta * KL and
    # cost + beta * KL per token, the model's score added on the last token, then clamped.
    rewards = token_rewards(batch.scores, kl, mask, kl_ctl.coef, clip)
    cost_tokens = token_rewards(batch.costs, -kl, mask, kl_ctl.coef, clip)
    adv_r, ret_r = gae(rewards, batch.old_values[0], mask, cfg.gamma, cfg.lam)
    adv_c, ret_c = gae(cost_tokens, batch.old_values[1], mask, cfg.gamma, cfg.lam)
    window_cost = lagrange.observe(m.gather_valid(batch.costs, batch.valid))
    if step >= cfg.lambda_update_delay and lagrange.costs:  # no cost seen yet (every one failed): no step
        lagrange.update(window_cost)
    lam = lagrange.value  # the updated multiplier, as safe-rlhf's actor loss reads it
    if cfg.whiten():
        adv_r, adv_c = whiten(adv_r, mask), whiten(adv_c, mask)
    batch.advantages = (adv_r - lam * adv_c) / (1 + lam)
    batch.returns = [ret_r, ret_c]
    return kl


def update(m: PPOModels, batch: Rollout) -> dict[str, float]:
    """`ppo_epochs` passes over the batch in mini-batches: the clipped policy loss on pi / pi_old, then the
    clipped value loss of each value model, each with its own optimiser. Returns the mean losses and stats."""
    cfg, accelerator, context = m.cfg, m.accelerator, batch.context
    size = cfg.mini_batch_size or len(batch)
    m.policy.train()
    for vm in m.value_models:
        vm.train()
    stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clipfrac": [], "approx_kl": [],
                                     "entropy": []}
    mask = batch.mask
    for _ in range(cfg.epochs()):
        order = torch.randperm(len(batch), device="cpu").tolist()
        for s in range(0, len(batch), size):
            idx = torch.tensor(order[s : s + size], device=accelerator.device)
            ids, att, mk = batch.input_ids[idx], batch.attention[idx], mask[idx]
            with accelerator.autocast():
                logp, entropy = response_logprobs(m.policy, ids, att, context, cfg.temperature, with_entropy=True)
                loss, info = policy_loss(logp, batch.old_logp[idx], batch.advantages[idx], mk, cfg.clip_range,
                                         cfg.average())
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(m.policy.parameters(), cfg.max_grad_norm)
            m.opt_policy.step()
            m.opt_policy.zero_grad()
            m.schedulers[0].step()
            for k, (vm, opt) in enumerate(zip(m.value_models, m.opt_values, strict=True)):
                with accelerator.autocast():
                    vpred = response_values(vm, ids, att, context)
                    vloss = value_loss(vpred, batch.old_values[k][idx], batch.returns[k][idx], mk,
                                       cfg.clip_range_value, cfg.average())
                accelerator.backward(vloss)
                accelerator.clip_grad_norm_(vm.parameters(), cfg.max_grad_norm)
                opt.step()
                opt.zero_grad()
                m.schedulers[k + 1].step()
                if k == 0:
                    stats["value_loss"].append(vloss.item())
            stats["policy_loss"].append(loss.item())
            stats["clipfrac"].append(info["clipfrac"])
            stats["approx_kl"].append(info["approx_kl"])
            stats["entropy"].append(masked_mean(entropy.detach(), mk).item())  # type: ignore[union-attr]
    return {k: sum(v) / len(v) for k, v in stats.items() if v}


def ppo_step(m: PPOModels, records: list[PromptRecord], reward: Scorer, cost: Scorer | None,
             kl_ctl: KLController, lagrange: Lagrange | None, step: int) -> dict[str, float]:
    """One PPO step on this process's `records` (all processes step together); returns the step's metrics."""
    t0 = time.perf_counter()
    batch = rollout(m, records)
    t_gen = time.perf_counter() - t0
    score(m, batch, reward, cost)
    t_judge = time.perf_counter() - t0 - t_gen
    logprob_pass(m, batch)
    kl = advantages(m, batch, kl_ctl, lagrange, step)
    t1 = time.perf_counter()
    losses = update(m, batch)
    t_opt = time.perf_counter() - t1
    gather = m.accelerator.gather
    sequence_kl = m.gather_mean(kl.sum(1), batch.valid)
    kl_ctl.update(sequence_kl, int(gather(batch.valid).sum().item()))
    metrics = {
        "reward": m.gather_mean(batch.scores, batch.valid), "kl": sequence_kl, "kl_coef": kl_ctl.coef,
        "response_tokens": m.gather_mean(batch.mask.sum(1), batch.valid),
        "completions": float(gather(torch.tensor([len(batch)], device=m.accelerator.device)).sum().item()),
        "unscored": float(gather(1 - batch.valid).sum().item()),
        "seconds_generation": round(t_gen, 3), "seconds_judge": round(t_judge, 3),
        "seconds_optimisation": round(t_opt + (t1 - t0 - t_gen - t_judge), 3),  # log-prob passes + PPO epochs
        **losses,
    }
    if lagrange is not None:
        metrics |= {"cost": m.gather_mean(batch.costs, batch.valid), "lambda": lagrange.value}
    return metrics


def train_ppo(recipe: Recipe, start: str, records: list[PromptRecord], run: ModelRun, fp: str, *, reward: Scorer,
              cost: Scorer | None = None, resume: bool | str = False, show_progress: bool = True):
    """Train the policy from `start`; returns (the trained policy, its tokenizer, a summary, the history)."""
    cfg = recipe.rl
    lagrangian = cfg.algo == "ppo-lagrangian"
    if lagrangian and cost is None:
        raise DeliberateError("ppo-lagrangian needs a cost scorer")
    refuse_sharded(f"rl --algo {cfg.algo}")  # every process generates with, and the main one saves, the whole policy
    cpu = on_cpu(recipe)
    accelerator = Accelerator(cpu=cpu, mixed_precision="bf16" if use_bf16(cfg.bf16, cpu) else "no",
                              log_with=cfg.report_to or None, project_dir=str(run.folder / "tracking"))
    if cfg.report_to:  # the trackers get the rl section's scalar settings and every step's metrics
        accelerator.init_trackers(cfg.run_name or run_label(recipe, run.folder), config={
            k: v for k, v in cfg.model_dump(mode="json").items() if isinstance(v, bool | int | float | str)})
    world = accelerator.num_processes
    if cfg.prompts_per_step % world:
        raise DeliberateError(f"rl.prompts_per_step ({cfg.prompts_per_step}) must be divisible by the number of "
                              f"processes ({world})")
    set_seed(recipe.seed + accelerator.process_index)
    m = _models(recipe, start, accelerator, lagrangian, cfg.max_steps * updates_per_step(cfg, world))
    lagrange = Lagrange(cfg.lambda_init, cfg.lambda_lr, cfg.cost_threshold, cfg.lambda_max,
                        cfg.cost_window * world) if lagrangian else None
    kl = KLController(cfg.kl_coef, cfg.adaptive_kl, cfg.kl_target, cfg.kl_horizon)
    state = PPOState(kl_coef=cfg.kl_coef)
    checkpoint = run.last_checkpoint(resume, "rl", fp, needs=CHECKPOINT_FILES)
    if checkpoint:
        load_checkpoint(m, state, Path(checkpoint))
        kl.coef = state.kl_coef
        if lagrange is not None and state.lagrange is not None:
            lagrange.load_state_dict(state.lagrange["module"])
            lagrange.optimizer.load_state_dict(state.lagrange["optimizer"])
            lagrange.costs.extend(state.lagrange.get("window", []))
        with warnings.catch_warnings():  # the schedules are functions of the update count: replay it
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for scheduler in m.schedulers:
                for _ in range(state.step * updates_per_step(cfg, world)):
                    scheduler.step()
    resumed_from = state.step if checkpoint else None

    per_rank = cfg.prompts_per_step // world
    n_gen = cfg.generations()
    started = time.perf_counter()
    with progress_bar(f"rl ({cfg.algo})", total=cfg.max_steps, unit="completions",
                      enabled=show_progress and accelerator.is_main_process) as bar:
        bar.advance(state.step)
        while state.step < cfg.max_steps:
            batch = step_prompts(records, state.step, cfg.prompts_per_step, recipe.seed)
            mine = [r for r in batch[accelerator.process_index * per_rank : (accelerator.process_index + 1) * per_rank]
                    for _ in range(n_gen)]
            metrics = ppo_step(m, mine, reward, cost, kl, lagrange, state.step)
            state.step += 1
            state.kl_coef = kl.coef
            if lagrange is not None:
                state.lagrange = {"module": lagrange.state_dict(), "optimizer": lagrange.optimizer.state_dict(),
                                  "window": list(lagrange.costs)}
            state.history.append({"step": state.step, **metrics})
            if cfg.report_to:
                accelerator.log({k: v for k, v in metrics.items() if isinstance(v, int | float)}, step=state.step)
            if accelerator.is_main_process:  # the history is in every checkpoint, so a resumed log has no gaps
                write_jsonl(run.folder / "log.jsonl", state.history)
            bar.advance(1, tokens=int(metrics["completions"]))
            if state.step % cfg.save_steps == 0 and state.step < cfg.max_steps:
                save_checkpoint(m, state, run.checkpoints / f"checkpoint-{state.step}", fp)
                if accelerator.is_main_process:
                    for old in checkpoints(run.checkpoints)[:-2]:
                        shutil.rmtree(old, ignore_errors=True)
    seconds = time.perf_counter() - started
    if cfg.report_to:
        accelerator.end_training()
    unwrapped = accelerator.unwrap_model(m.policy)
    digests = gather_digests(unwrapped)
    history = state.history
    first, last = history[: max(1, len(history) // 4)], history[-max(1, len(history) // 4) :]
    summary = {
        "algo": cfg.algo, "steps": state.step, "processes": world, "seconds": round(seconds, 1),
        "reward_first_steps": mean_or_none(h["reward"] for h in first),
        "reward_last_steps": mean_or_none(h["reward"] for h in last), "kl_coef": kl.coef,
        "resumed_from_step": resumed_from,
        **{k: mean_or_none((h[k] for h in history), 3)
           for k in ("seconds_generation", "seconds_judge", "seconds_optimisation")},
        "weights_digest_per_rank": digests, "ranks_agree": len(set(digests)) == 1,
    }
    if lagrange is not None:
        summary |= {"lambda": lagrange.value, "cost_first_steps": mean_or_none(h["cost"] for h in first),
                    "cost_last_steps": mean_or_none(h["cost"] for h in last), "cost_threshold": cfg.cost_threshold}
    return unwrapped, m.tokenizer, summary, history


def updates_per_step(cfg: RLOptions, world: int) -> int:
    """Optimiser updates of each model per RL step: `ppo_epochs` passes over the process's completions."""
    per_rank = cfg.prompts_per_step // world * cfg.generations()
    return cfg.epochs() * math.ceil(per_rank / (cfg.mini_batch_size or per_rank))


def _adamw(model, lr: float, weight_decay: float, cfg: RLOptions) -> torch.optim.AdamW:
    """AdamW with no decay on biases and norm weights (as safe-rlhf and transformers' Trainer)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if p.ndim < 2 or "norm" in name.lower() or name.endswith("bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2))


def _models(recipe: Recipe, start: str, accelerator, lagrangian: bool, total_updates: int) -> PPOModels:
    """The policy from `start` (loaded once; the reference and the value models start as copies of it), the
    optimisers and their learning-rate schedules, prepared by `accelerator`."""
    from transformers import get_scheduler

    cfg = recipe.rl
    loaded = load_start(recipe, start, trainable=True)
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = {tokenizer.eos_token_id} | set(_as_list(loaded.model.generation_config.eos_token_id))
    eos_ids.discard(None)
    policy = loaded.model
    value_models = [_value_model(policy, cfg) for _ in range(2 if lagrangian else 1)]
    reference = None
    if not cfg.lora:
        reference = copy.deepcopy(policy).eval().requires_grad_(False).to(accelerator.device)
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    if cfg.lora:
        policy = get_peft_model(policy, lora_config(cfg))
    for module in [policy, *value_models]:  # no dropout: pi / pi_old must be 1 before the first update (as TRL)
        disable_dropout_in_model(module)
    value_lr = cfg.value_learning_rate or 5 * cfg.learning_rate
    opt_policy = _adamw(policy, cfg.learning_rate, cfg.weight_decay, cfg)
    opt_values = [_adamw(v, value_lr, cfg.value_weight_decay, cfg) for v in value_models]
    warmup = int(total_updates * cfg.warmup_ratio)
    schedulers = [get_scheduler(cfg.lr_scheduler_type or "constant", opt_policy, num_warmup_steps=warmup,
                                num_training_steps=total_updates)]
    schedulers += [get_scheduler(cfg.value_lr_scheduler_type, o, num_warmup_steps=warmup,
                                 num_training_steps=total_updates) for o in opt_values]
    policy, opt_policy = accelerator.prepare(policy, opt_policy)
    prepared = [accelerator.prepare(v, o) for v, o in zip(value_models, opt_values, strict=True)]
    return PPOModels(cfg, accelerator, policy, reference, [p[0] for p in prepared], opt_policy,
                     [p[1] for p in prepared], tokenizer, pad_id, eos_ids, schedulers)


def _as_list(x) -> list:
    return x if isinstance(x, list) else [x]
