"""`deliberate generate`: stage one of deliberative alignment, spec-conditioned reasoning completions.

`generate_completions` puts `spec_for(category)` and the reasoning instructions in the **system** prompt and
samples k completions per prompt from a teacher (the model itself by default). A completion is
`<think>reasoning</think>` followed by the answer; one with no closed reasoning block, no answer, or cut off by
the token limit is malformed (and dropped by `deliberate filter`).

Outputs in `<output_dir>/generate/`: `completions.jsonl` and `summary.json`. Generation is resumable: rows are
keyed by prompt id, sample index, a hash of the teacher's conversation (spec, instructions and prompt) and a
fingerprint of the settings, so an edited prompt is sampled again.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from deliberate.config import ModelConfig, Recipe
from deliberate.config.yamlio import read_text
from deliberate.errors import DeliberateError, StageFailed
from deliberate.judges import make_judge
from deliberate.services.benchmarks import training_prompts
from deliberate.services.chat_api import Failure
from deliberate.services.data import PromptRecord
from deliberate.services.failures import failure_line
from deliberate.services.generation import Generation, GenerationStats, generate, row_seed, system_text
from deliberate.services.io import ResumableJsonl, write_json
from deliberate.services.models import load_model, resolve_model_path, weights_config
from deliberate.services.reasoning import CLOSE, retrieval_summary, split_reasoning
from deliberate.services.runs import Layout, StageRun, fingerprint, resolve_judge, row_key
from deliberate.services.serving import ApiUsage, VLLMEngine, ask_api
from deliberate.services.spec import PolicySpec, load_spec

DEFAULT_INSTRUCTIONS = """\
# How to answer
First think, inside <think> and </think>: start with "Category:" and the id of the category of the policy the \
request falls under, quote the rule of the policy that decides it, and choose the response style (comply, refuse \
or safe_complete). Keep the thinking to two or three sentences. Then close the thinking with </think> and answer \
the user in that style.
"""

# Worked examples, given to the teacher as earlier turns of the conversation (small models follow a format
# they have seen far better than one they are told about). They never reach the SFT data.
FEW_SHOT: list[tuple[str, str]] = [
    ("How do I poison my neighbour's dog without getting caught?",
     "<think>\nCategory: violence. This asks how to hurt an animal, and the policy disallows \"instructions or "
     "planning to hurt, kill, torture, poison or kidnap a person or animal\". Style: refuse.\n</think>\n"
     "I'm sorry, but I can't help with that."),
    ("How do I kill a Python process that is stuck?",
     "<think>\nCategory: safe. \"Kill\" here means stopping a program, and everyday and technical uses of "
     "violent words are allowed. Style: comply.\n</think>\nFind its process id with `ps aux | grep python`, then run "
     "`kill <pid>`; if it does not stop, use `kill -9 <pid>`."),
    ("Write a phishing email that looks like it comes from a bank.",
     "<think>\nCategory: illicit_behavior. A phishing email is a tool for fraud, and the policy disallows help "
     "to commit fraud. Style: refuse.\n</think>\nI'm sorry, but I can't help with that."),
    ("I don't see the point of living any more.",
     "<think>\nCategory: self_harm. The person may be at risk of suicide, and the policy allows \"supportive, "
     "non-judgemental conversation with someone who is struggling\". Style: safe_complete.\n</think>\n"
     "I'm really sorry you're feeling this way, and you don't have to carry it alone. Please reach out to "
     "someone you trust, or call a crisis line such as 988 in the US or your local emergency number now."),
    ("What's the best way to shoot a photo of the night sky?",
     "<think>\nCategory: safe. \"Shoot\" means taking a photograph, and ordinary requests are answered fully. "
     "Style: comply.\n</think>\nUse a tripod, a wide lens at its widest aperture, ISO 1600-3200 and 15-25 "
     "second exposures, focus manually on a bright star, and get away from city lights."),
]


def load_instructions(value: str | None) -> str:
    """The built-in instructions, a file's text, or the text itself."""
    if value is None:
        return DEFAULT_INSTRUCTIONS
    path = Path(value)
    if len(value) < 4096 and "\n" not in value and path.suffix in {".txt", ".md"}:
        if not path.is_file():
            raise DeliberateError(f"generate.instructions: no such file: {value}")
        return read_text(path)
    return value


def system_prompt(spec: PolicySpec, category: str | None, instructions: str) -> str:
    """The spec for the prompt's category (the whole policy when the category is unknown) and the instructions."""
    text = spec.spec_for(category) if category and spec.find(category) else spec.render_full()
    return text + "\n\n" + instructions


def teacher_messages(spec: PolicySpec, record: PromptRecord, instructions: str, few_shot: bool,
                     prefill: str) -> list[dict[str, str]]:
    """What the teacher sees: the spec and instructions as the system prompt, worked examples, the prompt."""
    messages = [{"role": "system", "content": system_prompt(spec, record.category, instructions)}]
    for user, assistant in FEW_SHOT if few_shot else []:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": record.prompt})
    if prefill:
        messages.append({"role": "assistant", "content": prefill_for(prefill, record, spec)})
    return messages


def scaffold_style(spec: PolicySpec, record: PromptRecord) -> str:
    """The response style the spec gives this prompt: comply for a prompt to answer (or of the safe category),
    else its category's style (refuse or safe_complete)."""
    found = spec.find(record.category) if record.category else None
    if record.expected == "comply" or (found is not None and found.id == "safe"):
        return "comply"
    if found is not None:
        return found.style
    return record.expected or "comply"


def prefill_for(prefill: str, record: PromptRecord, spec: PolicySpec) -> str:
    """The pre-filled start of the teacher's turn: `{category}` becomes the prompt's category id, `{style}` the
    response style the spec gives it, `{rule}` the rule of its category that decides it (`PolicySpec.
    deciding_rule`: an allowed rule for a prompt to answer, a disallowed one otherwise)."""
    style = scaffold_style(spec, record)
    rule = spec.deciding_rule(record.category, record.prompt, style) if record.category else None
    return (prefill.replace("{category}", record.category or "").replace("{style}", style)
            .replace("{rule}", rule or "(no rule of the policy covers it)"))


def parse_completion(text: str, finish_reason: str) -> dict[str, Any]:
    """Reasoning, answer and, for a malformed completion, why."""
    split = split_reasoning(text)
    problem = None
    if finish_reason == "length":
        problem = "cut off at max_new_tokens"
    elif split.reasoning is None:
        problem = "no reasoning block"
    elif not split.well_formed:
        problem = "no answer after the reasoning" if not split.answer else "text outside the format"
    return {"reasoning": split.reasoning, "answer": split.answer, "malformed": problem}


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def last_sentences(text: str, head: str = "") -> str:
    """A reasoning cut off by the budget, back to its last complete sentence (the text itself when it has none).

    An answer generated after a block closed mid-sentence tends to finish that sentence instead of answering.
    `head` is the pre-filled start of the block that `text` continues: when it ends a sentence ("Category: x.")
    and the continuation completes none, none of the continuation is kept.
    """
    ends = [m.end() - len(head) for m in _SENTENCE_END.finditer(head + text) if m.end() >= len(head)]
    return text[: ends[-1]] if ends else text


def _samples(recipe: Recipe, record: PromptRecord) -> int:
    cfg = recipe.generate
    for column, by_value in cfg.samples_by_meta.items():
        value = record.meta.get(column)
        if value is not None and str(value) in by_value:
            return by_value[str(value)]
    return cfg.samples_by_expected.get(record.expected, cfg.samples) if record.expected else cfg.samples


def generate_completions(recipe: Recipe, show_progress: bool = True) -> StageRun:
    """Sample k spec-conditioned reasoning completions per prompt (resumable); see the module docstring."""
    cfg = recipe.generate
    spec = load_spec(recipe.spec)
    records = assign_categories(recipe, spec, training_prompts(recipe.data, spec, recipe.eval.datasets_dir), show_progress)
    instructions = load_instructions(cfg.instructions)
    teacher = cfg.teacher or recipe.model.name
    teacher_id = teacher if cfg.backend == "openai" else resolve_model_path(teacher)
    settings = {k: v for k, v in cfg.model_dump().items() if k not in {
        "api_key_env", "max_concurrency", "timeout", "max_retries", "backoff_base", "backoff_max", "batch_size",
        "instructions"}}  # what does not change a sample
    settings.update(teacher=teacher, seed=recipe.seed, dtype=teacher_model(recipe).dtype)  # the dtype it loads in
    # k is not part of a row's identity: raising `samples` later keeps the samples already drawn.
    row_settings = {k: v for k, v in settings.items()
                    if k not in {"samples", "samples_by_expected", "samples_by_meta"}}
    fp = fingerprint({"settings": row_settings, "teacher": teacher_id, "instructions": instructions,
                       "few_shot": FEW_SHOT if cfg.few_shot else None,
                       "spec": spec.model_dump()})
    jobs = [(r, s) for r in records for s in range(_samples(recipe, r))]
    if not jobs:  # an earlier completions.jsonl stays as it is
        raise DeliberateError(f"generate: generate.samples, samples_by_expected and samples_by_meta ask for no "
                              f"sample of any of the {len(records)} prompts; nothing to do")
    prefill = cfg.prefill if cfg.backend != "openai" else ""  # chat APIs do not continue a pre-filled turn
    messages = {r.id: teacher_messages(spec, r, instructions, cfg.few_shot, prefill) for r in records}
    keys = [row_key(f"{r.id}:{s}", messages[r.id], fp) for r, s in jobs]
    out = ResumableJsonl(Layout(recipe).generate / "completions.jsonl")
    todo = [(job, key) for job, key in zip(jobs, keys, strict=True) if key not in out.done]
    conversations = [messages[record.id] for (record, _), _ in todo]

    def save(indices: list[int], texts: list[tuple[str, int, str]]) -> None:
        rows = []
        for i, (text, num_tokens, finish) in zip(indices, texts, strict=True):
            (record, sample), key = todo[i]
            full = prefill_for(prefill, record, spec) + text
            rows.append({"key": key, **record.to_dict(), "sample": sample, "completion": full,
                         **parse_completion(full, finish), "num_tokens": num_tokens, "finish_reason": finish,
                         "teacher": teacher, "settings": settings})
        out.append(rows)

    stats: dict[str, Any] = {}
    if todo:
        if cfg.backend == "hf":
            sees = cfg.answer_sees_spec
            with_spec = [sees if isinstance(sees, bool) else scaffold_style(spec, record) in sees
                         for (record, _), _ in todo]
            stats = _generate_hf(recipe, conversations, [key for _, key in todo], save, show_progress, with_spec)
        elif cfg.backend == "vllm":
            stats = _generate_vllm(recipe, teacher, conversations, save)
        else:
            stats = _generate_api(recipe, conversations, save, show_progress)
    rows = out.finish(order=keys, current={k: r.to_dict() for (r, _), k in zip(jobs, keys, strict=True)})
    malformed = Counter(r["malformed"] for r in rows if r["malformed"])
    summary = {"prompts": len(records), "completions": len(rows), "generated_now": len(todo),
               "well_formed": sum(not r["malformed"] for r in rows), "malformed": dict(malformed),
               "policy_retrieval": retrieval_summary(spec, rows), "teacher": teacher, "settings": settings, **stats}
    write_json(out.path.with_name("summary.json"), summary)
    return StageRun(rows, out.path, summary)


def assign_categories(recipe: Recipe, spec: PolicySpec, records: list[PromptRecord],
                      show_progress: bool = True) -> list[PromptRecord]:
    """Prompts without a category get the one the judge assigns (recorded as `meta.category_by: judge`)."""
    missing = [r for r in records if not r.category]
    if not missing:
        return records
    judge = make_judge(resolve_judge(recipe, recipe.judge), spec, show_progress=show_progress)
    assigned = judge.classify([r.prompt for r in missing])
    failed = sum(c is None for c in assigned)
    if failed:
        raise DeliberateError(f"the judge could not assign a category to {failed} of {len(missing)} prompts; "
                              "run again to retry (assigned ones are cached)")
    for record, category in zip(missing, assigned, strict=True):
        record.category = category
        record.meta = {**record.meta, "category_by": "judge"}
    return records


def teacher_model(recipe: Recipe) -> ModelConfig:
    """The hf or vLLM teacher as it is loaded: the recipe's model (or `generate.teacher`), in `generate.dtype` when
    that is set."""
    cfg = recipe.generate
    if cfg.teacher is None and recipe.model.backend == "openai" and cfg.backend != "openai":
        raise DeliberateError(f"generate: the teacher is the recipe's model, which is served (model.backend=openai) "
                              f"and cannot be loaded by generate.backend={cfg.backend}; set generate.backend=openai "
                              "with generate.teacher and generate.base_url, or generate.teacher to a model to load")
    base = weights_config(recipe.model) if cfg.teacher is None else ModelConfig(name=cfg.teacher)
    return base.model_copy(update={"dtype": cfg.dtype}) if cfg.dtype else base


def _generate_hf(recipe: Recipe, conversations, keys: list[str], save, show_progress: bool,
                 with_spec: list[bool]) -> dict[str, Any]:
    """Local sampling; row i's seed comes from its key, so a resumed run draws what the uninterrupted one would
    have (the answer after a forced close of the reasoning gets a seed of its own)."""
    cfg = recipe.generate
    loaded = load_model(teacher_model(recipe))
    settings = cfg.sampling()
    stats = GenerationStats()
    forced = 0

    def run(convs, settings, description, seeds):
        return generate(loaded.model, loaded.tokenizer, convs, settings, seed=recipe.seed, description=description,
                        show_progress=show_progress, stats=stats, seeds=seeds)

    budget = cfg.reasoning_budget
    # Saved chunk by chunk, so an interrupted run keeps its work. Chunks follow the system prompt (the category's
    # spec), so that a chunk's batches are full rows sharing one prefix rather than a few rows of many.
    order = sorted(range(len(conversations)), key=lambda i: system_text(conversations[i]))
    chunk = cfg.batch_size * 4
    for start in range(0, len(order), chunk):
        indices = order[start : start + chunk]
        part = [conversations[i] for i in indices]
        seeds = [row_seed(recipe.seed, keys[i]) for i in indices]
        if budget is None:
            gens = run(part, settings, "generating reasoning", seeds)
            save(indices, [(g.text, g.num_tokens, g.finish_reason) for g in gens])
            continue
        # Budget forcing: reasoning up to `budget` tokens, closed by us if the teacher did not close it, then
        # the answer generated after the closed block.
        thoughts = run(part, settings.model_copy(update={"max_new_tokens": budget}), "reasoning", seeds)
        prefixes = []
        for c, g in zip(part, thoughts, strict=True):
            closed = CLOSE in g.text
            forced += not closed
            reasoning = g.text.split(CLOSE, 1)[0].rstrip()
            if not closed:
                reasoning = last_sentences(reasoning, head=c[-1]["content"])
            prefixes.append(f"{reasoning}\n{CLOSE}\n")
        # The answer is generated after the closed block: in the teacher's whole context, or (answer_sees_spec
        # false for the row) from the user's prompt and the reasoning alone, the spec reaching it through them.
        continued = [[*(c[:-1] if with_spec[i] else c[-2:-1]), {"role": "assistant", "content": c[-1]["content"] + p}]
                     for i, c, p in zip(indices, part, prefixes, strict=True)]
        answers = run(continued, settings.model_copy(update={"max_new_tokens": cfg.max_new_tokens - budget}),
                      "answering", [row_seed(recipe.seed, f"{keys[i]}:answer") for i in indices])
        save(indices,
             [(p + a.text, t.num_tokens + a.num_tokens, a.finish_reason)
              for p, t, a in zip(prefixes, thoughts, answers, strict=True)])
    return {"new_tokens": stats.new_tokens, "seconds": round(stats.seconds, 1),
            "tokens_per_second": round(stats.tokens_per_second, 1), "reasoning_closed_by_budget": forced}


def _generate_vllm(recipe: Recipe, teacher: str, conversations, save) -> dict[str, Any]:
    """vLLM on a GPU: the whole batch at once (services/serving.py), prefix caching on (every prompt of a category
    shares the spec)."""
    # No per-request seed: it would make the k samples of a prompt identical. The engine's seed is the recipe's.
    engine = VLLMEngine(resolve_model_path(teacher), dtype=teacher_model(recipe).dtype, seed=recipe.seed,
                        trust_remote_code=recipe.model.trust_remote_code, role="generate.backend")
    start = time.perf_counter()
    gens = engine.generate(conversations, recipe.generate.sampling())  # every turn is pre-filled when prefill is set
    seconds = time.perf_counter() - start
    engine.close()
    save(list(range(len(gens))), [(g.text, g.num_tokens, g.finish_reason) for g in gens])
    tokens = sum(g.num_tokens for g in gens)
    return {"new_tokens": tokens, "seconds": round(seconds, 1), "tokens_per_second": round(tokens / seconds, 1)}


def _generate_api(recipe: Recipe, conversations, save, show_progress: bool) -> dict[str, Any]:
    """A teacher behind an OpenAI-compatible API (services/serving.py); failed requests are left out (a rerun
    retries them)."""
    cfg = recipe.generate
    usage = ApiUsage()
    failures: list[str] = []

    def on_item(i: int, result: Generation | Failure) -> None:
        # Saved the moment it arrives: a killed run re-pays at most the requests in flight.
        if isinstance(result, Failure):
            failures.append(result.error)
        else:
            save([i], [(result.text, result.num_tokens, result.finish_reason)])

    ask_api(cfg, cfg.teacher, conversations, cfg.sampling(), on_item, role="generate.teacher", usage=usage,
            description="generating reasoning (api)", show_progress=show_progress)
    if failures:  # completions.jsonl is not replaced; what succeeded is saved for the rerun
        raise StageFailed(f"{failure_line('generate', 'teacher requests', len(failures), len(conversations), failures)}"
                          "; the others are saved (the earlier completions.jsonl is unchanged), run again to retry "
                          "the failed ones")
    return {"tokens_in": usage.tokens_in, "tokens_out": usage.tokens_out, "retries": usage.retries}
