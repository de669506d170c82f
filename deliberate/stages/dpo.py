"""`deliberate dpo`: offline preference optimisation with TRL: DPO, KTO, stepwise SACPO and MODPO.

A recipe's `dpo` section is one stage, or lists `stages` (SACPO: helpfulness DPO, then safety DPO or KTO whose
reference is the helpfulness model). Each stage starts from `start` (the previous stage's result by default),
which is also its reference: with LoRA the adapter-disabled model, with full fine-tuning a frozen copy.
A list of betas (or MODPO weights) trains one model per value; a stage after a swept one runs once per model.

- **DPO**: TRL DPOTrainer with `beta` and `loss_type` (any variant TRL offers).
- **KTO**: TRL KTOTrainer on desirable / undesirable examples (pairs are split into one of each); the
  undesirable weight defaults to n_desirable / n_undesirable, as SACPO does for absolute safe/unsafe labels.
- **MODPO** (Zhou et al.): on this stage's pairs, with weight w and a margin score m from a frozen scorer,
  L = -log sigmoid((beta / w) * [logratio(y_w) - logratio(y_l)] - ((1 - w) / w) * [m(x, y_w) - m(x, y_l)]).
  m is the implicit reward beta_m * (log pi_m - log pi_ref) of a frozen model (e.g. the safety DPO stage), or
  scores in the data (the judge scores of `deliberate pairs`). The loss is TRL's DPO sigmoid loss with beta / w
  and reference log-probabilities shifted by (1 - w) / beta * m, which is algebraically the formula above, so
  everything else (batching, PEFT, checkpoints, logging) is TRL's.

Outputs per trained model in `<output_dir>/dpo/<stage>/` (or `<stage>/<variant>/` for a sweep): `model/`
(full weights, the adapter merged with LoRA, plus tokenizer and a model card), `adapter/` (with LoRA),
`checkpoints/` (for `--resume`) and `summary.json`. A finished model whose inputs have not changed is reused.
"""

from __future__ import annotations

import time
from typing import Any

from trl import DPOConfig, DPOTrainer

from deliberate.config import DPOStage, JudgeConfig, Recipe
from deliberate.errors import DeliberateError
from deliberate.judges.base import Usage
from deliberate.judges.classifier import ClassifierBackend
from deliberate.services.models import resolve_model_path
from deliberate.services.preferences import load_preferences
from deliberate.services.provenance import model_card
from deliberate.services.runs import (
    Layout,
    ModelRun,
    fingerprint,
    model_identity,
    stage_model,
    stage_models,
    without_lengths,
)
from deliberate.services.training import (
    gather_digests,
    load_start,
    lora_config,
    resume_point,
    save_trained,
    show_training_progress,
    trl_config,
)


def run_dpo(recipe: Recipe, *, only: list[str] | None = None, resume: bool | str = False,
            show_progress: bool = True) -> list[dict[str, Any]]:
    """Train every stage (or the named ones) in order; returns one summary per model."""
    stages = recipe.dpo.stage_list()
    names = [s.name for s in stages]
    for name in only or []:
        if name not in names:
            raise DeliberateError(f"dpo: no stage '{name}' (stages: {', '.join(names)})")
    produced: dict[str, list[tuple[str, str]]] = {}  # stage -> [(variant, model folder)]
    summaries = []
    for i, stage in enumerate(stages):
        starts = _starts(recipe, stage, stages[i - 1].name if i else None, produced)
        produced[stage.name] = []
        data = load_preferences(recipe, stage.data, "unpaired" if stage.method == "kto" else "paired")
        for start_variant, start_path in starts:
            for variant, beta, weight in stage.sweep():
                full = "_".join(v for v in (start_variant, variant) if v)
                run = Layout(recipe).dpo(stage.name, full)
                if only and stage.name not in only:
                    if not run.finished:
                        raise DeliberateError(f"dpo: stage '{stage.name}' ({full or 'single model'}) has not been "
                                              "trained yet; run it first (drop --stage)")
                    produced[stage.name].append((full, str(run.model)))
                    continue
                summary = train_stage(recipe, stage, start_path, beta, weight, run, data, resume=resume,
                                      show_progress=show_progress, label=f"{stage.name}{'/' + full if full else ''}")
                produced[stage.name].append((full, str(run.model)))
                summaries.append(summary)
    return summaries


def _starts(recipe: Recipe, stage: DPOStage, previous: str | None,
            produced: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """(variant prefix, model) pairs the stage starts from."""
    if stage.start in (None, "previous") and previous is None:
        if stage.start == "previous":
            raise DeliberateError(f"dpo: stage '{stage.name}' starts from 'previous' but it is the first stage")
        return [("", recipe.model.name)]
    if stage.start in (None, "previous"):
        return produced[previous]  # type: ignore[index]
    if stage.start == "base":
        return [("", recipe.model.name)]
    if stage.start.startswith("stage:") and stage.start[6:].split("/")[0] in produced:
        name, _, variant = stage.start[6:].partition("/")
        models = [(v, p) for v, p in produced[name] if not variant or variant in ("*", v)]
        if not models:
            raise DeliberateError(f"dpo: stage '{stage.name}': start '{stage.start}' names no model of stage '{name}'")
        return [("", p) for _, p in models] if len(models) == 1 else models
    return [("", path) for _, path in stage_models(recipe, stage.start)]


def train_stage(recipe: Recipe, stage: DPOStage, start: str, beta: float, weight: float, run: ModelRun,
                data: tuple[list[dict[str, Any]], dict[str, Any]], *, resume: bool | str = False,
                show_progress: bool = True, label: str = "") -> dict[str, Any]:
    """Train one model of a stage into `run` on `data` (rows and their summary, from `load_preferences`);
    reused when finished with the same inputs."""
    rows, data_summary = data
    start_path = resolve_model_path(start)
    settings = stage.weight_settings(exclude={"stages", "name", "beta", "weight", "start"})
    margin_model = None
    if stage.method == "modpo" and stage.margin.kind == "reward_model":
        if not stage.margin.model:
            raise DeliberateError(f"dpo: stage '{stage.name}': MODPO with a reward-model margin needs "
                                  "dpo.margin.model (e.g. rm:safety, trained by `deliberate rm`)")
        margin_model = resolve_model_path(stage_model(recipe, stage.margin.model))
        margin_ref = None
    if stage.method == "modpo" and stage.margin.kind == "implicit":
        if not stage.margin.model:
            raise DeliberateError(f"dpo: stage '{stage.name}': MODPO with an implicit-reward margin needs "
                                  "dpo.margin.model (e.g. stage:safety)")
        margin_model = resolve_model_path(stage_model(recipe, stage.margin.model))
        margin_ref = resolve_model_path(stage_model(recipe, stage.margin.reference)) if stage.margin.reference \
            else start_path
    inputs = {
        "settings": settings, "beta": beta, "weight": weight, "start": model_identity(start_path), "seed": recipe.seed,
        "data": fingerprint(rows), "model": recipe.model.loading(),
        "margin": [model_identity(margin_model), model_identity(margin_ref)] if margin_model else None}
    fp = fingerprint(inputs)
    resume_fp = fingerprint({**inputs, "settings": without_lengths(settings)})
    if reused := run.reusable(fp):
        return reused
    if stage.method == "modpo":
        rows = _with_margins(recipe, stage, rows, margin_model, margin_ref if margin_model else None)
    trainer, extra = build_trainer(recipe, stage, start_path, rows, beta, weight, run, show_progress,
                                   label or stage.name)
    checkpoint = resume_point(trainer, run, resume_fp, resume, "dpo")
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    logs = [e for e in trainer.state.log_history if "loss" in e]
    summary = {"fingerprint": fp, "stage": stage.name, "model": label or stage.name,
               "method": stage.method, "start": start, "start_path": start_path, "beta": beta,
               "weight": weight if stage.method == "modpo" else None, "lora": stage.lora, "data": data_summary,
               "examples": len(trainer.train_dataset), "steps": trainer.state.global_step,
               "train_loss": round(result.training_loss, 4), "first_loss": logs[0]["loss"] if logs else None,
               "last_loss": logs[-1]["loss"] if logs else None,
               "reward_accuracy": next((e[k] for e in reversed(logs) for k in ("rewards/accuracies",) if k in e), None),
               "seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(trainer.state.global_step, 1), 3),
               "resumed_from": checkpoint, **extra}
    summary["weights_digest_per_rank"] = gather_digests(trainer.model)  # every rank's weights: equal under DDP
    what = {"dpo": "DPO", "kto": "KTO", "modpo": "MODPO"}[stage.method]
    w = f", w = {weight}" if stage.method == "modpo" else ""
    card = model_card(recipe, f"{summary['model']} ({what}{', LoRA merged' if stage.lora else ''})",
                      f"Started from `{start}` (also the reference model). Trained by `deliberate dpo` with TRL on "
                      f"{summary['examples']} examples from {data_summary['source']}: beta = {beta}{w}, "
                      f"{summary['steps']} steps, final training loss {summary['train_loss']}.",
                      {"Stage": stage.model_dump(mode="json", exclude={"stages"})}, base_model=start_path,
                      datasets=[data_summary["source"]], tags=[stage.method])
    # `model/` holds full weights (LoRA merged), so later stages, merges and evals can load it.
    save_trained(trainer, run, lora=stage.lora, card=card, summary=summary)  # every process; the main one writes
    return summary


def build_trainer(recipe: Recipe, stage: DPOStage, start: str, rows: list[dict[str, Any]], beta: float,
                  weight: float, run: ModelRun, show_progress: bool = True, label: str = "dpo"):
    """The TRL trainer for one model of a stage (no training yet), and facts for the summary."""
    from datasets import Dataset

    loaded = load_start(recipe, start, trainable=True, quantization=stage.quantization)
    common = {"logging_first_step": True, "remove_unused_columns": True}
    peft_config = lora_config(stage) if stage.lora else None
    # Full fine-tuning: the reference is a frozen copy of the start model, loaded explicitly (TRL would reload
    # it from the config's name, which is the base for a merged adapter). With precomputed reference
    # log-probabilities (always for MODPO) TRL takes them from the model before training instead.
    precompute = stage.precompute_ref_log_probs or stage.method == "modpo"
    ref_model = None
    if not stage.lora and not precompute:
        ref_model = load_start(recipe, start, trainable=False).model
    extra: dict[str, Any] = {}
    if stage.method == "kto":
        from trl import KTOConfig, KTOTrainer

        n_good = sum(bool(r["label"]) for r in rows)
        n_bad = len(rows) - n_good
        if not n_good or not n_bad:
            raise DeliberateError(f"dpo: stage '{stage.name}': KTO needs desirable and undesirable examples "
                                  f"(got {n_good} and {n_bad})")
        undesirable = stage.undesirable_weight or n_good / n_bad
        loss = stage.loss_type[0] if stage.loss_type[0] in ("kto", "apo_zero_unpaired") else "kto"
        args = trl_config(KTOConfig, recipe, stage, run.checkpoints, **common, beta=beta, loss_type=loss,
                          undesirable_weight=undesirable, precompute_ref_log_probs=precompute)
        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"], "label": bool(r["label"])}
                                  for r in rows])
        trainer = KTOTrainer(model=loaded.model, ref_model=ref_model, args=args, train_dataset=data,
                             processing_class=loaded.tokenizer, peft_config=peft_config)
        show_training_progress(trainer, _description(stage, label), show_progress)
        extra = {"desirable": n_good, "undesirable": n_bad, "desirable_weight": stage.desirable_weight,
                 "undesirable_weight": round(undesirable, 6), "loss_type": loss}
        return trainer, extra
    keep = ("prompt", "chosen", "rejected", "margin_chosen", "margin_rejected")
    data = Dataset.from_list([{k: r[k] for k in keep if k in r} for r in rows])
    if stage.method == "modpo":
        if stage.loss_type != ["sigmoid"]:
            raise DeliberateError(f"dpo: stage '{stage.name}': MODPO uses the sigmoid loss; drop dpo.loss_type")
        args = trl_config(DPOConfig, recipe, stage, run.checkpoints, **common, beta=beta / weight,
                          loss_type=["sigmoid"], precompute_ref_log_probs=True)
        trainer = MODPOTrainer(model=loaded.model, args=args, train_dataset=data, processing_class=loaded.tokenizer,
                               peft_config=peft_config, modpo_beta=beta, modpo_weight=weight)
        show_training_progress(trainer, _description(stage, label), show_progress)
        extra = {"margin": stage.margin.kind, "margin_model": stage.margin.model}
        return trainer, extra
    args = trl_config(DPOConfig, recipe, stage, run.checkpoints, **common, beta=beta,
                      precompute_ref_log_probs=precompute)
    trainer = DPOTrainer(model=loaded.model, ref_model=ref_model, args=args, train_dataset=data,
                         processing_class=loaded.tokenizer, peft_config=peft_config)
    show_training_progress(trainer, _description(stage, label), show_progress)
    return trainer, {"loss_type": stage.loss_type}


def _description(stage: DPOStage, label: str) -> str:
    return stage.method if label == stage.method else f"{stage.method} ({label})"


class MODPOTrainer(DPOTrainer):
    """DPO whose reference log-probabilities carry the margin. With TRL's beta set to beta / w,
    (beta / w) * [(lp_w - ref_w - k m_w) - (lp_l - ref_l - k m_l)] with k = (1 - w) / beta is exactly MODPO's
    (beta / w) * [logratio_w - logratio_l] - ((1 - w) / w) * [m_w - m_l]."""

    def __init__(self, *args, modpo_beta: float, modpo_weight: float, **kwargs):
        self.modpo_beta = modpo_beta
        self.modpo_weight = modpo_weight
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        dataset = super()._precompute_ref_logps(dataset, name, batch_size)
        if "margin_chosen" not in dataset.column_names:
            raise DeliberateError("MODPO: the data has no margin_chosen / margin_rejected columns")
        k = (1.0 - self.modpo_weight) / self.modpo_beta

        def shift(batch):
            return {side: [r + k * m for r, m in zip(batch[side], batch[margin], strict=True)]
                    for side, margin in (("ref_chosen_logps", "margin_chosen"),
                                         ("ref_rejected_logps", "margin_rejected"))}

        return dataset.map(shift, batched=True, desc="Adding the MODPO margin")


def _with_margins(recipe: Recipe, stage: DPOStage, rows: list[dict[str, Any]], margin_model: str | None,
                  margin_ref: str | None) -> list[dict[str, Any]]:
    """Rows with `margin_chosen` / `margin_rejected`: judge scores from columns, or the implicit reward."""
    m = stage.margin
    if m.kind == "columns":
        missing = [c for c in (m.chosen_column, m.rejected_column) if c not in rows[0]]
        if missing:
            raise DeliberateError(f"dpo: stage '{stage.name}': MODPO margin columns {', '.join(missing)} are not in "
                                  f"the data (it has {', '.join(rows[0])})")
        return [{**r, "margin_chosen": m.scale * float(r[m.chosen_column]),
                 "margin_rejected": m.scale * float(r[m.rejected_column])} for r in rows]
    if m.kind == "reward_model":
        return _reward_model_margins(rows, margin_model, m.scale)
    scorer = load_start(recipe, margin_model, trainable=False)
    reference = load_start(recipe, margin_ref, trainable=False)
    texts = [(r["prompt"], r["chosen"]) for r in rows] + [(r["prompt"], r["rejected"]) for r in rows]
    diff = [a - b for a, b in zip(sequence_logps(scorer.model, scorer.tokenizer, texts),
                                  sequence_logps(reference.model, reference.tokenizer, texts), strict=True)]
    n = len(rows)
    return [{**r, "margin_chosen": m.scale * m.beta * diff[i], "margin_rejected": m.scale * m.beta * diff[n + i]}
            for i, r in enumerate(rows)]


def _reward_model_margins(rows: list[dict[str, Any]], path: str, scale: float) -> list[dict[str, Any]]:
    """m(x, y) = scale * r(x, y) of a sequence-classification reward model, scored by the classifier judge itself;
    a cost model from `deliberate rm` (its deliberate_rm.json says `kind: cost`, higher = less safe) enters
    negated, as the harmlessness reward -c(x, y)."""
    scorer = ClassifierBackend(Usage(), JudgeConfig(backend="classifier", model=path, max_concurrency=8,
                                                    higher_is_better=False))
    if scorer.model_kind == "cost":
        scale = -scale
    pairs = [(r["prompt"], r[side][-1]["content"]) for side in ("chosen", "rejected") for r in rows]
    scores = scorer.scores(pairs)
    n = len(rows)
    return [{**r, "margin_chosen": scale * scores[i], "margin_rejected": scale * scores[n + i]}
            for i, r in enumerate(rows)]


def sequence_logps(model, tokenizer, items: list[tuple[list[dict], list[dict]]], batch_size: int = 8) -> list[float]:
    """log p(completion | prompt) summed over the completion's tokens, with the chat template (as TRL renders
    conversational preference data: prompt with the generation prompt, then prompt + completion)."""
    import torch

    out: list[float] = []
    device = next(model.parameters()).device
    for start in range(0, len(items), batch_size):
        seqs, masks = [], []
        for prompt, completion in items[start : start + batch_size]:
            p = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
            full = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)
            p_ids, ids = list(p["input_ids"]), list(full["input_ids"])
            cut = next((i for i, (a, b) in enumerate(zip(p_ids, ids, strict=False)) if a != b), min(len(p_ids), len(ids)))
            seqs.append(ids)
            masks.append([0] * cut + [1] * (len(ids) - cut))
        width = max(map(len, seqs))
        pad = tokenizer.pad_token_id or 0
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        completion = torch.tensor([mk + [0] * (width - len(mk)) for mk in masks], device=device)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
        logps = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        out += (logps * completion[:, 1:]).sum(-1).tolist()
    return out
