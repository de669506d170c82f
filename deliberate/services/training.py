"""What the training verbs (sft, dpo, rl) share: TRL configs, LoRA settings, saving, progress, distributed runs.

Every verb runs as is on one device and under `accelerate launch` (DDP, FSDP, DeepSpeed; configs in
`recipes/accelerate/`). Under several processes only the main process writes outputs, and the others wait for it
(`main_process_first`); `weights_digest` lets a run record that every rank ended with the same weights.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from deliberate.config import Recipe, TrainingOptions
from deliberate.services.io import replace_dir
from deliberate.services.models import load_model, pick_device
from deliberate.services.progress import TrainingBar
from deliberate.services.runs import ModelRun, mark_checkpoint


def use_bf16(setting: bool | None, on_cpu: bool) -> bool:
    """Mixed precision for a trainer: the recipe's choice, else bfloat16 on a GPU that supports it."""
    import torch

    if setting is not None:
        return setting
    return not on_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def on_cpu(recipe: Recipe) -> bool:
    return pick_device(recipe.model.device) == "cpu"


def trl_config(config_class: type, recipe: Recipe, section: TrainingOptions, output_dir: Path,
               **values: Any) -> Any:
    """A TRL config (`SFTConfig`, `DPOConfig`, `KTOConfig`, `GRPOConfig`, `RLOOConfig`) for a training section.

    Every field of the section that the config has, under its own name or the one in `section.TRL_NAMES`, is
    passed as it is, except the ones deliberate reads itself (`section.OWN_FIELDS`); then the settings every
    stage shares (device, precision, seeds, checkpoints, our own progress display); then `values`, what the
    stage computes (a swept beta, batch sizes derived from the step size, ...)."""
    accepted = {f.name for f in dataclasses.fields(config_class)}
    passed = {}
    for name in type(section).model_fields:
        target = section.TRL_NAMES.get(name, name)
        if name not in section.OWN_FIELDS and target in accepted:
            passed[target] = getattr(section, name)
    cpu = on_cpu(recipe)
    shared = dict(output_dir=str(output_dir), save_strategy="steps", save_total_limit=2, report_to=[],
                  disable_tqdm=True, use_cpu=cpu, bf16=use_bf16(section.bf16, cpu), seed=recipe.seed,
                  data_seed=recipe.seed, dataloader_num_workers=0)
    return config_class(**{**passed, **shared, **values})


def show_training_progress(trainer, description: str, show_progress: bool) -> None:
    """Replace the trainer's tqdm bar and printed log dicts with one rich bar (steps, loss, rate), or nothing."""
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    if show_progress:
        trainer.add_callback(RichProgress(description))


def resume_point(trainer, run: ModelRun, fingerprint: str, resume: bool, verb: str) -> str | None:
    """Make the trainer mark every checkpoint it saves with the run's fingerprint, and return the checkpoint to
    resume from (`ModelRun.last_checkpoint`: the newest complete one of this same run), or None."""
    trainer.add_callback(MarkCheckpoints(fingerprint))
    return run.last_checkpoint(resume, verb, fingerprint)


class MarkCheckpoints(TrainerCallback):
    """Writes `deliberate_checkpoint.json` into each checkpoint once the trainer has saved all of it."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            mark_checkpoint(folder, self.fingerprint)


class RichProgress(TrainerCallback):
    """A TRL trainer's optimizer steps and last loss as a `TrainingBar`, on the main process only."""

    def __init__(self, description: str):
        self.description, self.bar = description, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = TrainingBar(self.description, state.max_steps, start=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.update(state.global_step, loss=logs["loss"])

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def lora_config(section: TrainingOptions):
    """peft's LoraConfig for a section's LoRA settings."""
    from peft import LoraConfig

    return LoraConfig(r=section.lora_r, lora_alpha=section.lora_alpha, lora_dropout=section.lora_dropout,
                      target_modules=section.lora_target_modules, task_type="CAUSAL_LM")


def load_start(recipe: Recipe, path: str, trainable: bool):
    """A stage's start model with full weights (an adapter folder is merged into its base, so the merged model
    is also the reference), loaded with the recipe's model settings; frozen unless `trainable`."""
    cfg = recipe.model.model_copy(update={"name": path, "base": None, "revision": None, "dtype": "auto"})
    loaded = load_model(cfg, for_training=trainable)
    if loaded.base_path:
        loaded.model = loaded.model.merge_and_unload()
    if not trainable:
        loaded.model.eval().requires_grad_(False)
    return loaded


def save_trained(trainer, run: ModelRun, *, lora: bool, card: str, summary: dict[str, Any],
                 files: dict[str, Any] | None = None) -> None:
    """`save_policy` for a TRL trainer, called on every process: `trainer.save_model` runs everywhere (under FSDP
    or ZeRO-3 it gathers the sharded weights) and the main process writes; the others wait for it. With LoRA
    the gathered adapter is saved as is, and the merge into full weights happens on the main process. `files`
    (name -> JSON) are written into the model folder before it is put in place."""
    tokenizer = trainer.processing_class
    saved = run.folder / ("adapter.tmp" if lora else "model.tmp")
    trainer.save_model(str(saved))
    with main_process_first() as main:
        if not main:
            return
        (saved / "training_args.bin").unlink(missing_ok=True)  # a pickle: the recipe in the model card says it all
        tokenizer.save_pretrained(str(saved))
        if not lora:
            run.finish(saved, summary, card, files)
            return
        replace_dir(saved, run.adapter)
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        tmp = run.folder / "model.tmp"
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        run.finish(tmp, summary, card, files)


def save_policy(model, tokenizer, run: ModelRun, *, lora: bool, card: str, summary: dict[str, Any]) -> None:
    """Write the run's `model/` (full weights: a LoRA adapter is merged) and, with LoRA, its `adapter/`, each
    into a temporary folder renamed when complete; the marker holding the summary is written last."""
    if lora:
        adapter_tmp = run.folder / "adapter.tmp"
        model.save_pretrained(str(adapter_tmp))
        tokenizer.save_pretrained(str(adapter_tmp))
        replace_dir(adapter_tmp, run.adapter)
        model = model.merge_and_unload()
    tmp = run.folder / "model.tmp"
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    run.finish(tmp, summary, card)


def world() -> tuple[int, int]:
    """(this process's rank, number of processes) as `accelerate launch` / torchrun set them."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return world()[0] == 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[bool]:
    """Run the block on the main process first (it writes), then on the others (they read what it wrote)."""
    main = is_main_process()
    if not main:
        barrier()
    try:
        yield main
    finally:
        if main:
            barrier()


def weights_digest(model) -> str:
    """A short fingerprint of a model's trainable weights (sum and sum of squares in float64)."""
    import torch

    total = torch.zeros(2, dtype=torch.float64)
    for p in model.parameters():
        if p.requires_grad:
            v = p.detach().to("cpu", torch.float64)
            total += torch.stack([v.sum(), (v * v).sum()])
    return f"{total[0].item():.10e}/{total[1].item():.10e}"


def gather_digests(model) -> list[str]:
    """Every rank's `weights_digest` (one entry on a single process): equal entries mean the ranks agree."""
    import torch.distributed as dist

    digest = weights_digest(model)
    if not (dist.is_available() and dist.is_initialized()):
        return [digest]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, digest)
    return out


def mean_or_none(values, digits: int = 4) -> float | None:
    """The mean of the values that are not None, rounded; None when there are none."""
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), digits) if values else None
