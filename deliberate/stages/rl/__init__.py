"""`deliberate rl`: online RL with a judge reward (stage two of deliberative alignment).

- `--algo grpo | rloo`: TRL's GRPOTrainer / RLOOTrainer. The reward is an async function (`rewards.Scorer`):
  the judge gets spec_for(category), the prompt and the final answer only; a failed judgment is None, which TRL
  leaves out of the group baseline and gives no advantage. LoRA or full fine-tuning; vLLM with `rl.use_vllm`.
- `--algo ppo | ppo-lagrangian`: this toolkit's PPO with a value model (`stages/rl/ppo.py`), and Safe RLHF's Lagrangian
  variant with a cost judge and a learned multiplier.

The policy starts from `rl.start` (e.g. `stage:sft`), which is also the KL reference. Outputs in
`<output_dir>/rl/`: `model/` (full weights, the adapter merged), `adapter/` (with LoRA), `log.jsonl` (metrics per
step: reward, KL, cost and lambda, seconds in generation / judging / optimisation), `training.png`,
`summary.json` and `checkpoints/` (for `--resume`). `stage:rl` names the model in evals. A finished run whose
inputs have not changed is reused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from deliberate.config import Recipe
from deliberate.errors import DeliberateError
from deliberate.services.benchmarks import training_prompts
from deliberate.services.data import PromptRecord
from deliberate.services.io import write_json, write_jsonl
from deliberate.services.models import adapter_base, resolve_model_path
from deliberate.services.plots import plot_training
from deliberate.services.provenance import Card, model_card
from deliberate.services.runs import (
    MARKER,
    Layout,
    ModelRun,
    file_digest,
    fingerprint,
    for_resume,
    model_identity,
    stage_model,
)
from deliberate.services.spec import load_spec
from deliberate.services.training import (
    gather_digests,
    load_start,
    lora_config,
    main_process_first,
    mean_or_none,
    resume_point,
    save_policy,
    save_trained,
    show_training_progress,
    trl_config,
    world,
)
from deliberate.stages.rl.ppo import train_ppo
from deliberate.stages.rl.rewards import Scorer, cost_scorer, reward_scorer


def rl_fingerprint(recipe: Recipe, start: str, records: list[PromptRecord]) -> str:
    function_files = [Path(f.rpartition(":")[0]) for f in (recipe.rl.reward_function, recipe.rl.cost_function)
                      if f and f.rpartition(":")[0].endswith(".py")]
    return fingerprint({"rl": recipe.rl.weight_settings(), "start": model_identity(start), "seed": recipe.seed,
                        "judge": recipe.judge.model_dump(mode="json"), "spec": recipe.spec,
                        "model": recipe.model.loading(), "prompts": [r.to_dict() for r in records],
                        "functions": [file_digest(p) for p in function_files if p.is_file()]})


def run_rl(recipe: Recipe, *, resume: bool | str = False, show_progress: bool = True) -> dict[str, Any]:
    cfg = recipe.rl
    records = training_prompts(cfg.data or recipe.data, load_spec(recipe.spec), recipe.eval.datasets_dir)
    if not records:
        raise DeliberateError("rl: no training prompts")
    # The rules judge scores against the expected behaviour, so it needs a category or an expected label (a
    # generative judge without a category reads the whole policy; a classifier needs neither).
    judges = [] if cfg.reward_function else [cfg.reward_judge or recipe.judge]
    if cfg.algo == "ppo-lagrangian" and not cfg.cost_function:
        judges.append(cfg.cost_judge or cfg.reward_judge or recipe.judge)
    if cfg.algo == "ppo-lagrangian" and cfg.cost == "p_harmful" and not cfg.cost_function and \
            (cost_judge := cfg.cost_judge or cfg.reward_judge or recipe.judge).backend != "guard":
        raise DeliberateError(f"rl.cost: p_harmful is the guard judge's P(harmful response); the cost judge is "
                              f"{cost_judge.backend} (set rl.cost_judge.backend: guard, or rl.cost: unsafe / score)")
    rules = any(j.backend == "rules" for j in judges)
    if rules and (missing := [r.id for r in records if not r.category and not r.expected]):
        raise DeliberateError(f"rl: {len(missing)} prompts have neither a category nor an expected behaviour (e.g. "
                              f"{missing[0]}); the rules judge needs one (set data.category or a category column)")
    start = resolve_model_path(stage_model(recipe, cfg.start) if cfg.start else recipe.model.name)
    run = Layout(recipe).rl
    fp = rl_fingerprint(recipe, start, records)
    if reused := run.reusable(fp):
        return reused
    resume_fp = rl_fingerprint(for_resume(recipe, "rl"), start, records)  # more steps: the same run, continued
    reward = reward_scorer(recipe)
    cost = cost_scorer(recipe) if cfg.algo == "ppo-lagrangian" else None
    try:
        if cfg.algo in ("grpo", "rloo"):
            trainer, summary, history = _train_trl(recipe, start, records, run, resume_fp, reward, resume, show_progress)
        else:
            trainer = None
            model, tokenizer, summary, history = train_ppo(recipe, start, records, run, resume_fp, reward=reward, cost=cost,
                                                           resume=resume, show_progress=show_progress)
    finally:
        reward.close()
        if cost is not None:
            cost.close()
    summary = {"fingerprint": fp, "start": cfg.start or recipe.model.name, "start_path": start,
               "prompts": len(records), "lora": cfg.lora, **summary, "reward_scorer": reward.stats.to_dict(),
               **({"cost_scorer": cost.stats.to_dict()} if cost is not None else {})}
    card = _card(recipe, summary)
    if trainer is not None:
        save_trained(trainer, run, lora=cfg.lora, card=card, summary=summary)  # every process; the main one writes
    with main_process_first() as main:
        if main:
            _write_log(run, history, cfg.algo)
            if trainer is None:
                save_policy(model, tokenizer, run, lora=cfg.lora, card=card, summary=summary)
    return summary


def _write_log(run: ModelRun, history: list[dict[str, Any]], algo: str) -> None:
    write_jsonl(run.folder / "log.jsonl", history)
    try:
        plot_training(history, ["reward", "cost", "lambda", "kl"], run.folder / "training.png", f"deliberate rl ({algo})")
    except ImportError:  # matplotlib is the `plots` extra
        pass


def _card(recipe: Recipe, summary: dict[str, Any]) -> Card:
    cfg = recipe.rl
    what = {"grpo": "GRPO (TRL)", "rloo": "RLOO (TRL)", "ppo": "PPO with a value model",
            "ppo-lagrangian": "PPO-Lagrangian (Safe RLHF)"}[cfg.algo]
    reward = f"`{cfg.reward_function}`" if cfg.reward_function else "the spec-aware judge on the final answer only"
    return model_card(recipe, f"{what}{', LoRA merged' if cfg.lora else ''}",
                      f"Started from `{summary['start']}` (also the KL reference). Trained by `deliberate rl` for "
                      f"{summary['steps']} steps on {summary['prompts']} prompts with reward from {reward}; mean "
                      f"reward {summary.get('reward_first_steps')} over the first quarter of the steps, "
                      f"{summary.get('reward_last_steps')} over the last.", base_model=summary.get("start_path"),
                      datasets=[(cfg.data or recipe.data).source], tags=[cfg.algo, "rl"])


# ---- GRPO / RLOO through TRL ----


def _timed(trainer_class):
    """A TRL trainer that records the time spent sampling and scoring (the rest of a step is optimisation)."""

    class Timed(trainer_class):
        rollout_seconds = 0.0

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                self.rollout_seconds += time.perf_counter() - t0

    Timed.__name__ = trainer_class.__name__
    return Timed


def _trl_start(recipe: Recipe, start: str, run: ModelRun) -> str:
    """With full fine-tuning and a KL term, TRL reloads the reference from the model's recorded name, which for
    a merged adapter is the base: give it a folder with the merged weights instead."""
    if recipe.rl.lora or recipe.rl.kl_coef == 0 or not Path(start).is_dir() or not adapter_base(start):
        return start
    merged = run.folder / "start"
    made_from = {"merged_from": start, "identity": model_identity(start)}
    with main_process_first() as main:
        current = (merged / MARKER).is_file() and json.loads((merged / MARKER).read_text()) == made_from
        if main and not current:  # a start retrained in place, or another start, is merged again
            loaded = load_start(recipe, start, trainable=False)
            loaded.model.save_pretrained(str(merged))
            loaded.tokenizer.save_pretrained(str(merged))
            write_json(merged / MARKER, made_from)
    return str(merged.resolve())


def _train_trl(recipe: Recipe, start: str, records: list[PromptRecord], run: ModelRun, fp: str, reward: Scorer,
               resume: bool | str, show_progress: bool):
    from datasets import Dataset

    cfg = recipe.rl
    n_gen = cfg.generations()
    processes = world()[1]
    completions = cfg.prompts_per_step * n_gen
    if completions % processes:
        raise DeliberateError(f"rl: {completions} completions per step do not split over {processes} processes")
    per_process = completions // processes
    per_device = cfg.mini_batch_size or per_process
    if per_process % per_device:
        raise DeliberateError(f"rl.mini_batch_size ({per_device}) must divide the {per_process} completions each "
                              "process gets per step (prompts_per_step x num_generations / processes)")
    loaded = load_start(recipe, _trl_start(recipe, start, run), trainable=True, quantization=cfg.quantization)
    epochs = cfg.epochs()
    computed = dict(max_steps=cfg.max_steps * epochs, per_device_train_batch_size=per_device,
                    gradient_accumulation_steps=per_process // per_device, num_generations=n_gen,
                    num_iterations=epochs, log_completions=False, shuffle_dataset=True,
                    **({"lr_scheduler_type": cfg.lr_scheduler_type} if cfg.lr_scheduler_type else {}))
    if cfg.algo == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        args = trl_config(GRPOConfig, recipe, cfg, run.checkpoints, **computed,
                          **({"loss_type": cfg.loss_type} if cfg.loss_type else {}))
        trainer_class = _timed(GRPOTrainer)
    else:
        from trl import RLOOConfig, RLOOTrainer

        if cfg.loss_type:
            raise DeliberateError("rl.loss_type is a GRPO option; RLOO has one loss")
        args = trl_config(RLOOConfig, recipe, cfg, run.checkpoints, **computed)
        trainer_class = _timed(RLOOTrainer)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r.prompt}], "id": r.id,
                                  "category": r.category, "expected": r.expected} for r in records])
    trainer = trainer_class(model=loaded.model, reward_funcs=[reward.trl_function()], args=args,
                            train_dataset=dataset, processing_class=loaded.tokenizer,
                            peft_config=lora_config(cfg) if cfg.lora else None)
    show_training_progress(trainer, f"rl ({cfg.algo})", show_progress)
    checkpoint = resume_point(trainer, run, fp, resume, "rl")
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    name = reward.name
    history = []
    for entry in trainer.state.log_history:
        if "reward" not in entry:
            continue
        row = {"step": entry.get("step", len(history) + 1), "reward": entry["reward"]}
        for key, out in (("kl", "kl"), ("entropy", "entropy"), ("loss", "loss"), ("reward_std", "reward_std"),
                         (f"{name}/failures", "unscored"), ("completions/mean_length", "response_tokens")):
            if key in entry:
                row[out] = entry[key]
        history.append(row)
    steps = trainer.state.global_step
    quarter = max(1, len(history) // 4)
    judge_seconds = reward.stats.seconds
    summary = {
        "algo": cfg.algo, "steps": steps, "rl_steps": steps // epochs, "processes": processes,
        "completions_per_step": completions, "seconds": round(seconds, 1),
        "reward_first_steps": mean_or_none(h["reward"] for h in history[:quarter]),
        "reward_last_steps": mean_or_none(h["reward"] for h in history[-quarter:]),
        "seconds_per_step": round(seconds / max(steps // epochs, 1), 3),
        "seconds_generation": round((trainer.rollout_seconds - judge_seconds) / max(steps // epochs, 1), 3),
        "seconds_judge": round(judge_seconds / max(steps // epochs, 1), 3),
        "seconds_optimisation": round((seconds - trainer.rollout_seconds) / max(steps // epochs, 1), 3),
        "resumed_from": checkpoint, "weights_digest_per_rank": gather_digests(trainer.model),
    }
    summary["ranks_agree"] = len(set(summary["weights_digest_per_rank"])) == 1
    return trainer, summary, history
