"""Preference data: judge-ranked pairs sampled from a policy (`deliberate pairs`), and importers for public sets.

`build_pairs` samples `pairs.samples` completions (reasoning and answer) per prompt from the policy, judges
each one with the category's spec (the final answer only unless `pairs.judge_sees_reasoning`), and makes:
- a DPO pair per prompt: the best-scored completion against the worst, when their scores differ by at least
  `pairs.min_margin` (equal scores are a tie: no pair). A completion whose judgment failed is never paired,
  and one cut off at the token limit is left out;
- KTO examples: every judged completion, desirable when its score is at least `pairs.kto_threshold`.

Outputs in `<output_dir>/pairs/`: `completions.jsonl` (resumable), `judged.jsonl`, `pairs.jsonl` (TRL
conversational prompt/chosen/rejected with both scores), `kto.jsonl` (prompt/completion/label with the score)
and `summary.json`. Judgments are cached by the judge, so a rerun makes no new calls.

`load_preferences` reads a recipe's preference data (the stage's own pairs, or a file, URL or Hub dataset in
the TRL, PKU-SafeRLHF, HH-RLHF or two-item-list formats) as TRL conversational rows, paired or unpaired.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from deliberate.config.recipe import DataConfig, GenerationConfig, PreferenceData, Recipe
from deliberate.errors import DeliberateError
from deliberate.services.io import read_jsonl, write_json, write_jsonl

Messages = list[dict[str, str]]


def pairs_dir(recipe: Recipe) -> Path:
    return Path(recipe.output_dir) / "pairs"


def build_pairs(recipe: Recipe, show_progress: bool = True) -> dict[str, Any]:
    """Sample, judge and pair; see the module docstring. Returns the summary."""
    from deliberate.judges import PointwiseItem, make_judge
    from deliberate.services.answering import answer_records
    from deliberate.services.data import PromptRecord, load_prompts
    from deliberate.services.runs import stage_model
    from deliberate.services.spec import load_spec

    cfg = recipe.pairs
    spec = load_spec(recipe.spec)
    records = load_prompts(recipe.data, spec)
    policy = stage_model(recipe, cfg.policy) if cfg.policy else recipe.model.name
    model = recipe.model.model_copy(update={"name": policy, "dtype": cfg.dtype})
    samples = [PromptRecord(id=f"{r.id}#{s}", prompt=r.prompt, category=r.category, expected=r.expected,
                            meta={**r.meta, "prompt_id": r.id, "sample": s})
               for r in records for s in range(cfg.samples)]
    settings = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                repetition_penalty=cfg.repetition_penalty, batch_size=cfg.batch_size,
                                seed=recipe.seed)
    folder = pairs_dir(recipe)
    run = answer_records(model, samples, settings, folder / "completions.jsonl", show_progress,
                         description="sampling completions")
    judge = make_judge(recipe.judge, spec, show_progress=show_progress)
    judge.hide_reasoning = not cfg.judge_sees_reasoning
    try:
        usable = [r for r in run.rows if not (cfg.drop_cut_off and r["finish_reason"] == "length")]
        results = judge.score([PointwiseItem(r["prompt"], r["answer"], r.get("category"), r.get("expected"))
                               for r in usable])
    finally:
        judge.close()
    by_key = {r["key"]: res for r, res in zip(usable, results, strict=True)}
    judged = []
    for r in run.rows:
        res = by_key.get(r["key"])
        judged.append({"id": r["meta"]["prompt_id"], "sample": r["meta"]["sample"], "prompt": r["prompt"],
                       "category": r.get("category"), "expected": r.get("expected"), "completion": r["answer"],
                       "finish_reason": r["finish_reason"], "score": res.score if res else None,
                       "verdict": res.verdict if res else None,
                       "left_out": None if res else "cut off at max_new_tokens",
                       "judge_error": (res.errors[0] if res.errors else "no score") if res and res.score is None
                       else None})
    pairs, kto, ties = rank_pairs(judged, cfg.min_margin, cfg.kto_threshold)
    write_jsonl(folder / "judged.jsonl", judged)
    write_jsonl(folder / "pairs.jsonl", pairs)
    write_jsonl(folder / "kto.jsonl", kto)
    scored = [j for j in judged if j["score"] is not None]
    summary = {"policy": policy, "prompts": len(records), "completions": len(judged),
               "generated_now": run.generated, "cut_off": sum(j["finish_reason"] == "length" for j in judged),
               "judge_failures": sum(j["judge_error"] is not None for j in judged), "judged": len(scored),
               "mean_score": round(sum(j["score"] for j in scored) / len(scored), 3) if scored else None,
               "pairs": len(pairs), "ties": ties, "prompts_without_pair": len(records) - len(pairs),
               "kto_desirable": sum(k["label"] for k in kto),
               "kto_undesirable": sum(not k["label"] for k in kto), "min_margin": cfg.min_margin,
               "kto_threshold": cfg.kto_threshold, "judge": recipe.judge.backend,
               "judge_usage": judge.usage.to_dict()}
    write_json(folder / "summary.json", summary)
    return summary


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
                        "category": j["category"]})
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
                      "category": best["category"], "chosen_sample": best["sample"],
                      "rejected_sample": worst["sample"]})
    return pairs, kto, ties


# --- importing preference data ---------------------------------------------------------------------------------

FORMAT_COLUMNS = {
    "trl": ("prompt", "chosen", "rejected"),
    "trl_unpaired": ("prompt", "completion", "label"),
    "pku": ("prompt", "response_0", "response_1"),
    "hh": ("chosen", "rejected"),
    "pair_list": ("prompt", "response"),
}


def detect_format(columns: list[str]) -> str:
    have = set(columns)
    for name in ("pku", "trl_unpaired", "trl", "pair_list", "hh"):
        if set(FORMAT_COLUMNS[name]) <= have:
            return name
    raise DeliberateError("preference data: columns " + ", ".join(columns) + " match no known format "
                          "(prompt/chosen/rejected, prompt/completion/label, PKU-SafeRLHF response_0/response_1, "
                          "HH-RLHF chosen/rejected transcripts, prompt/response pairs); set dpo.data.format")


def _user(prompt: Any) -> Messages:
    if isinstance(prompt, list):
        return [dict(m) for m in prompt]
    return [{"role": "user", "content": str(prompt)}]


def _assistant(text: Any) -> Messages:
    if isinstance(text, list):
        return [dict(m) for m in text]
    return [{"role": "assistant", "content": str(text)}]


_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_hh(transcript: str) -> Messages:
    """An HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as chat messages."""
    text = transcript if transcript.startswith("\n\n") else "\n\n" + transcript.lstrip("\n")
    parts = _TURN.split(text)
    messages = []
    for role, text in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": text.strip()})
    return messages


def _hh_pair(chosen: str, rejected: str) -> dict[str, Any] | None:
    c, r = parse_hh(chosen), parse_hh(rejected)
    if not c or not r or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant" or c[:-1] != r[:-1]:
        return None
    if not c[-1]["content"] or not r[-1]["content"] or c[-1]["content"] == r[-1]["content"]:
        return None
    return {"prompt": c[:-1], "chosen": [c[-1]], "rejected": [r[-1]]}


def _label(value: Any, row: int) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "desirable", "safe", "yes"}:
        return True
    if text in {"false", "0", "undesirable", "unsafe", "no"}:
        return False
    raise DeliberateError(f"preference data: row {row}: label '{value}' is not true/false")


def load_preferences(recipe: Recipe, data: PreferenceData,
                     kind: Literal["paired", "unpaired"]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The preference data as TRL conversational rows, paired (prompt/chosen/rejected) or unpaired
    (prompt/completion/label), and a summary of what was read and skipped."""
    if data.source == "stage:pairs":
        name = "pairs.jsonl" if kind == "paired" else "kto.jsonl"
        path = pairs_dir(recipe) / name
        if not path.is_file():
            raise DeliberateError(f"dpo: {path} does not exist; run `deliberate pairs` first")
        rows = read_jsonl(path)
        if not rows:
            raise DeliberateError(f"dpo: {path} has no examples; sample more (pairs.samples) or lower "
                                  "pairs.min_margin")
        rows = rows[: data.limit] if data.limit else rows
        return rows, {"source": str(path), "format": "deliberate", "rows": len(rows), "skipped": 0}
    from deliberate.services.data import load_table

    df, label = load_table(DataConfig(source=data.source, subset=data.subset, split=data.split))
    fmt = detect_format([str(c) for c in df.columns]) if data.format == "auto" else data.format
    missing = [c for c in FORMAT_COLUMNS[fmt] if c not in df.columns]
    if missing:
        raise DeliberateError(f"{label}: format '{fmt}' needs column(s) {', '.join(missing)}; its columns are: "
                              f"{', '.join(map(str, df.columns))}")
    paired, unpaired, skipped = [], [], 0
    for i, row in enumerate(df.to_dict("records")):
        if fmt == "trl":  # other columns (e.g. judge scores for a MODPO margin) are kept
            paired.append({**{k: v for k, v in row.items() if k not in FORMAT_COLUMNS[fmt]},
                           "prompt": _user(row["prompt"]), "chosen": _assistant(row["chosen"]),
                           "rejected": _assistant(row["rejected"])})
        elif fmt == "pair_list":
            resp = list(row["response"])
            if len(resp) != 2:
                raise DeliberateError(f"{label}: row {i}: 'response' must be a [chosen, rejected] list")
            paired.append({"prompt": _user(row["prompt"]), "chosen": _assistant(resp[0]),
                           "rejected": _assistant(resp[1])})
        elif fmt == "hh":
            pair = _hh_pair(str(row["chosen"]), str(row["rejected"]))
            if pair is None:
                skipped += 1
            else:
                paired.append(pair)
        elif fmt == "trl_unpaired":
            unpaired.append({"prompt": _user(row["prompt"]), "completion": _assistant(row["completion"]),
                             "label": _label(row["label"], i)})
        else:  # pku
            prompt = _user(row["prompt"])
            responses = [row["response_0"], row["response_1"]]
            # KTO on harmlessness: the absolute safe / unsafe labels (SACPO); on helpfulness, the split pair.
            if kind == "unpaired" and data.preference == "safer" and "is_response_0_safe" in row:
                for n in (0, 1):
                    unpaired.append({"prompt": prompt, "completion": _assistant(responses[n]),
                                     "label": _label(row[f"is_response_{n}_safe"], i)})
                continue
            column = f"{data.preference}_response_id"
            if column not in row:
                raise DeliberateError(f"{label}: PKU-SafeRLHF format needs column '{column}' "
                                      f"(dpo.data.preference={data.preference})")
            best = int(row[column])
            if responses[0] == responses[1]:
                skipped += 1
                continue
            paired.append({"prompt": prompt, "chosen": _assistant(responses[best]),
                           "rejected": _assistant(responses[1 - best])})
    if kind == "unpaired":
        rows = unpaired or [x for p in paired for x in unpair(p)]
    else:
        rows = paired or pair_up(unpaired)
    rows = rows[: data.limit] if data.limit else rows
    if not rows:
        raise DeliberateError(f"{label}: no {kind} preference examples could be read (skipped {skipped})")
    return rows, {"source": label, "format": fmt, "rows": len(rows), "skipped": skipped}


def unpair(pair: dict[str, Any]) -> list[dict[str, Any]]:
    """A pair as two KTO examples: the chosen completion desirable, the rejected one undesirable."""
    return [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
            {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]


def pair_up(unpaired: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs from labelled completions: per prompt, each desirable one with an undesirable one, in order."""
    groups: dict[str, dict[bool, list[Messages]]] = defaultdict(lambda: {True: [], False: []})
    prompts: dict[str, Messages] = {}
    for row in unpaired:
        key = repr(row["prompt"])
        prompts[key] = row["prompt"]
        groups[key][bool(row["label"])].append(row["completion"])
    return [{"prompt": prompts[k], "chosen": good, "rejected": bad}
            for k, g in groups.items() for good, bad in zip(g[True], g[False], strict=False)]
