"""`deliberate rm`: reward and cost models trained on preference pairs with TRL's RewardTrainer.

Each model in `rm.models` starts from a causal LM's body with a new scalar head (AutoModelForSequenceClassification,
one label) and is trained on pairs in any format `deliberate dpo` reads:

- **reward** (Safe RLHF's reward model, or MODPO's margin): -log sigmoid(r(x, y_w) - r(x, y_l)), TRL's loss.
- **cost** (Safe RLHF's cost model, safe-rlhf `values/cost/trainer.py`): the pair is turned round so the less safe
  response must score higher, -log sigmoid(c(x, y_unsafer) - c(x, y_safer)), and where the data labels each
  response safe or unsafe (PKU-SafeRLHF's is_response_N_safe), - log sigmoid(s * c(x, y)) for each response with
  s = +1 for unsafe, -1 for safe: unsafe responses cost more than 0, safe ones less, so a cost threshold of 0
  reads "unsafe". A pair whose safer response is labelled unsafe while the other is safe contradicts itself and is
  left out (safe-rlhf refuses such data).
- `rm.regularization` adds regularization * mean(score^2) (safe-rlhf's score regulariser).

Pairs are split by a hash of the prompt (`rm.eval_fraction` held out) unless a model names its own `eval_data`;
a held-out prompt is never trained on. After training, the held-out pairs are scored through the classifier
judge's own scoring path, and the summary reports pair accuracy with a Wilson interval beside two baselines
(chance, and "the longer response wins"), the scores' spread, and for a cost model how often the sign of the
cost matches the label.

Outputs in `<output_dir>/rm/<name>/`: `model/` (full weights, the LoRA adapter merged, tokenizer, model card;
the config declares `score_scale: raw`, so stages on the 0-10 policy scale refuse it and RL reads its scalar),
`deliberate_rm.json` in it (kind, direction, held-out figures), `adapter/` with LoRA, `checkpoints/` and
`summary.json`. A model is `rm:<name>` wherever a judge model or MODPO margin is named.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from deliberate.config import Recipe, RewardModelSpec
from deliberate.errors import DeliberateError
from deliberate.judges.classifier import RM_FILE, classifier_scores
from deliberate.services.guard_data import hash_unit
from deliberate.services.models import resolve_model_path
from deliberate.services.preferences import load_preferences
from deliberate.services.provenance import model_card
from deliberate.services.runs import (
    Layout,
    fingerprint,
    model_identity,
    stage_model,
    without_lengths,
)
from deliberate.services.stats import wilson_rate
from deliberate.services.training import (
    lora_config,
    resume_point,
    save_trained,
    show_training_progress,
    trl_config,
)


def run_rm(recipe: Recipe, *, only: list[str] | None = None, resume: bool | str = False,
           show_progress: bool = True) -> list[dict[str, Any]]:
    """Train every model in `rm.models` (or the named ones); returns one summary per model."""
    names = [m.name for m in recipe.rm.models]
    for name in only or []:
        if name not in names:
            raise DeliberateError(f"rm: no model '{name}' (rm.models: {', '.join(names)})")
    return [train_reward_model(recipe, spec, resume=resume, show_progress=show_progress)
            for spec in recipe.rm.models if not only or spec.name in only]


def _prompt_text(row: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in row["prompt"])


def _response(messages: list[dict[str, str]]) -> str:
    return messages[-1]["content"]


def split_pairs(recipe: Recipe, spec: RewardModelSpec) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(training pairs, held-out pairs, what was read): the eval data when named, else a prompt-hash split; a
    training pair whose prompt is also held out is dropped."""
    rows, summary = load_preferences(recipe, spec.data, "paired")
    if spec.eval_data is not None:
        held, held_summary = load_preferences(recipe, spec.eval_data, "paired")
        summary = {**summary, "eval": held_summary}
    else:
        held = [r for r in rows if hash_unit(_prompt_text(r)) < recipe.rm.eval_fraction]
    held_prompts = {_prompt_text(r) for r in held}
    train = [r for r in rows if _prompt_text(r) not in held_prompts]
    if not train:
        raise DeliberateError(f"rm: model '{spec.name}': no training pairs left after holding out "
                              f"{len(held)} pairs; add data or lower rm.eval_fraction")
    if not held:
        raise DeliberateError(f"rm: model '{spec.name}': no held-out pairs ({len(rows)} pairs read); add data, raise "
                              "rm.eval_fraction or set eval_data")
    return train, held, {**summary, "train_pairs": len(train), "held_out_pairs": len(held),
                         "dropped_sharing_a_held_out_prompt": len(rows) - len(train) - (
                             0 if spec.eval_data is not None else len(held))}


def cost_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Pairs for a cost model: `chosen` is the less safe response (it must cost more), and each response's sign
    (+1 unsafe, -1 safe, 0 unlabelled); self-contradicting pairs are left out and counted."""
    out, contradictory = [], 0
    for r in rows:
        safer_safe, other_safe = r.get("chosen_safe"), r.get("rejected_safe")
        if safer_safe is False and other_safe is True:
            contradictory += 1
            continue
        sign = (lambda safe: 0.0 if safe is None else (-1.0 if safe else 1.0))  # noqa: E731
        out.append({"prompt": r["prompt"], "chosen": r["rejected"], "rejected": r["chosen"],
                    "chosen_sign": sign(other_safe), "rejected_sign": sign(safer_safe)})
    return out, contradictory


class SignedCollator(DataCollatorForPreference):
    """TRL's preference collator, also passing each response's cost sign."""

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        if "chosen_sign" in examples[0]:
            batch["signs"] = torch.tensor([e["chosen_sign"] for e in examples] + [e["rejected_sign"] for e in examples])
        return batch


class ScoreTrainer(RewardTrainer):
    """TRL's RewardTrainer with safe-rlhf's additions: the cost model's sign term and the score regulariser."""

    def __init__(self, *args, regularization: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.regularization = regularization

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "chosen_sign", "rejected_sign"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        signs = inputs.pop("signs", None)
        if signs is None and not self.regularization:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        scores = outputs.logits.squeeze(-1)
        if signs is not None:
            signs = signs.to(scores.device, scores.dtype)
            chosen, rejected = torch.chunk(-torch.nn.functional.logsigmoid(signs * scores) * (signs != 0), 2)
            loss = loss + (chosen + rejected).mean()  # per pair, as safe-rlhf sums its three terms
        if self.regularization:
            loss = loss + self.regularization * scores.square().mean()
        return (loss, outputs) if return_outputs else loss


def held_out_report(model, tokenizer, held: list[dict[str, Any]], kind: str, batch_size: int) -> dict[str, Any]:
    """Pair accuracy on the held-out pairs (Wilson interval), the length baseline, the scores' spread, and a cost
    model's sign agreement with the labels."""
    import numpy as np

    pairs = [(r["prompt"], _response(side)) for r in held for side in (r["chosen"], r["rejected"])]
    model.eval()
    scores = classifier_scores(model, tokenizer, pairs, batch_size)
    chosen, rejected = np.array(scores[0::2]), np.array(scores[1::2])
    # A reward model prefers the chosen response; a cost model charges the less safe (rejected) one more.
    correct = chosen > rejected if kind == "reward" else rejected > chosen
    first, second = ("chosen", "rejected") if kind == "reward" else ("rejected", "chosen")  # the one to score higher
    longer = [len(_response(r[first])) > len(_response(r[second])) for r in held]
    everything = np.concatenate([chosen, rejected])
    out: dict[str, Any] = {
        "pairs": len(held), "accuracy": wilson_rate(correct.tolist()).to_dict(),
        "baseline_longer_wins": wilson_rate(longer).to_dict(),
        "scores": {"mean": round(float(everything.mean()), 4), "std": round(float(everything.std()), 4),
                   "p05": round(float(np.percentile(everything, 5)), 4),
                   "p50": round(float(np.percentile(everything, 50)), 4),
                   "p95": round(float(np.percentile(everything, 95)), 4)},
    }
    if kind == "cost":
        labelled = [(s, safe) for r, c, rj in zip(held, chosen, rejected, strict=True)
                    for s, safe in ((c, r.get("chosen_safe")), (rj, r.get("rejected_safe"))) if safe is not None]
        if labelled:
            out["sign_accuracy"] = wilson_rate([(s > 0) == (not safe) for s, safe in labelled]).to_dict()
    return out


def train_reward_model(recipe: Recipe, spec: RewardModelSpec, *, resume: bool | str = False,
                       show_progress: bool = True) -> dict[str, Any]:
    from datasets import Dataset

    cfg = recipe.rm
    train, held, data_summary = split_pairs(recipe, spec)
    contradictory = 0
    rows = train
    if spec.kind == "cost":
        rows, contradictory = cost_rows(train)
    start = stage_model(recipe, spec.start) if spec.start else recipe.model.name
    start_path = resolve_model_path(start)
    run = Layout(recipe).rm(spec.name)
    settings = cfg.weight_settings(exclude={"models"})
    inputs = {"settings": settings, "spec": spec.model_dump(mode="json"), "start": model_identity(start_path),
              "seed": recipe.seed, "data": fingerprint(rows), "held_out": fingerprint(held),
              "model": recipe.model.loading()}
    fp = fingerprint(inputs)
    if reused := run.reusable(fp):
        return reused
    keep = ("prompt", "chosen", "rejected", "chosen_sign", "rejected_sign")
    dataset = Dataset.from_list([{k: r[k] for k in keep if k in r} for r in rows])
    args = trl_config(RewardConfig, recipe, cfg, run.checkpoints, logging_first_step=True,
                      remove_unused_columns=True,
                      model_init_kwargs={"dtype": "float32" if recipe.model.dtype == "auto" else recipe.model.dtype,
                                         "trust_remote_code": recipe.model.trust_remote_code})
    peft = None
    if cfg.lora:
        peft = lora_config(cfg)
        peft.task_type = "SEQ_CLS"  # the new score head is trained in full (modules_to_save)
    trainer = ScoreTrainer(model=start_path, args=args, train_dataset=dataset, peft_config=peft,
                           regularization=cfg.regularization,
                           data_collator=SignedCollator(pad_token_id=_pad_id(start_path)))
    if len(trainer.train_dataset) == 0:
        raise DeliberateError(f"rm: model '{spec.name}': all {len(rows)} training pairs are longer than "
                              f"rm.max_length={cfg.max_length} tokens; raise it")
    show_training_progress(trainer, f"rm {spec.name} ({spec.kind})", show_progress)
    checkpoint = resume_point(trainer, run, fingerprint({**inputs, "settings": without_lengths(settings)}), resume,
                              "rm")
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    model = trainer.accelerator.unwrap_model(trainer.model)
    report = held_out_report(model, trainer.processing_class, held, spec.kind, cfg.per_device_train_batch_size)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    meta = {"kind": spec.kind, "score_scale": "raw", "higher_is_better": spec.kind == "reward",
            "threshold": 0.0 if spec.kind == "cost" and any(r.get("chosen_sign") for r in rows) else None,
            "held_out": report}
    summary = {"fingerprint": fp, "model": f"rm:{spec.name}", "kind": spec.kind, "start": start,
               "start_path": start_path, "lora": cfg.lora, "data": data_summary,
               "examples": len(trainer.train_dataset), "longer_than_max_length": len(rows) - len(trainer.train_dataset),
               "contradictory_pairs_left_out": contradictory, "steps": trainer.state.global_step,
               "train_loss": round(result.training_loss, 4), "first_loss": logs[0]["loss"] if logs else None,
               "last_loss": logs[-1]["loss"] if logs else None, "seconds": round(seconds, 1),
               "resumed_from": checkpoint, "held_out": report}
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    config.score_scale = "raw"  # declared: the classifier judge reads it (stages on the 0-10 scale refuse it)
    config.deliberate_kind = spec.kind
    acc = report["accuracy"]
    direction = ("higher = better" if spec.kind == "reward" else
                 "higher = less safe" + (" (> 0: unsafe)" if meta["threshold"] is not None else ""))
    card = model_card(recipe, f"rm:{spec.name} ({spec.kind} model{', LoRA merged' if cfg.lora else ''})",
                      f"A {spec.kind} model trained by `deliberate rm` with TRL's RewardTrainer on "
                      f"{summary['examples']} pairs "
                      f"from {data_summary['source']}, starting from `{start}`. Scores are raw scalars, {direction}. "
                      f"Held-out pair accuracy {acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] on "
                      f"{report['pairs']} pairs whose prompts were never trained on.",
                      {"Held out": report, "Model": spec.model_dump(mode="json")}, base_model=start,
                      datasets=[data_summary["source"]], tags=["reward-model", spec.kind])
    save_trained(trainer, run, lora=cfg.lora, card=card, summary=summary, files={RM_FILE: meta})
    return summary


def _pad_id(path: str) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DeliberateError(f"rm: the tokenizer of {path} has neither a pad nor an end-of-sequence token")
    return pad
