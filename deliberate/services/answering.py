"""Answering prompts with a model: the plain (no spec) generation run behind `deliberate answer`.

Outputs in `<output_dir>/answers/`: `answers.jsonl` (one row per prompt: id, prompt, category, expected,
answer, tokens, finish reason, model, settings) and `summary.json`. Rows are keyed by the prompt id, a hash of
the prompt text and a fingerprint of the model and generation settings (`row_key`), so an interrupted run
resumes, a rerun with the same settings makes no new generations, and an edited prompt is answered again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deliberate.config import ModelConfig, Recipe, SamplingConfig
from deliberate.services.data import PromptRecord, load_prompts
from deliberate.services.generation import Generation, GenerationStats, generate, row_seed
from deliberate.services.io import ResumableJsonl, write_json
from deliberate.services.models import LoadedModel, load_model, resolve_model_path
from deliberate.services.runs import Layout, fingerprint, model_identity, row_key
from deliberate.services.spec import load_spec


@dataclass
class AnswerRun:
    rows: list[dict[str, Any]]
    stats: GenerationStats
    generated: int  # how many answers this run produced (the rest were already there)
    path: Path


def sampling_model(model: ModelConfig, settings: SamplingConfig) -> ModelConfig:
    """The model as it is loaded to sample with `settings` (in `settings.dtype` when that is set)."""
    return model.model_copy(update={"dtype": settings.dtype}) if settings.dtype else model


def answer_records(model: ModelConfig, records: list[PromptRecord], settings: SamplingConfig, path: Path, *,
                   seed: int, show_progress: bool = True, description: str = "answering",
                   load: Callable[[], LoadedModel] | None = None) -> AnswerRun:
    """Answer `records` with `model` into `path` (resumable; rows already there for these settings are reused).

    The model is loaded only when something is left to answer: by `load` when given (a caller answering several
    benchmarks with one model loads it once), else here for this call alone. Greedy answers do not depend on
    the seed, so they are shared across seeds."""
    model = sampling_model(model, settings)
    fp = fingerprint({"model": model_identity(resolve_model_path(model.name)), "generation": settings.model_dump(),
                      "dtype": model.dtype, "seed": seed if settings.temperature > 0 else None})
    out = ResumableJsonl(path)
    keys = [row_key(r.id, r.prompt, fp) for r in records]
    todo = [(r, k) for r, k in zip(records, keys, strict=True) if k not in out.done]
    stats = GenerationStats()
    if todo:
        loaded = load() if load is not None else load_model(model)

        def save(indices: list[int], gens: list[Generation]) -> None:
            out.append(
                {"key": todo[i][1], **todo[i][0].to_dict(), "answer": g.text, "num_tokens": g.num_tokens,
                 "finish_reason": g.finish_reason, "model": model.name, "generation": settings.model_dump()}
                for i, g in zip(indices, gens, strict=True)
            )

        generate(loaded.model, loaded.tokenizer, [r.prompt for r, _ in todo], settings, seed=seed,
                 description=description, show_progress=show_progress, stats=stats, on_batch=save,
                 seeds=[row_seed(seed, key) for _, key in todo])
        del loaded
    # Labels and metadata are today's: correcting an expected behaviour must not need a new answer.
    rows = out.finish(order=keys, current={k: r.to_dict() for r, k in zip(records, keys, strict=True)})
    return AnswerRun(rows=rows, stats=stats, generated=len(todo), path=out.path)


def answer_prompts(recipe: Recipe, records: list[PromptRecord] | None = None, show_progress: bool = True) -> AnswerRun:
    """Answer every prompt of the recipe's data with the recipe's model (resumable)."""
    if records is None:
        records = load_prompts(recipe.data, load_spec(recipe.spec))
    run = answer_records(recipe.model, records, recipe.generation, Layout(recipe).answers / "answers.jsonl",
                         seed=recipe.seed, show_progress=show_progress)
    write_json(run.path.with_name("summary.json"), {
        "model": recipe.model.name, "prompts": len(run.rows), "generated_now": run.generated,
        "new_tokens": run.stats.new_tokens, "seconds": round(run.stats.seconds, 2),
        "tokens_per_second": round(run.stats.tokens_per_second, 1), "generation": recipe.generation.model_dump(),
    })
    return run
