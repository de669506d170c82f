"""`deliberate pairs`: judge-ranked preference pairs sampled from a policy (for DPO, KTO, MODPO).

`build_pairs` samples `pairs.samples` completions (reasoning and answer) per prompt from the policy, judges
each one with the category's spec (the final answer only unless `pairs.judge_sees_reasoning`), and makes:
- a DPO pair per prompt: the best-scored completion against the worst, when their scores differ by at least
  `pairs.min_margin` (equal scores are a tie: no pair). A completion whose judgment failed is never paired,
  and one cut off at the token limit is left out;
- KTO examples: every judged completion, desirable when its score is at least `pairs.kto_threshold`.
`pairs.also_from` adds other models' samples to each prompt's candidates (e.g. the base beside the SFT model,
so a refusal and an answer to the same prompt can meet); every row says which model wrote it (`writer`).

Outputs in `<output_dir>/pairs/`: `completions.jsonl` (resumable), `judged.jsonl`, `pairs.jsonl` (TRL
conversational prompt/chosen/rejected with both scores), `kto.jsonl` (prompt/completion/label with the score)
and `summary.json`. Judgments are cached as they arrive, so a rerun makes no new calls; when more fail than
`judge.max_failures` allows, the outputs go to `pairs/incomplete/` and the stage exits 3. The policy may be
served (`model.backend`: vllm, or openai for a model behind an API); a completion whose request failed is not
written, counts as a failure under the same rule, and is asked for again by the next run.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from deliberate.config import Recipe
from deliberate.judges import PointwiseItem, make_judge, require_scale
from deliberate.services.answering import answer_records, backend_info
from deliberate.services.benchmarks import training_prompts
from deliberate.services.data import PromptRecord
from deliberate.services.failures import publish
from deliberate.services.runs import Layout, resolve_judge, stage_model
from deliberate.services.serving import ApiUsage
from deliberate.services.spec import load_spec


def build_pairs(recipe: Recipe, show_progress: bool = True) -> dict[str, Any]:
    """Sample, judge and pair; see the module docstring. Returns the summary."""
    cfg = recipe.pairs
    require_scale(resolve_judge(recipe, recipe.judge), "pairs.min_margin / pairs.kto_threshold")  # before any sampling
    spec = load_spec(recipe.spec)
    records = training_prompts(recipe.data, spec, recipe.eval.datasets_dir)
    writers = [cfg.policy or "base", *cfg.also_from]
    models = [recipe.model.model_copy(update={"name": sampler_path(recipe, ref)}) for ref in writers]
    policy, model = models[0].name, models[0]
    folder = Layout(recipe).pairs
    rows, generated, gen_errors, usage = [], 0, [], None  # usage: the served writers' requests, summed
    for i, (ref, sampler) in enumerate(zip(writers, models, strict=True)):
        # Sample numbers run on across the models (model i writes samples i*n .. i*n+n-1), so a prompt's
        # candidates stay distinct and the policy's own keep the numbers (and the file) they had without others.
        samples = [PromptRecord(id=f"{r.id}#{s}", prompt=r.prompt, category=r.category, expected=r.expected,
                                meta={**r.meta, "prompt_id": r.id, "sample": s, "writer": ref})
                   for r in records for s in range(i * cfg.samples, (i + 1) * cfg.samples)]
        path = folder / ("completions.jsonl" if i == 0 else f"completions-{i}.jsonl")
        run = answer_records(sampler, samples, cfg.sampling(), path, seed=recipe.seed, show_progress=show_progress,
                             description="sampling completions" + (f" ({ref})" if len(writers) > 1 else ""))
        rows += run.rows
        generated += run.generated
        gen_errors += run.errors
        if run.usage is not None:
            usage = usage or ApiUsage()
            usage.add(run.usage)
    judge = make_judge(resolve_judge(recipe, recipe.judge), spec, show_progress=show_progress)
    try:
        usable = [r for r in rows if not (cfg.drop_cut_off and r["finish_reason"] == "length")]
        results = judge.score([PointwiseItem(r["prompt"], r["answer"], r.get("category"), r.get("expected"))
                               for r in usable], hide_reasoning=not cfg.judge_sees_reasoning)
    finally:
        judge.close()
    by_key = {r["key"]: res for r, res in zip(usable, results, strict=True)}
    judged = []
    for r in rows:
        res = by_key.get(r["key"])
        judged.append({"id": r["meta"]["prompt_id"], "sample": r["meta"]["sample"],
                       "writer": r["meta"].get("writer", writers[0]), "prompt": r["prompt"],
                       "category": r.get("category"), "expected": r.get("expected"), "completion": r["answer"],
                       "finish_reason": r["finish_reason"], "score": res.score if res else None,
                       "verdict": res.verdict if res else None,
                       "left_out": None if res else "cut off at max_new_tokens",
                       "judge_error": (res.errors[0] if res.errors else "no score") if res and res.score is None
                       else None})
    pairs, kto, ties = rank_pairs(judged, cfg.min_margin, cfg.kto_threshold)
    scored = [j for j in judged if j["score"] is not None]
    summary = {"policy": policy, **({"also_from": [m.name for m in models[1:]]} if cfg.also_from else {}),
               **backend_info(model), "prompts": len(records), "completions": len(judged),
               "generated_now": generated, "generation_failures": len(gen_errors),
               "generation_usage": usage.to_dict() if usage else None,
               "cut_off": sum(j["finish_reason"] == "length" for j in judged),
               "judge_failures": sum(j["judge_error"] is not None for j in judged), "judged": len(scored),
               "mean_score": round(sum(j["score"] for j in scored) / len(scored), 3) if scored else None,
               "pairs": len(pairs), "ties": ties, "prompts_without_pair": len(records) - len(pairs),
               "kto_desirable": sum(k["label"] for k in kto),
               "kto_undesirable": sum(not k["label"] for k in kto), "min_margin": cfg.min_margin,
               "kto_threshold": cfg.kto_threshold, "judge": recipe.judge.backend,
               "judge_usage": judge.usage.to_dict()}
    errors = gen_errors + [j["judge_error"] for j in judged if j["judge_error"] is not None]
    publish("pairs", folder, {"judged.jsonl": judged, "pairs.jsonl": pairs, "kto.jsonl": kto, "summary.json":
            summary}, summary=summary, total=len(usable) + len(gen_errors), errors=errors,
            max_failures=recipe.judge.max_failures, what="completions and judgments" if gen_errors else "judgments")
    return summary


def sampler_path(recipe: Recipe, ref: str) -> str:
    """The model a pairs writer names: `base` is the recipe's model, `stage:`/`merge:` references their folder."""
    return recipe.model.name if ref == "base" else stage_model(recipe, ref)


def rank_pairs(judged: list[dict[str, Any]], min_margin: float,
               kto_threshold: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Best-vs-worst pairs per prompt and KTO examples, from judged completions (failed ones are skipped).

    Returns (pairs, kto examples, prompts whose best and worst scored the same)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for j in judged:
        if j["score"] is not None:
            groups[j["id"]].append(j)
    pairs, kto, ties = [], [], 0
    for group in groups.values():
        group.sort(key=lambda j: (-j["score"], j["sample"]))  # best first; the earliest sample among equals
        prompt = [{"role": "user", "content": group[0]["prompt"]}]
        for j in group:
            kto.append({"prompt": prompt, "completion": [{"role": "assistant", "content": j["completion"]}],
                        "label": j["score"] >= kto_threshold, "score": j["score"], "id": j["id"],
                        "category": j["category"], "expected": j.get("expected")})
        best, worst = group[0], group[-1]
        margin = best["score"] - worst["score"]
        if margin <= 0:
            ties += len(group) > 1
            continue
        if margin < min_margin:
            continue
        pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": best["completion"]}],
                      "rejected": [{"role": "assistant", "content": worst["completion"]}],
                      "score_chosen": best["score"], "score_rejected": worst["score"], "id": best["id"],
                      "category": best["category"], "expected": best.get("expected"), "chosen_sample": best["sample"],
                      "rejected_sample": worst["sample"],
                      **({"chosen_writer": best["writer"], "rejected_writer": worst["writer"]}
                         if "writer" in best else {})})
    return pairs, kto, ties
