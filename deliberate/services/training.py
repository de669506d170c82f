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
from deliberate.config.training import SET_BY_DELIBERATE
from deliberate.errors import DeliberateError, did_you_mean
from deliberate.services.io import replace_dir
from deliberate.services.models import (
    adapter_base,
    load_model,
    pick_device,
    resolve_model_path,
    sharded_training,
    weights_config,
)
from deliberate.services.progress import TrainingBar
from deliberate.services.provenance import Card
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
    """A TRL config (`SFTConfig`, `DPOConfig`, `KTOConfig`, `GRPOConfig`, `RLOOConfig`, `RewardConfig`) for a
    training section.

    Every field of the section that the config has, under its own name or the one in `section.TRL_NAMES`, is
    passed as it is, except the ones deliberate reads itself (`section.OWN_FIELDS`); then the section's
    `trainer_args` (checked against the config's fields when the recipe was loaded); then the settings every
    stage shares (device, precision, seeds, checkpoints, our own progress display, the run's name); then
    `values`, what the stage computes (a swept beta, batch sizes derived from the step size, ...). A
    `trainer_args` entry that a stage computes is refused rather than silently overridden."""
    accepted = {f.name for f in dataclasses.fields(config_class)}
    passed = {}
    for name in type(section).model_fields:
        target = section.TRL_NAMES.get(name, name)
        if name not in section.OWN_FIELDS and target in accepted:
            passed[target] = getattr(section, name)
    cpu = on_cpu(recipe)
    shared = dict(output_dir=str(output_dir), save_strategy="steps", save_total_limit=2, disable_tqdm=True,
                  use_cpu=cpu, bf16=use_bf16(section.bf16, cpu), seed=recipe.seed, data_seed=recipe.seed,
                  dataloader_num_workers=0, run_name=section.run_name or run_label(recipe, output_dir))
    if section.trainer_args and (problem := trainer_args_error(section)):
        raise DeliberateError(problem)
    if clash := sorted(set(section.trainer_args) & set(values)):
        raise DeliberateError(f"trainer_args.{clash[0]}: this stage sets it itself ({values[clash[0]]!r})")
    try:
        return config_class(**{**passed, **section.trainer_args, **shared, **values})
    except (ValueError, TypeError) as e:
        if not section.trainer_args:
            raise
        raise DeliberateError(f"trainer_args: {config_class.__name__} refused them: {e}") from None


def trainer_args_error(section: TrainingOptions) -> str | None:
    """What is wrong with a section's `trainer_args` (each must be a field of every TRL config the section
    builds, and neither one the section has nor one deliberate sets), or None."""
    import trl

    configs = section.trl_configs()
    if section.trainer_args and not configs:
        return "trainer_args: this section does not build a TRL config (deliberate's own PPO reads only its own fields)"
    accepted = set.intersection(*({f.name for f in dataclasses.fields(getattr(trl, c))} for c in configs)) \
        if configs else set()
    mirrored = {section.TRL_NAMES.get(n, n): n for n in type(section).model_fields}
    for name in section.trainer_args:
        if name in mirrored:
            return f"trainer_args.{name}: the section has this setting; set {mirrored[name]} instead"
        if name in SET_BY_DELIBERATE or name in section.COMPUTED:
            return f"trainer_args.{name}: deliberate sets this itself"
        if name not in accepted:
            return f"trainer_args.{name}: not a field of {' / '.join(configs)}; {did_you_mean(name, accepted)}".rstrip("; ")
    return None


def check_trainer_args(recipe: Recipe) -> None:
    """Every training section's `trainer_args` checked against TRL's configs, before any work starts (the CLI
    calls this when it loads a recipe); one `error:` line naming the section."""
    sections = [("sft", recipe.sft), ("rl", recipe.rl), ("rm", recipe.rm)] + [
        (f"dpo.stages[{s.name}]" if recipe.dpo.stages else "dpo", s) for s in recipe.dpo.stage_list()]
    for where, section in sections:
        if section.trainer_args and (problem := trainer_args_error(section)):
            raise DeliberateError(f"{where}.{problem}")


def run_label(recipe: Recipe, folder: Path) -> str:
    """`<recipe name>-<stage path>` for a stage's folder (or its `checkpoints/`): e.g. `demo-dpo-safe-beta0.1`."""
    folder = Path(folder)
    if folder.name == "checkpoints":
        folder = folder.parent
    try:
        parts = folder.resolve().relative_to(Path(recipe.output_dir).resolve()).parts
    except ValueError:
        parts = (folder.name,)
    return "-".join((recipe.name, *parts))


def show_training_progress(trainer, description: str, show_progress: bool) -> None:
    """Replace the trainer's tqdm bar and printed log dicts with one rich bar (steps, loss, rate), or nothing."""
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    if show_progress:
        trainer.add_callback(RichProgress(description))


def resume_point(trainer, run: ModelRun, fingerprint: str, resume: bool | str, verb: str) -> str | None:
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


def load_start(recipe: Recipe, path: str, trainable: bool, quantization: str | None = None):
    """A stage's start model with full weights (an adapter folder is merged into its base, so the merged model
    is also the reference), loaded with the recipe's model settings; frozen unless `trainable`. A trainable
    one is placed as `placement` says (not at all under FSDP / ZeRO-3: the trainer shards it); `quantization`
    (`4bit`, `8bit`: QLoRA, so the section must train a LoRA adapter) is `load_model`'s."""
    own = path == recipe.model.name  # the recipe's model: its revision applies; a stage's output has none
    cfg = weights_config(recipe.model, path, base=None, revision=recipe.model.revision if own else None, dtype="auto")
    resolved = resolve_model_path(path)
    if quantization and Path(resolved).is_dir() and adapter_base(resolved):
        raise DeliberateError(f"quantization {quantization}: the start model '{path}' is a LoRA adapter, which would be "
                              "merged into quantized weights; start from full weights (a stage's model/ folder, or "
                              "the adapter merged by `deliberate merge`)")
    loaded = load_model(cfg, for_training=trainable, quantization=quantization)
    if loaded.base_path:
        loaded.model = loaded.model.merge_and_unload()
    if not trainable:
        loaded.model.eval().requires_grad_(False)
    return loaded


def save_trained(trainer, run: ModelRun, *, lora: bool, card: Card, summary: dict[str, Any],
                 files: dict[str, Any] | None = None) -> None:
    """`save_policy` for a TRL trainer, called on every process: `trainer.save_model` runs everywhere (under FSDP
    or ZeRO-3 it gathers the sharded weights) and the main process writes; the others wait for it. With LoRA
    the gathered adapter is saved as is, and `merged_model` builds the full weights (gathered first when they
    are sharded). `files` (name -> JSON) are written into the model folder before it is put in place."""
    tokenizer = trainer.processing_class
    saved = run.folder / ("adapter.tmp" if lora else "model.tmp")
    trainer.save_model(str(saved))
    state = gathered_weights(trainer) if lora else None  # every process: gathering sharded weights is collective
    with main_process_first() as main:  # a failure on the main process still releases the others
        if not main:
            return
        (saved / "training_args.bin").unlink(missing_ok=True)  # a pickle: the recipe in the model card says it all
        tokenizer.save_pretrained(str(saved))
        if not lora:
            run.finish(saved, summary, card, files)
            return
        merged = merged_model(trainer, saved, state)
        replace_dir(saved, run.adapter)
        tmp = run.folder / "model.tmp"
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        run.finish(tmp, summary, card, files)


def save_policy(model, tokenizer, run: ModelRun, *, lora: bool, card: Card, summary: dict[str, Any]) -> None:
    """Write the run's `model/` (full weights: a LoRA adapter is merged) and, with LoRA, its `adapter/`, each
    into a temporary folder renamed when complete; the marker holding the summary is written last. Called on
    the main process alone, with a model it holds whole: not under FSDP or ZeRO-3 (`refuse_sharded`)."""
    refuse_sharded("saving a model from the main process alone (rl --algo ppo)")
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


def weights_digest(model, trainable_only: bool = True) -> str:
    """A short fingerprint of a model's trainable weights, or all of them (sum and sum of squares in float64).
    Sharded parameters (FSDP, ZeRO-3) count whole: they are gathered, so under those every process calls it."""
    import torch

    total = torch.zeros(2, dtype=torch.float64)
    for p in model.parameters():
        if p.requires_grad or not trainable_only:
            v = full_tensor(p).to("cpu", torch.float64)
            total += torch.stack([v.sum(), (v * v).sum()])
    return f"{total[0].item():.10e}/{total[1].item():.10e}"


def gather_digests(model) -> list[str]:
    """Every rank's `weights_digest` (one entry on a single process): equal entries mean the ranks agree. Under
    FSDP or ZeRO-3 each rank digests the gathered weights (its shard completed by the others')."""
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


def full_tensor(p):
    """A parameter's whole value (detached): FSDP's DTensor shards and ZeRO-3's partitions are gathered, which is a
    collective: every process asks for the same parameters in the same order."""
    from torch.distributed.tensor import DTensor

    if isinstance(p, DTensor):
        return p.full_tensor().detach()
    if hasattr(p, "ds_id"):  # a ZeRO-3 partition
        import deepspeed

        with deepspeed.zero.GatheredParameters([p]):
            return p.detach().clone()
    return p.detach()


def shards_weights(trainer) -> bool:
    """Whether a trainer's parameters are sharded over its processes (FSDP, DeepSpeed ZeRO-3): then no process
    holds the whole model, and its full weights exist only once gathered."""
    from accelerate.utils import DistributedType

    acc = trainer.accelerator
    if acc.distributed_type == DistributedType.FSDP:
        return True
    return (acc.distributed_type == DistributedType.DEEPSPEED
            and acc.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage") == 3)


def refuse_sharded(what: str) -> None:
    """One clear error for code that needs the whole model on one process when FSDP or ZeRO-3 would shard it."""
    if sharded := sharded_training():
        raise DeliberateError(f"{what} does not work under {sharded}, which shards the weights over the "
                              "processes: use one process or DDP (recipes/accelerate/ddp.yaml)")


def gathered_weights(trainer) -> dict[str, Any] | None:
    """Under FSDP or ZeRO-3, a LoRA model's full state dict gathered for the merge (a collective: called on every
    process; the main process gets the tensors, on the CPU); None where each process holds the whole model."""
    if not shards_weights(trainer) or is_quantized(trainer.accelerator.unwrap_model(trainer.model)):
        return None
    try:
        return trainer.accelerator.get_state_dict(trainer.model_wrapped)  # the engine under ZeRO-3, the model under FSDP
    except ValueError as e:  # ZeRO-3 without stage3_gather_16bit_weights_on_model_save
        raise DeliberateError(f"merging the LoRA adapter needs the full weights gathered: {e}") from None


def merged_model(trainer, adapter: Path, state: dict[str, Any] | None):
    """A TRL trainer's LoRA model merged into full weights, on the main process. Where it holds the whole model
    (one process, DDP) it is merged as it is; under FSDP or ZeRO-3, a copy of the model holding the gathered
    `state` is merged, so the merge never sees a shard. A QLoRA model's base is quantized: the saved `adapter`
    is merged into the start model's full-precision weights, loaded again on the CPU, so `model/` holds no
    quantization error of its own."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if is_quantized(model):
        return merged_into_full_weights(model, adapter)
    if state is None:
        return model.merge_and_unload()
    return _holding(model, state).merge_and_unload()


def is_quantized(model) -> bool:
    """Whether a (PEFT) model's base was loaded quantized (bitsandbytes 4-bit or 8-bit: QLoRA)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "hf_quantizer", None) is not None


def merged_into_full_weights(model, adapter: Path):
    """The adapter saved in `adapter` merged into the full-precision weights of the base it was trained on
    (bfloat16 where the CPU or GPU has it, else float32), loaded on the CPU."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = model.peft_config[model.active_adapter].base_model_name_or_path
    config = model.get_base_model().config
    dtype = torch.bfloat16 if config.dtype in (torch.bfloat16, "bfloat16") else torch.float32
    try:  # the very weights it was trained on: a Hub model at the commit it was loaded from
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, revision=getattr(config, "_commit_hash", None))
        return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    except (OSError, ValueError) as e:
        raise DeliberateError(f"merging the QLoRA adapter into {base_path}'s full weights: {e}; the adapter is "
                              f"saved in {adapter}") from None


def _holding(model, state: dict[str, Any]):
    """A copy of `model` (a PeftModel) whose tensors are `state` (its full state dict): the structure comes from
    its config and adapter config, built without weights, so no second copy of the weights is made."""
    import copy

    from accelerate import init_empty_weights
    from peft import get_peft_model
    from torch.distributed.fsdp import FSDPModule

    base = model.get_base_model()
    cls = next(c for c in type(base).__mro__ if not issubclass(c, FSDPModule))  # FSDP2 subclasses what it wraps
    adapter = model.active_adapter
    with init_empty_weights(include_buffers=False):
        holder = get_peft_model(cls._from_config(base.config), copy.deepcopy(model.peft_config[adapter]),
                                adapter_name=adapter)
    result = holder.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise DeliberateError(f"merging the LoRA adapter: the gathered weights have keys the model does not "
                              f"({', '.join(result.unexpected_keys[:3])})")
    holder.get_base_model().tie_weights()  # tied weights appear once in a state dict
    if empty := [n for n, p in holder.named_parameters() if p.is_meta]:
        raise DeliberateError(f"merging the LoRA adapter: the gathered weights lack {', '.join(empty[:3])}")
    return holder
