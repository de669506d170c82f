"""`rl`: online RL with a judge reward (GRPO, RLOO, PPO, PPO-Lagrangian)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from deliberate.config.data import DataConfig
from deliberate.config.judge import JudgeConfig
from deliberate.config.training import TrainingOptions


class RLOptions(TrainingOptions):
    """`rl`: online RL from a start model with a judge reward. GRPO and RLOO run on TRL's trainers; PPO and
    PPO-Lagrangian are deliberate's own (`stages/rl/ppo.py`) and read the same fields."""

    DEFAULTS = {"learning_rate": 1e-6, "logging_steps": 1}
    TRL_NAMES = {"kl_coef": "beta", "clip_range": "epsilon", "max_new_tokens": "max_completion_length",
                 "warmup_ratio": "warmup_steps"}  # transformers 5 reads a float below 1 as a ratio of the steps
    OWN_FIELDS = TrainingOptions.OWN_FIELDS | {
        "algo", "start", "data", "reward_judge", "reward_function", "format_reward", "cost_judge", "cost",
        "cost_function", "cost_threshold", "lambda_init", "lambda_lr", "lambda_max", "lambda_update_delay",
        "max_steps", "prompts_per_step", "num_generations", "value_learning_rate", "adaptive_kl", "kl_target",
        "kl_horizon", "ppo_epochs", "mini_batch_size", "clip_range_value", "gamma", "lam", "whiten_advantages",
        "loss_type", "clip_range_score", "loss_average", "cost_window", "value_weight_decay",
        "value_lr_scheduler_type", "lr_scheduler_type"}

    def trl_configs(self) -> list[str]:
        return {"grpo": ["GRPOConfig"], "rloo": ["RLOOConfig"]}.get(self.algo, [])

    COMPUTED = frozenset({"per_device_train_batch_size", "gradient_accumulation_steps", "num_iterations",
                          "log_completions", "shuffle_dataset"})

    algo: Literal["grpo", "rloo", "ppo", "ppo-lagrangian"] = "grpo"
    """`grpo` / `rloo` (TRL's trainers, no value model), `ppo` (this toolkit's PPO with a value model) or
    `ppo-lagrangian` (PPO maximising reward - lambda * cost with a learned multiplier, as Safe RLHF)."""
    start: str | None = None
    """The policy's starting model, also the KL reference: `stage:sft`, `stage:<dpo stage>`, `merge:...`, a
    folder, an adapter folder or a Hub id. The recipe's `model` when unset."""
    data: DataConfig | None = None
    """Training prompts (each needs a category or an expected behaviour for the judge); the recipe's `data`
    when unset."""
    reward_judge: JudgeConfig | None = None
    """The reward judge; the recipe's `judge` when unset. It gets spec_for(category), the prompt and the final
    answer only, never the reasoning. Reward = score / 10 (a `classifier` judge: the reward model's scalar); a
    completion with no final answer gets 0 unjudged; a failed judgment gives no reward (the completion carries
    no learning signal), never a made-up one."""
    reward_function: str | None = None
    """Instead of the judge: a Python function `package.module:name` or `path/to/file.py:name`, called as
    f(prompts, completions, answers=..., category=..., expected=...) and returning one float (or None for no
    reward) per completion; it may be `async def`."""
    format_reward: float = Field(default=0.0, ge=0)
    """Added to the reward of a completion that reasons in a well-formed `<think>...</think>` block and then
    answers."""
    cost_judge: JudgeConfig | None = None
    """`ppo-lagrangian`: the cost judge (e.g. a harmlessness judge or a classifier cost model); the reward judge
    when unset."""
    cost: Literal["unsafe", "score", "p_harmful"] = "unsafe"
    """`ppo-lagrangian`: cost = 1 when the cost judge's verdict is `unsafe`, else 0 (`unsafe`), 1 - score / 10
    (`score`), or the guard judge's P(harmful response) (`p_harmful`); a `classifier` cost judge (a cost model)
    gives its own scalar."""
    cost_function: str | None = None
    """`ppo-lagrangian`: a Python cost function instead of the cost judge (same form as `reward_function`)."""
    cost_threshold: float = 0.1
    """`ppo-lagrangian`: the constraint mean cost <= threshold (Safe RLHF's d)."""
    lambda_init: float = Field(default=1.0, gt=0)
    """`ppo-lagrangian`: the multiplier's starting value (it is learned as log lambda, so it stays > 0)."""
    lambda_lr: float = Field(default=0.1, gt=0)
    """`ppo-lagrangian`: learning rate of log lambda (SGD on -(mean cost - threshold) * lambda, as Safe RLHF)."""
    lambda_max: float | None = Field(default=None, gt=0)
    """`ppo-lagrangian`: an upper bound on lambda."""
    lambda_update_delay: int = Field(default=0, ge=0)
    """`ppo-lagrangian`: steps before lambda starts to move (the critic settles first)."""
    max_steps: int = Field(default=100, ge=1)
    """RL steps; each samples completions, scores them and makes one optimisation round on them."""
    prompts_per_step: int = Field(default=8, ge=1)
    """Prompts per step (over all processes)."""
    num_generations: int | None = Field(default=None, ge=1)
    """Completions per prompt: the group size for `grpo` / `rloo` (8 when unset, at least 2), 1 for PPO when
    unset."""
    max_new_tokens: int = Field(default=128, ge=1)
    """Most tokens per completion (reasoning and answer together)."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature of the completions (log-probabilities are taken at the same temperature)."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling of the completions."""
    value_learning_rate: float | None = Field(default=None, gt=0)
    """PPO: the value model's learning rate; 5 x `learning_rate` when unset."""
    kl_coef: float = Field(default=0.05, ge=0)
    """Weight of the KL penalty to the reference (GRPO/RLOO's beta; PPO's starting coefficient)."""
    adaptive_kl: bool = False
    """PPO: adapt the KL coefficient towards `kl_target` (Ziegler et al.'s controller) instead of keeping it."""
    kl_target: float = Field(default=6.0, gt=0)
    """PPO with `adaptive_kl`: the per-sequence KL the controller aims at."""
    kl_horizon: int = Field(default=10000, ge=1)
    """PPO with `adaptive_kl`: the controller's horizon in samples."""
    ppo_epochs: int | None = Field(default=None, ge=1)
    """Optimisation passes over each step's completions: 4 for PPO when unset, 1 for GRPO/RLOO (TRL's
    `num_iterations`)."""
    mini_batch_size: int | None = Field(default=None, ge=1)
    """Completions per optimiser update on each process (PPO) or per forward pass (GRPO/RLOO); all of a step's
    completions when unset."""
    clip_range: float = Field(default=0.2, gt=0)
    """Clipping of the policy ratio (epsilon)."""
    clip_range_value: float = Field(default=0.2, gt=0)
    """PPO: clipping of the value prediction around the old value."""
    gamma: float = Field(default=1.0, ge=0, le=1)
    """PPO: discount of generalised advantage estimation."""
    lam: float = Field(default=0.95, ge=0, le=1)
    """PPO: lambda of generalised advantage estimation."""
    whiten_advantages: bool | None = None
    """PPO: normalise advantages to mean 0 and std 1 over each step's tokens (reward and cost advantages each,
    before lambda combines them). When unset: on for `ppo` (as TRL's PPO), off for `ppo-lagrangian` (safe-rlhf
    whitens neither)."""
    loss_average: Literal["token", "sequence"] | None = None
    """PPO: how the policy and value losses average over a mini-batch: over all its response tokens (`token`, as
    TRL's PPO), or over each sequence's tokens and then over sequences (`sequence`, safe-rlhf's masked_mean). When
    unset: `token` for `ppo`, `sequence` for `ppo-lagrangian`."""
    clip_range_score: float | None = Field(default=None, gt=0)
    """PPO: per-token rewards (and costs), the KL penalty plus the score on the last token, are clamped to
    [-c, c] (safe-rlhf's clip_range_score, 50 in its scripts). When unset: no clamp for `ppo`, 50 for
    `ppo-lagrangian`."""
    cost_window: int = Field(default=128, ge=1)
    """`ppo-lagrangian`: lambda moves on the mean cost of the last this-many completions per process (safe-rlhf's
    episode_cost_window_size, a deque on each device), this step's included. Lambda takes one step per RL step,
    before the policy's update; safe-rlhf steps it per micro-batch, which is the same with one mini-batch and
    `ppo_epochs: 1` (its scripts' setting)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay of the policy (PPO: biases and norm weights are not decayed, as safe-rlhf and
    transformers)."""
    value_weight_decay: float = Field(default=0.0, ge=0)
    """PPO: AdamW weight decay of the value models."""
    adam_beta1: float = Field(default=0.9, gt=0, lt=1)
    """AdamW beta1 (policy and value models)."""
    adam_beta2: float = Field(default=0.999, gt=0, lt=1)
    """AdamW beta2 (policy and value models; safe-rlhf uses 0.95)."""
    lr_scheduler_type: Literal["constant", "constant_with_warmup", "cosine", "linear"] | None = None
    """The policy's learning-rate schedule over `max_steps` (PPO: over its optimiser updates, which a resume with
    another `max_steps` or number of processes stretches). Unset: TRL's default (linear decay) for grpo/rloo,
    constant for PPO."""
    value_lr_scheduler_type: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant"
    """PPO: the value models' learning-rate schedule."""
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    """Fraction of the optimiser updates over which the learning rates warm up from 0 (a `constant` schedule
    with warmup is `constant_with_warmup`)."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Gradients are clipped to this norm."""
    loss_type: str | None = None
    """GRPO: TRL's loss variant (`grpo`, `dapo`, `dr_grpo`, `bnpo`, ...); TRL's default when unset."""
    use_vllm: bool = False
    """GRPO/RLOO: generate with vLLM (needs the `vllm` extra and a GPU)."""

    @model_validator(mode="after")
    def _groups(self) -> RLOptions:
        if self.algo in ("grpo", "rloo") and self.generations() < 2:
            raise ValueError(f"{self.algo} compares completions within a group: num_generations must be at least 2")
        if self.quantization and self.algo not in ("grpo", "rloo"):
            raise ValueError(f"quantization (QLoRA) works with grpo and rloo: {self.algo} copies the policy into its "
                             "reference and value models")
        return self

    def epochs(self) -> int:
        if self.ppo_epochs is not None:
            return self.ppo_epochs
        return 1 if self.algo in ("grpo", "rloo") else 4

    def whiten(self) -> bool:
        return self.whiten_advantages if self.whiten_advantages is not None else self.algo != "ppo-lagrangian"

    def average(self) -> str:
        return self.loss_average or ("sequence" if self.algo == "ppo-lagrangian" else "token")

    def score_clip(self) -> float | None:
        if self.clip_range_score is not None:
            return self.clip_range_score
        return 50.0 if self.algo == "ppo-lagrangian" else None

    def generations(self) -> int:
        if self.num_generations is not None:
            return self.num_generations
        return 8 if self.algo in ("grpo", "rloo") else 1
