"""Run outputs: where every stage of a recipe writes, when a model counts as finished, what it is called.

Under a recipe's `output_dir`, one folder per stage (`Layout`):

    generate/   completions.jsonl, summary.json          sft_data/   train.jsonl
    filter/     judged.jsonl, kept.jsonl, summary.json   pairs/      completions, judged, pairs, kto, summary
    sft/                     a trained model (below)     stage:sft
    dpo/<stage>[/<variant>]  a trained model             stage:<stage>[/<variant>], stage:<stage>/* for all
    rl/                      a trained model, log.jsonl  stage:rl
    merge/<name>[/<variant>] a merged model              merge:<name>[/<variant>], merge:<name>/* for all
    rm/<name>                a reward or cost model      rm:<name> (a `classifier` judge, a MODPO margin)
    eval/  answers/  judge/  reports and answer files

A trained or merged model's folder (`ModelRun`) holds `model/` (full weights, tokenizer, a model card, and,
written last, the marker `deliberate_model.json` with the run's summary and fingerprint), `adapter/` (LoRA runs),
`checkpoints/` (for `--resume`; each `checkpoint-N` records, written last, the fingerprint of the run that wrote
it in `deliberate_checkpoint.json`) and `summary.json`. `model/` is replaced whole, never half-written. A stage whose
inputs (settings, data, start model) have the same fingerprint as a finished run's reuses it instead of training
again (`ModelRun.reusable`). Any name that is not a `stage:`, `merge:` or `rm:` reference is a model as in `model.name`
(folder, adapter folder, Hub id, `smollm2`) and is returned as is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deliberate.config import Recipe
from deliberate.errors import DeliberateError, did_you_mean
from deliberate.services.io import atomic_write_text, replace_dir, write_json
from deliberate.services.provenance import Card, write_provenance

MARKER = "deliberate_model.json"  # written last into a finished model folder
CHECKPOINT_MARKER = "deliberate_checkpoint.json"  # written last into a complete checkpoint: the run's fingerprint


def fingerprint(blob: Any) -> str:
    """A short hash of everything that determines an output (settings, data digests, model identities)."""
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def row_key(row_id: str, content: Any, settings_fp: str) -> str:
    """The key of one resumable output row: its id, a hash of what it was made from (the prompt, or the whole
    conversation), and the fingerprint of the settings. Editing a prompt, or inserting one that shifts the row
    numbers of an id-less file, changes the key, so the row is made again instead of served stale."""
    return f"{row_id}:{fingerprint(content)}:{settings_fp}"


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_identity(model_path: str | None) -> str | None:
    """A local folder's path plus the size and mtime of its weights, so a model retrained in the same place
    does not get the old model's outputs; a Hub id as is."""
    if model_path is None:
        return None
    folder = Path(model_path)
    if not folder.is_dir():
        return model_path
    weights = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".gguf"})
    return model_path + "|" + ",".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in weights)


def checkpoints(folder: Path) -> list[Path]:
    """The `checkpoint-N` folders in `folder`, oldest first."""
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


LENGTH_FIELDS = ("max_steps", "num_train_epochs", "save_steps", "logging_steps")
"""Settings that say how long a run trains and how often it saves or logs: resuming with more steps is
continuing the same run, so the fingerprint a checkpoint records leaves them out."""


def without_lengths(settings: dict[str, Any]) -> dict[str, Any]:
    """A section's settings (`model_dump()`) without `LENGTH_FIELDS`, for a resume fingerprint."""
    return {k: v for k, v in settings.items() if k not in LENGTH_FIELDS}


def for_resume(recipe: Recipe, section: str) -> Recipe:
    """The recipe with `section`'s `LENGTH_FIELDS` set aside, for a resume fingerprint."""
    part = getattr(recipe, section)
    blank = {f: None for f in LENGTH_FIELDS if f in type(part).model_fields}
    return recipe.model_copy(update={section: part.model_copy(update=blank)})


def mark_checkpoint(folder: str | Path, fingerprint: str) -> None:
    """Record, last, that the checkpoint in `folder` is complete and which run wrote it."""
    write_json(Path(folder) / CHECKPOINT_MARKER, {"fingerprint": fingerprint})


def checkpoint_fingerprint(folder: Path, needs: tuple[str, ...] = ()) -> str | None:
    """The fingerprint a complete checkpoint records; None for an incomplete or unmarked one."""
    marker = folder / CHECKPOINT_MARKER
    if not marker.is_file() or not all((folder / name).exists() for name in needs):
        return None
    try:
        value = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint")
    except (ValueError, OSError, AttributeError):
        return None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class ModelRun:
    """The folder of one trained or merged model."""

    folder: Path

    @property
    def model(self) -> Path:
        return self.folder / "model"

    @property
    def adapter(self) -> Path:
        return self.folder / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    def summary(self) -> dict[str, Any] | None:
        """The finished run's summary (its marker), or None when the model is not finished."""
        marker = self.model / MARKER
        return json.loads(marker.read_text()) if marker.is_file() else None

    @property
    def finished(self) -> bool:
        return (self.model / MARKER).is_file()

    def reusable(self, fingerprint: str) -> dict[str, Any] | None:
        """The summary of a finished run with these inputs (marked `reused`), or None: train it."""
        summary = self.summary()
        if summary is not None and summary.get("fingerprint") == fingerprint:
            return {**summary, "reused": True}
        return None

    def last_checkpoint(self, resume: bool | str, verb: str, fingerprint: str,
                        needs: tuple[str, ...] = ("trainer_state.json",)) -> str | None:
        """When resuming, the newest complete checkpoint written by this run (same fingerprint); else None.

        A checkpoint is complete when its marker and the files in `needs` are there (a crash mid-save leaves
        one without them: the previous one is used). Checkpoints written only by another run (other data or
        settings) are refused, naming both fingerprints, rather than silently continued. `resume="auto"`
        (`deliberate study`) continues this run's newest complete checkpoint when there is one and starts afresh
        otherwise, never an error."""
        if not resume:
            return None
        found = checkpoints(self.checkpoints)
        if resume == "auto":
            mine = [c for c in found if checkpoint_fingerprint(c, needs) == fingerprint]
            return str(mine[-1]) if mine else None
        if not found:
            raise DeliberateError(f"{verb} --resume: no checkpoint in {self.checkpoints}")
        complete = [(c, fp) for c in found if (fp := checkpoint_fingerprint(c, needs)) is not None]
        if not complete:
            raise DeliberateError(f"{verb} --resume: none of the {len(found)} checkpoints in {self.checkpoints} is "
                                  "complete (cut short by a crash, or written by an older deliberate); run without "
                                  "--resume to start afresh")
        mine = [c for c, fp in complete if fp == fingerprint]
        if not mine:
            newest, theirs = complete[-1]
            raise DeliberateError(
                f"{verb} --resume: {newest} was written by another run (fingerprint {theirs}); this run's data "
                f"and settings give {fingerprint}. Restore that run's settings to continue it, or run without "
                "--resume to start afresh")
        return str(mine[-1])

    def finish(self, tmp: Path, summary: dict[str, Any], card: Card, files: dict[str, Any] | None = None) -> None:
        """Make the complete model in `tmp` this run's `model/`: card, provenance and `files` (name -> JSON), then
        marker, then one rename."""
        atomic_write_text(tmp / "README.md", card.render())
        write_provenance(tmp, card.recipe)
        for name, value in (files or {}).items():
            write_json(tmp / name, value)
        write_json(tmp / MARKER, summary)
        replace_dir(tmp, self.model)
        write_json(self.folder / "summary.json", summary)
        write_provenance(self.folder, card.recipe)


class Layout:
    """Where each stage of a recipe writes (see the module docstring)."""

    def __init__(self, recipe: Recipe):
        self.root = Path(recipe.output_dir)

    # The stages whose outputs are files (what each file holds: the module docstring, and each stage's own).
    generate = property(lambda self: self.root / "generate")
    filter = property(lambda self: self.root / "filter")
    sft_data = property(lambda self: self.root / "sft_data")
    pairs = property(lambda self: self.root / "pairs")
    eval = property(lambda self: self.root / "eval")
    answers = property(lambda self: self.root / "answers")
    judge = property(lambda self: self.root / "judge")
    guard = property(lambda self: self.root / "guard")

    @property
    def sft(self) -> ModelRun:
        return ModelRun(self.root / "sft")

    @property
    def rl(self) -> ModelRun:
        return ModelRun(self.root / "rl")

    def dpo(self, stage: str, variant: str = "") -> ModelRun:
        return ModelRun(self.root / "dpo" / stage / variant if variant else self.root / "dpo" / stage)

    def merge(self, name: str, variant: str = "") -> ModelRun:
        return ModelRun(self.root / "merge" / name / variant if variant else self.root / "merge" / name)

    def rm(self, name: str) -> ModelRun:
        return ModelRun(self.root / "rm" / name)


# ---- references to a recipe's models ----

def is_reference(name: str) -> bool:
    return name.startswith(("stage:", "merge:", "rm:"))


def _variants(folder: Path) -> dict[str, Path]:
    """Finished models under a stage or merge folder: '' for a single model, else variant name -> folder."""
    if ModelRun(folder).finished:
        return {"": folder / "model"}
    return {p.parent.name: p for p in sorted(folder.glob("*/model")) if ModelRun(p.parent).finished}


def stage_models(recipe: Recipe, ref: str) -> list[tuple[str, str]]:
    """(label, path) for every model `ref` names; `*` as the variant expands to all of them."""
    if not is_reference(ref):
        return [(ref, ref)]
    kind, _, rest = ref.partition(":")
    name, _, variant = rest.partition("/")
    layout = Layout(recipe)
    if kind == "stage" and name in ("sft", "rl"):
        run = layout.sft if name == "sft" else layout.rl
        if not run.finished:
            raise DeliberateError(f"{ref}: no model yet ({run.model}); run `deliberate {name}` first")
        return [(ref, str(run.model))]
    verb = {"stage": "dpo", "merge": "merge", "rm": "rm"}[kind]
    folder = layout.root / verb / name
    found = _variants(folder)
    if not found:
        made = sorted(p.name for p in (layout.root / verb).glob("*") if _variants(p))
        names = [f"{kind}:{m}" for m in made] + (["stage:sft", "stage:rl"] if kind == "stage" else [])
        hint = did_you_mean(f"{kind}:{name}", names)
        raise DeliberateError(f"{ref}: no finished model in {folder}; {hint}run `deliberate {verb}` first")
    if variant == "*":
        return [(f"{kind}:{name}" + (f"/{v}" if v else ""), str(p)) for v, p in found.items()]
    if variant in found:
        return [(ref, str(found[variant]))]
    if not variant and len(found) == 1:
        return [(ref, str(next(iter(found.values()))))]
    choices = ", ".join(f"{kind}:{name}/{v}" if v else f"{kind}:{name}" for v in found)
    raise DeliberateError(f"{ref}: no such model; {folder} has: {choices}")


def stage_model(recipe: Recipe, ref: str) -> str:
    """The one model folder (or Hub id) `ref` names."""
    models = stage_models(recipe, ref)
    if len(models) != 1:
        raise DeliberateError(f"{ref}: names {len(models)} models where one is needed")
    return models[0][1]


@dataclass
class StageRun:
    rows: list[dict[str, Any]]
    path: Path
    summary: dict[str, Any]


def resolve_judge(recipe: Recipe, cfg):
    """A judge config whose model is a reference to this recipe's outputs (`rm:cost`, `stage:sft`), with the
    model's folder in its place; any other config as it is."""
    if cfg.model and is_reference(cfg.model):
        return cfg.model_copy(update={"model": stage_model(recipe, cfg.model)})
    return cfg
