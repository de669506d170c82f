"""Answering prompts with a model, whatever its backend: `deliberate answer`, and the answers `eval` and `pairs`
generate.

The model answers in this process (`model.backend`: `hf`, transformers; `vllm`) or behind an OpenAI-compatible API
(`openai`; services/serving.py); `answer_records` is the one place that picks. Outputs of `deliberate answer` in
`<output_dir>/answers/`: `answers.jsonl` (one row per prompt: id, prompt, category, expected, answer, tokens,
finish reason, model, backend, settings) and `summary.json`. Rows are keyed by the prompt id, a hash of the
prompt text and a fingerprint of the model and the generation settings (`row_key`): for a loaded model its
weights (and the backend, for vllm), for a served one the backend, endpoint and model name, never the key. So an
interrupted run resumes, a rerun with the same settings makes no new generations, an edited prompt is answered
again, and another backend never serves the answers of the first.

A served model's request that still fails after its retries is counted with its reason and never written as an
answer: the other answers are saved as they arrive and the next run asks only for the failed ones. Each stage
then applies the failure rule (services/failures.py, `judge.max_failures`) to its answers and judgments together:
`answer` writes answers.jsonl and summary.json when the failed share is within it, and otherwise puts them in
`answers/incomplete/` and exits 3, leaving the earlier ones as they were.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deliberate.config import ModelConfig, Recipe, SamplingConfig
from deliberate.errors import DeliberateError
from deliberate.services.benchmarks import training_prompts
from deliberate.services.chat_api import Failure
from deliberate.services.data import PromptRecord
from deliberate.services.failures import publish
from deliberate.services.generation import Generation, GenerationStats, generate, row_seed
from deliberate.services.io import ResumableJsonl
from deliberate.services.models import LoadedModel, adapter_base, is_embedded, load_model, resolve_model_path
from deliberate.services.runs import Layout, fingerprint, model_identity, row_key
from deliberate.services.serving import ApiUsage, VLLMEngine, ask_api, public_url
from deliberate.services.spec import load_spec


@dataclass
class AnswerRun:
    rows: list[dict[str, Any]]  # the answered prompts, in the order given (a failed request has no row)
    stats: GenerationStats
    generated: int  # how many answers this run produced (the rest were already there)
    path: Path
    errors: list[str] = field(default_factory=list)  # why each failed request failed (a served model's)
    usage: ApiUsage | None = None  # what a served model's requests took


def sampling_model(model: ModelConfig, settings: SamplingConfig) -> ModelConfig:
    """The model as it is loaded to sample with `settings` (in `settings.dtype` when that is set)."""
    return model.model_copy(update={"dtype": settings.dtype}) if settings.dtype else model


def backend_info(model: ModelConfig) -> dict[str, Any]:
    """How a report names where the model answers: its backend and, for a served model, the endpoint."""
    return {"backend": model.backend, "base_url": public_url(model.base_url) if model.backend == "openai" else None}


def open_model(model: ModelConfig, load: Callable[[ModelConfig], LoadedModel] = load_model) -> LoadedModel | VLLMEngine:
    """The model loaded in this process to answer: a vLLM engine (`vllm`), else by `load` (`hf`: transformers,
    services.models.load_model unless a stage passes its own)."""
    if model.backend != "vllm":
        return load(model)
    path = resolve_model_path(model.name)
    if Path(path).is_dir() and adapter_base(path):
        raise DeliberateError(f"model '{model.name}' is a PEFT adapter folder; the vllm backend loads full weights "
                              "(a stage's model/ folder has them), or use backend hf")
    return VLLMEngine(path, dtype=model.dtype, seed=0, trust_remote_code=model.trust_remote_code,
                      revision=model.revision)


def answer_fingerprint(model: ModelConfig, settings: SamplingConfig, seed: int) -> str:
    """What determines an answer: the model's identity, the generation settings, and the seed when sampling
    (greedy answers do not depend on it, so they are shared across seeds)."""
    seed_used = seed if settings.temperature > 0 else None
    if model.backend == "openai":  # batch size and dtype are the server's business
        served = {"backend": "openai", "base_url": (model.base_url or "").rstrip("/") or None, "name": model.name}
        return fingerprint({"model": served, "generation": settings.model_dump(exclude={"batch_size", "dtype"}),
                            "seed": seed_used})
    weights = model_identity(resolve_model_path(model.name))
    return fingerprint({"model": weights if model.backend == "hf" else {"backend": model.backend, "weights": weights},
                        "generation": settings.model_dump(), "dtype": model.dtype, "seed": seed_used})


def check_served(model: ModelConfig) -> None:
    """A served model (`openai`) is asked for by the name its server knows, never a folder or the embedded one."""
    if is_embedded(model.name) or Path(model.name).expanduser().exists():
        raise DeliberateError(
            f"model '{model.name}' is a model to load here, but backend openai asks a server for a model by the name "
            "it serves it under: set that name (e.g. the model a vLLM server was started with), or use backend hf or "
            "vllm for this one")


def answer_records(model: ModelConfig, records: list[PromptRecord], settings: SamplingConfig, path: Path, *,
                   seed: int, show_progress: bool = True, description: str = "answering",
                   load: Callable[[], LoadedModel | VLLMEngine] | None = None) -> AnswerRun:
    """Answer `records` with `model` into `path` (resumable; rows already there for these settings are reused).

    A model that runs in this process is loaded only when something is left to answer: by `load` when given (a
    caller answering several benchmarks with one model loads it once: `open_model`), else here for this call
    alone. A served model's failed requests are in `errors` and have no row (see the module docstring)."""
    model = sampling_model(model, settings)
    if model.backend == "openai":
        check_served(model)
    fp = answer_fingerprint(model, settings, seed)
    out = ResumableJsonl(path)
    keys = [row_key(r.id, r.prompt, fp) for r in records]
    todo = [(r, k) for r, k in zip(records, keys, strict=True) if k not in out.done]
    stats = GenerationStats()
    usage = ApiUsage() if model.backend == "openai" else None
    errors: list[str] = []
    if todo:

        def save(indices: list[int], gens: list[Generation]) -> None:
            out.append(
                {"key": todo[i][1], **todo[i][0].to_dict(), "answer": g.text, "num_tokens": g.num_tokens,
                 "finish_reason": g.finish_reason, "model": model.name, "backend": model.backend,
                 "generation": settings.model_dump()}
                for i, g in zip(indices, gens, strict=True)
            )

        prompts = [r.prompt for r, _ in todo]
        seeds = [row_seed(seed, key) for _, key in todo]
        if model.backend == "openai":

            def on_item(i: int, result: Generation | Failure) -> None:
                if isinstance(result, Failure):
                    errors.append(result.error)
                else:
                    save([i], [result])

            ask_api(model, model.name, [[{"role": "user", "content": p}] for p in prompts], settings, on_item,
                    role=f"model '{model.name}'", usage=usage, description=f"{description} (api)",
                    show_progress=show_progress)
            stats.prompts, stats.new_tokens, stats.seconds = len(prompts), usage.tokens_out, usage.seconds
        else:
            loaded = load() if load is not None else open_model(model)
            if model.backend == "vllm":
                start = time.perf_counter()
                gens = loaded.generate(prompts, settings, seeds=seeds if settings.temperature > 0 else None)
                save(list(range(len(gens))), gens)
                stats.prompts, stats.new_tokens = len(gens), sum(g.num_tokens for g in gens)
                stats.seconds = time.perf_counter() - start
            else:
                generate(loaded.model, loaded.tokenizer, prompts, settings, seed=seed, description=description,
                         show_progress=show_progress, stats=stats, on_batch=save, seeds=seeds)
            if load is None and isinstance(loaded, VLLMEngine):  # opened here for this call alone
                loaded.close()
            del loaded
    # Labels and metadata are today's: correcting an expected behaviour must not need a new answer.
    current = {k: r.to_dict() for r, k in zip(records, keys, strict=True)}
    if errors:  # the finished file stays as it was; the partial one keeps what succeeded, for the rerun
        rows = [{**out.rows[k], **current[k]} for k in keys if k in out.rows]
    else:
        rows = out.finish(order=keys, current=current)
    return AnswerRun(rows=rows, stats=stats, generated=len(todo) - len(errors), path=out.path, errors=errors,
                     usage=usage)


def answer_prompts(recipe: Recipe, records: list[PromptRecord] | None = None, show_progress: bool = True) -> AnswerRun:
    """Answer every prompt of the recipe's data with the recipe's model (resumable)."""
    if records is None:
        records = training_prompts(recipe.data, load_spec(recipe.spec), recipe.eval.datasets_dir)
    folder = Layout(recipe).answers
    run = answer_records(recipe.model, records, recipe.generation, folder / "answers.jsonl", seed=recipe.seed,
                         show_progress=show_progress)
    summary = {
        "model": recipe.model.name, **backend_info(recipe.model), "prompts": len(records), "answered": len(run.rows),
        "failed": len(run.errors), "generated_now": run.generated, "new_tokens": run.stats.new_tokens,
        "seconds": round(run.stats.seconds, 2), "tokens_per_second": round(run.stats.tokens_per_second, 1),
        "generation": recipe.generation.model_dump(), "api_usage": run.usage.to_dict() if run.usage else None,
    }
    publish("answer", folder, {"answers.jsonl": run.rows, "summary.json": summary}, summary=summary,
            total=len(records), errors=run.errors, max_failures=recipe.judge.max_failures, what="answers")
    return run
