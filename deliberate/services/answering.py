"""Answering prompts with a model: the plain (no spec) generation run behind `deliberate answer`.

Outputs in `<output_dir>/answers/`: `answers.jsonl` (one row per prompt: id, prompt, category, expected,
answer, tokens, finish reason, model, settings) and `summary.json`. Rows are keyed by the prompt id and a
fingerprint of the model and generation settings, so an interrupted run resumes, and a rerun with the same
settings makes no new generations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deliberate.config import GenerationConfig, ModelConfig, Recipe
from deliberate.services.data import PromptRecord, load_prompts
from deliberate.services.generation import Generation, GenerationStats, generate
from deliberate.services.io import ResumableJsonl, write_json
from deliberate.services.models import LoadedModel, load_model, resolve_model_path
from deliberate.services.spec import load_spec


@dataclass
class AnswerRun:
    rows: list[dict[str, Any]]
    stats: GenerationStats
    generated: int  # how many answers this run produced (the rest were already there)
    path: Path


def model_identity(model_path: str) -> str:
    """A local folder's path plus the size and mtime of its weights, so a model retrained in the same place
    does not get the old model's cached answers; a Hub id as is."""
    folder = Path(model_path)
    if not folder.is_dir():
        return model_path
    weights = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".gguf"})
    return model_path + "|" + ",".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in weights)


def fingerprint(model_path: str, settings: dict[str, Any]) -> str:
    blob = json.dumps({"model": model_identity(model_path), "generation": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def answer_records(model: ModelConfig, records: list[PromptRecord], settings: GenerationConfig, path: Path,
                   show_progress: bool = True, description: str = "answering",
                   load: Callable[[], LoadedModel] | None = None) -> AnswerRun:
    """Answer `records` with `model` into `path` (resumable; rows already there for these settings are reused).

    The model is loaded only when something is left to answer: by `load` when given (a caller answering several
    benchmarks with one model loads it once), else here for this call alone."""
    fp = fingerprint(resolve_model_path(model.name), settings.model_dump())
    out = ResumableJsonl(path)
    keys = [f"{r.id}:{fp}" for r in records]
    todo = [r for r, k in zip(records, keys, strict=True) if k not in out.done]
    stats = GenerationStats()
    if todo:
        loaded = load() if load is not None else load_model(model)

        def save(indices: list[int], gens: list[Generation]) -> None:
            out.append(
                {"key": f"{todo[i].id}:{fp}", **todo[i].to_dict(), "answer": g.text, "num_tokens": g.num_tokens,
                 "finish_reason": g.finish_reason, "model": model.name, "generation": settings.model_dump()}
                for i, g in zip(indices, gens, strict=True)
            )

        generate(loaded.model, loaded.tokenizer, [r.prompt for r in todo], settings,
                 description=description, show_progress=show_progress, stats=stats, on_batch=save)
        del loaded
    rows = out.finish(order=keys)
    return AnswerRun(rows=rows, stats=stats, generated=len(todo), path=out.path)


def answer_prompts(recipe: Recipe, records: list[PromptRecord] | None = None, show_progress: bool = True) -> AnswerRun:
    """Answer every prompt of the recipe's data with the recipe's model (resumable)."""
    if records is None:
        records = load_prompts(recipe.data, load_spec(recipe.spec))
    run = answer_records(recipe.model, records, recipe.generation,
                         Path(recipe.output_dir) / "answers" / "answers.jsonl", show_progress)
    write_json(run.path.with_name("summary.json"), {
        "model": recipe.model.name, "prompts": len(run.rows), "generated_now": run.generated,
        "new_tokens": run.stats.new_tokens, "seconds": round(run.stats.seconds, 2),
        "tokens_per_second": round(run.stats.tokens_per_second, 1), "generation": recipe.generation.model_dump(),
    })
    return run
