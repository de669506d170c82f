"""`deliberate sft`: supervised fine-tuning on the spec-stripped reasoning data, with TRL's SFTTrainer.

`sft_dataset` writes the completions `deliberate filter` kept in TRL's conversational prompt/completion format
with the system prompt (and so the spec) removed: the model must learn to recall the policy itself. TRL renders
the data with the model's own chat template and computes the loss on the completion (assistant) tokens only.
LoRA by default, full fine-tuning with `sft.lora: false`.

Input: `<output_dir>/filter/kept.jsonl`. Outputs: `<output_dir>/sft_data/train.jsonl` and the trained model in
`<output_dir>/sft/` (`model/` with full weights, tokenizer and a model card; `adapter/` with LoRA;
`checkpoints/` for `--resume`; `summary.json`). A finished run whose data and settings have not changed is
reused; `stage:sft` names its model in later stages.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from deliberate.config import Recipe
from deliberate.errors import DeliberateError
from deliberate.services.io import read_jsonl, require_keys, write_jsonl
from deliberate.services.models import load_model, resolve_model_path, weights_config
from deliberate.services.provenance import model_card
from deliberate.services.reasoning import CLOSE, OPEN
from deliberate.services.runs import Layout, file_digest, fingerprint, for_resume, model_identity
from deliberate.services.training import (
    gather_digests,
    lora_config,
    resume_point,
    save_trained,
    show_training_progress,
    trl_config,
)


def sft_fingerprint(recipe: Recipe, data_path: Path) -> str:
    return fingerprint({"data": file_digest(data_path), "sft": recipe.sft.weight_settings(), "seed": recipe.seed,
                        "model": {"name": recipe.model.name, **recipe.model.loading()}, "weights": model_identity(resolve_model_path(recipe.model.name))})


def build_trainer(recipe: Recipe, data_path: Path, show_progress: bool = True):
    """The TRL SFTTrainer for this recipe and data (no training yet)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cfg = recipe.sft
    rows = read_jsonl(data_path)
    if not rows:
        raise DeliberateError(f"sft: {data_path} is empty")
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    loaded = load_model(weights_config(recipe.model, dtype="auto"), for_training=True,
                        quantization=cfg.quantization)
    args = trl_config(SFTConfig, recipe, cfg, Layout(recipe).sft.checkpoints, completion_only_loss=True,
                      packing=False)
    trainer = SFTTrainer(model=loaded.model, args=args, train_dataset=dataset, processing_class=loaded.tokenizer,
                         peft_config=lora_config(cfg) if cfg.lora else None)
    show_training_progress(trainer, "sft", show_progress)
    return trainer, loaded


def run_sft(recipe: Recipe, data_path: Path, *, resume: bool | str = False, show_progress: bool = True) -> dict[str, Any]:
    """Train (or reuse a finished run with the same data and settings); returns the run's summary."""
    run = Layout(recipe).sft
    fp = sft_fingerprint(recipe, data_path)
    if reused := run.reusable(fp):
        return reused
    trainer, loaded = build_trainer(recipe, data_path, show_progress)
    checkpoint = resume_point(trainer, run, sft_fingerprint(for_resume(recipe, "sft"), data_path), resume, "sft")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    summary = {"fingerprint": fp, "examples": len(trainer.train_dataset), "lora": recipe.sft.lora,
               "base_model": recipe.model.name, "base_path": loaded.path, "steps": trainer.state.global_step,
               "train_loss": round(result.training_loss, 4), "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None, "seconds": round(seconds, 1),
               "resumed_from": checkpoint, "weights_digest_per_rank": gather_digests(trainer.model)}
    kind = "LoRA, merged" if recipe.sft.lora else "full fine-tune"
    card = model_card(recipe, f"deliberative SFT ({kind})",
                      f"Base model: `{recipe.model.name}`. Trained by `deliberate sft` on {summary['examples']} "
                      "spec-stripped reasoning completions (TRL SFTTrainer, loss on assistant tokens only), "
                      f"{summary['steps']} steps, final training loss {summary['train_loss']}.",
                      base_model=loaded.path, datasets=[recipe.data.source], tags=["sft", "deliberative-alignment"])
    save_trained(trainer, run, lora=recipe.sft.lora, card=card, summary=summary)  # every process; the main one writes
    return summary


def assistant_target(row: dict[str, Any], keep_reasoning: bool) -> str:
    if keep_reasoning and row.get("reasoning"):
        return f"{OPEN}\n{row['reasoning']}\n{CLOSE}\n{row['answer']}"
    return row["answer"]


def sft_dataset(recipe: Recipe) -> Path:
    """The kept completions as TRL conversational prompt/completion rows, with no system prompt (spec stripped)."""
    layout = Layout(recipe)
    source = Path(recipe.sft.kept) if recipe.sft.kept else layout.filter / "kept.jsonl"
    if not source.exists():
        raise DeliberateError(f"sft: {source} does not exist; run `deliberate filter` first"
                              if not recipe.sft.kept else f"sft.kept: {source} does not exist")
    kept = read_jsonl(source)
    if not kept:
        raise DeliberateError(f"sft: {source} has no completions; lower filter.threshold or sample more")
    require_keys(kept, ("id", "prompt", "answer"), source, " (it is not a kept.jsonl written by `deliberate filter`)")
    for n, r in enumerate(kept, 1):
        if not isinstance(r["prompt"], str) or not isinstance(r["answer"], str) or not r["answer"].strip():
            raise DeliberateError(f"{source}: row {n}: prompt and answer must be text (the answer not empty)")
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": assistant_target(r, recipe.sft.keep_reasoning)}],
             "id": r["id"], "category": r.get("category")} for r in kept]
    return write_jsonl(layout.sft_data / "train.jsonl", rows)
