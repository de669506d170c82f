"""`deliberate sft`: supervised fine-tuning on the spec-stripped reasoning data, with TRL's SFTTrainer.

`sft_dataset` writes the completions `deliberate filter` kept in TRL's conversational prompt/completion format
with the system prompt (and so the spec) removed: the model must learn to recall the policy itself. The data (`sft_data/train.jsonl`) is conversational prompt/completion: TRL renders it with the model's own chat
template and computes the loss on the completion (assistant) tokens only. LoRA by default, full fine-tuning with
`sft.lora: false`. Outputs in `<output_dir>/sft/`: `checkpoints/` (for `--resume`), `model/` (the adapter, or
the full model, with its tokenizer and a model card that records the recipe), `merged/` with
`sft.save_merged`, and `summary.json`. A finished run whose data and settings have not changed is reused.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from deliberate.config import Recipe
from deliberate.errors import DeliberateError
from deliberate.services.io import atomic_write_text, read_jsonl, replace_dir, write_json, write_jsonl
from deliberate.services.reasoning import CLOSE, OPEN
from deliberate.services.training import (
    gather_digests,
    last_checkpoint,
    lora_config,
    main_process_first,
    trainer_args,
)

DONE = "deliberate_sft.json"


def sft_paths(recipe: Recipe) -> dict[str, Path]:
    root = Path(recipe.output_dir) / "sft"
    return {"root": root, "checkpoints": root / "checkpoints", "model": root / "model", "merged": root / "merged"}


def _fingerprint(recipe: Recipe, data_path: Path) -> str:
    blob = {"data": hashlib.sha256(data_path.read_bytes()).hexdigest(), "sft": recipe.sft.model_dump(),
            "model": recipe.model.model_dump(), "seed": recipe.seed}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def is_done(recipe: Recipe, data_path: Path) -> bool:
    marker = sft_paths(recipe)["model"] / DONE
    return marker.is_file() and json.loads(marker.read_text())["fingerprint"] == _fingerprint(recipe, data_path)


def build_trainer(recipe: Recipe, data_path: Path, show_progress: bool = True):
    """The TRL SFTTrainer for this recipe and data (no training yet)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from deliberate.services.models import load_model

    cfg = recipe.sft
    rows = read_jsonl(data_path)
    if not rows:
        raise DeliberateError(f"sft: {data_path} is empty")
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    loaded = load_model(recipe.model.model_copy(update={"dtype": "auto"}), for_training=True)
    args = SFTConfig(**trainer_args(
        recipe, cfg, sft_paths(recipe)["checkpoints"], show_progress,
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, max_length=cfg.max_length,
        completion_only_loss=True, packing=False, save_steps=cfg.save_steps))
    return SFTTrainer(model=loaded.model, args=args, train_dataset=dataset, processing_class=loaded.tokenizer,
                      peft_config=lora_config(cfg) if cfg.lora else None), loaded


def run_sft(recipe: Recipe, data_path: Path, *, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    paths = sft_paths(recipe)
    fingerprint = _fingerprint(recipe, data_path)
    trainer, loaded = build_trainer(recipe, data_path, show_progress)
    checkpoint = last_checkpoint(paths["checkpoints"], resume, "sft")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    # Save into a temporary folder and rename, so `model/` is either the old complete model or the new one.
    # trainer.save_model runs on every process (sharded models gather their weights); the main one writes.
    tmp = paths["model"].with_name("model.tmp")
    trainer.save_model(str(tmp))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    summary = {"fingerprint": fingerprint, "examples": len(trainer.train_dataset), "lora": recipe.sft.lora,
               "base_model": recipe.model.name, "base_path": loaded.path, "steps": trainer.state.global_step,
               "train_loss": round(result.training_loss, 4), "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None, "seconds": round(seconds, 1),
               "resumed_from": checkpoint, "weights_digest_per_rank": gather_digests(trainer.model)}
    with main_process_first() as main:
        if not main:
            return summary
        loaded.tokenizer.save_pretrained(str(tmp))
        atomic_write_text(tmp / "README.md", model_card(recipe, summary))
        write_json(tmp / DONE, summary)
        replace_dir(tmp, paths["model"])
        if recipe.sft.save_merged and recipe.sft.lora:
            merged_tmp = paths["merged"].with_name("merged.tmp")
            trainer.model.merge_and_unload().save_pretrained(str(merged_tmp))
            loaded.tokenizer.save_pretrained(str(merged_tmp))
            atomic_write_text(merged_tmp / "README.md", model_card(recipe, summary))
            replace_dir(merged_tmp, paths["merged"])
        write_json(paths["root"] / "summary.json", summary)
    return summary


def model_card(recipe: Recipe, summary: dict[str, Any]) -> str:
    import yaml

    kind = "LoRA adapter" if recipe.sft.lora else "full fine-tune"
    return (f"# {recipe.name}: deliberative SFT ({kind})\n\n"
            f"Base model: `{recipe.model.name}`. Trained by `deliberate sft` on {summary['examples']} "
            f"spec-stripped reasoning completions (TRL SFTTrainer, loss on assistant tokens only), "
            f"{summary['steps']} steps, final training loss {summary['train_loss']}.\n\n"
            "## Recipe\n\n```yaml\n" + yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False) + "```\n")


def assistant_target(row: dict[str, Any], keep_reasoning: bool) -> str:
    if keep_reasoning and row.get("reasoning"):
        return f"{OPEN}\n{row['reasoning']}\n{CLOSE}\n{row['answer']}"
    return row["answer"]


def sft_dataset(recipe: Recipe) -> Path:
    """The kept completions as TRL conversational prompt/completion rows, with no system prompt (spec stripped)."""
    source = Path(recipe.output_dir) / "filter" / "kept.jsonl"
    if not source.exists():
        raise DeliberateError(f"sft: {source} does not exist; run `deliberate filter` first")
    kept = read_jsonl(source)
    if not kept:
        raise DeliberateError(f"sft: {source} has no completions; lower filter.threshold or sample more")
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": assistant_target(r, recipe.sft.keep_reasoning)}],
             "id": r["id"], "category": r.get("category")} for r in kept]
    return write_jsonl(Path(recipe.output_dir) / "sft_data" / "train.jsonl", rows)
