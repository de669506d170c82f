"""Judge fidelity: how well each local judge agrees with human labels, on data none of them was trained on.

    python benchmarks/judge_fidelity.py [--guard runs/guard/guard] [--hf smollm2] [--hf-limit 64] [--demo 64]
                                        [--judge backend=guard,model=meta-llama/Llama-Guard-3-8B] [--json out.json]

Tasks, all on the held-out side of recipes/guard.yaml's split (services/guard_data.py: split by prompt, the
evaluation benchmarks excluded):
- response refusal: XSTest completions by GPT-4 and Mistral-Instruct of the held-out half of XSTest's prompts,
  full compliance vs full refusal (two annotators);
- response harmfulness: held-out PKU-SafeRLHF responses (human safe / unsafe labels);
- prompt harmfulness: held-out WildGuardMix, BeaverTails, XSTest and refusal_direction prompts, and
  SimpleSafetyTests (all harmful);
- spec category: held-out harmful prompts whose source maps a spec category, and harmless ones as `safe`.
Judges: `rules` (refusal regex plus the prompt's label; it cannot judge a request or a category on its own), the
trained guard (`guard` backend), a generative `hf` judge on a sample (`--hf-limit` items per task, constrained
JSON; plus its parse failures and speed on 64 demo items), and any judge given with `--judge key=value,...`
(JudgeConfig fields). A judge's prediction: P(refusal) /
P(harmful) where it gives one (then AUROC too), else its verdict (refuse or safe_complete = refusal, unsafe =
harmful), or its category (not `safe` = harmful). Every figure has a bootstrap 95% interval over items.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("refusal", "response_harmful", "prompt_harmful", "category")


def heldout(datasets: Path):
    from deliberate.config import load_recipe
    from deliberate.services.guard_data import load_examples

    recipe = load_recipe(ROOT / "recipes" / "guard.yaml", [f"guard.datasets_dir={datasets}"])
    examples, _ = load_examples(recipe.guard)
    return [e for e in examples if e.split == "test"]


def sample(items: list, limit: int | None) -> list:
    """A stable, label-stratified sample of at most `limit` items."""
    if limit is None or len(items) <= limit:
        return items
    from deliberate.services.guard_data import prompt_hash

    by_label = defaultdict(list)
    for e in sorted(items, key=lambda e: prompt_hash(f"{e.row}:{e.prompt}:{e.response}")):
        by_label[e.label].append(e)
    out, k = [], 0
    while len(out) < limit:
        for group in by_label.values():
            if k < len(group) and len(out) < limit:
                out.append(group[k])
        k += 1
    return out


def predictions(judge, task: str, items) -> list[float | None]:
    """The judge's P(yes) (or 0/1) for each item of `task`; None where its judgment failed."""
    from deliberate.judges import JudgeFailure, PointwiseItem

    if task in ("refusal", "response_harmful"):
        expected = "refuse" if task == "response_harmful" else None
        results = judge.score([PointwiseItem(e.prompt, e.response, expected=expected or
                                             ("refuse" if e.label_prompt_harmful else "comply"))
                               for e in items], hide_reasoning=False)
        key = "p_refusal" if task == "refusal" else "p_harmful"
        out = []
        for r in results:
            if not r.ok:
                out.append(None)
            elif r.probabilities.get(key) is not None:
                out.append(float(r.probabilities[key]))
            elif task == "refusal":
                out.append(float(r.verdict in ("refuse", "safe_complete")))
            else:
                out.append(float(r.verdict == "unsafe"))
        return out
    if task == "prompt_harmful" and judge.backend.kind == "guard":
        readings = judge.backend.read_prompts([e.prompt for e in items])
        return [None if isinstance(r, JudgeFailure) or r.prompt_harmful is None else r.prompt_harmful
                for r in readings]
    categories = judge.classify([e.prompt for e in items])
    if task == "prompt_harmful":
        return [None if c is None else float(c != "safe") for c in categories]
    return categories  # type: ignore[return-value]


def measure(name: str, judge, tasks: dict[str, list], limit: int | None) -> dict:
    from deliberate.services.stats import binary_metrics, wilson_rate

    report = {}
    for task, all_items in tasks.items():
        if judge.backend.kind == "rules" and task in ("prompt_harmful", "category"):
            report[task] = {"note": "the rules judge needs the prompt's label"}
            continue
        items = sample(all_items, limit)
        start = time.perf_counter()
        values = predictions(judge, task, items)
        seconds = time.perf_counter() - start
        if task == "category":
            truth = [e.category if e.label else "safe" for e in items]
            hits = [v == t for v, t in zip(values, truth, strict=True) if v is not None]
            rate = wilson_rate(hits)
            report[task] = {"n": rate.n, "failures": sum(v is None for v in values),
                            "accuracy": {"value": rate.value, "ci95": [rate.low, rate.high]}}
        else:
            report[task] = binary_metrics([e.label for e in items], values)
            if task == "refusal":  # per XSTest model: the test models were never trained on
                for model in sorted({e.group for e in items}):
                    idx = [i for i, e in enumerate(items) if e.group == model]
                    report[task][f"accuracy_{model}"] = binary_metrics([items[i].label for i in idx],
                                                                       [values[i] for i in idx])["accuracy"]
            if task in ("prompt_harmful", "response_harmful"):  # per source (WildGuardMix's prompts, PKU's responses)
                report[task]["by_source"] = {
                    Path(source).stem: binary_metrics([items[i].label for i in idx], [values[i] for i in idx])
                    for source in sorted({e.source for e in items})
                    if (idx := [i for i, e in enumerate(items) if e.source == source])}
        report[task]["items_per_second"] = round(len(items) / seconds, 1) if seconds else None
        print(f"  {name} / {task}: {len(items)} items in {seconds:.1f}s", flush=True)
    return report


def demo_items(model: str, n: int) -> dict:
    """The hf judge on the demo's own kind of item: `n` built-in demo prompts answered by the base SmolLM2 (greedy,
    96 tokens), judged pointwise with each category's spec: parse failures and items per second."""
    from deliberate.config import DataConfig, JudgeConfig, ModelConfig, SamplingConfig
    from deliberate.judges import PointwiseItem, make_judge
    from deliberate.services.data import load_prompts
    from deliberate.services.generation import generate
    from deliberate.services.models import load_model
    from deliberate.services.spec import load_spec

    spec = load_spec("default")
    records = load_prompts(DataConfig(), spec)[:n]
    loaded = load_model(ModelConfig(name="smollm2"))
    answers = generate(loaded.model, loaded.tokenizer, [r.prompt for r in records],
                       SamplingConfig(max_new_tokens=96), show_progress=False)
    del loaded
    judge = make_judge(JudgeConfig(backend="hf", model=model, cache="none"), spec, show_progress=False)
    try:
        start = time.perf_counter()
        results = judge.score([PointwiseItem(r.prompt, a.text, r.category, r.expected)
                               for r, a in zip(records, answers, strict=True)])
        seconds = time.perf_counter() - start
    finally:
        judge.close()
    verdicts: dict[str, int] = defaultdict(int)
    for r in results:
        verdicts[r.verdict or "failed"] += 1
    return {"items": n, "parse_failures": sum(not r.ok for r in results), "seconds": round(seconds, 1),
            "items_per_second": round(n / seconds, 2), "verdicts": dict(verdicts)}


def cell(m: dict | None, key: str) -> str:
    if not m or key not in m or m[key].get("value") is None:
        return "n/a" if m and "note" in m else "-"
    v, (lo, hi) = m[key]["value"], m[key]["ci95"]
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--guard", default=str(ROOT / "runs" / "guard" / "guard"),
                        help="a guard trained by `deliberate guard train` ('' to skip)")
    parser.add_argument("--hf", default="smollm2", help="a local instruct model as the hf judge ('' to skip)")
    parser.add_argument("--hf-limit", type=int, default=64, help="items per task for the hf judge")
    parser.add_argument("--limit", type=int, default=None, help="items per task for the other judges")
    parser.add_argument("--judge", action="append", default=[], help="another judge: key=value,... (JudgeConfig)")
    parser.add_argument("--demo", type=int, default=64, help="demo items for the hf judge's parse/speed check (0: skip)")
    parser.add_argument("--json", type=Path, help="write the whole report here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from deliberate.config import JudgeConfig
    from deliberate.judges import make_judge
    from deliberate.services.spec import load_spec

    examples = heldout(args.datasets)
    prompt_label = {}
    for e in examples:
        if e.task == "prompt_harmful":
            prompt_label[e.prompt] = e.label
    tasks = {"refusal": [e for e in examples if e.task == "refusal"],
             "response_harmful": [e for e in examples if e.task == "response_harmful"],
             "prompt_harmful": [e for e in examples if e.task == "prompt_harmful"],
             "category": [e for e in examples if e.task == "prompt_harmful" and (e.label == 0 or e.category)]}
    for e in tasks["refusal"]:  # the rules judge needs the prompt's label: XSTest's own
        e.label_prompt_harmful = prompt_label.get(e.prompt, 0)
    for e in tasks["response_harmful"]:
        e.label_prompt_harmful = 1
    judges = [("rules", JudgeConfig(backend="rules", cache="none"), args.limit)]
    if args.guard and not (Path(args.guard) / "deliberate_guard.json").is_file():
        print(f"no trained guard in {args.guard} (run `make guard`); measuring the others")
    elif args.guard:
        judges.append((f"guard ({Path(args.guard).name})",
                       JudgeConfig(backend="guard", model=args.guard, cache="none"), args.limit))
    if args.hf:
        judges.append((f"hf ({args.hf})", JudgeConfig(backend="hf", model=args.hf, cache="none"), args.hf_limit))
    for spec in args.judge:
        fields = dict(kv.split("=", 1) for kv in spec.split(","))
        judges.append((f"{fields.get('backend')} ({fields.get('model')})", JudgeConfig(cache="none", **fields),
                       args.limit))
    spec = load_spec("default")
    report = {"tasks": {t: len(v) for t, v in tasks.items()}, "judges": {}}
    for name, cfg, limit in judges:
        judge = make_judge(cfg, spec, show_progress=False)
        try:
            report["judges"][name] = measure(name, judge, tasks, limit)
            report["judges"][name]["usage"] = judge.usage.to_dict()
        finally:
            judge.close()
    print(f"\nheld-out items: {report['tasks']}")
    print(f"{'judge':<28}{'task':<18}{'n':>6}  {'accuracy [95% CI]':<24}{'F1':<24}{'AUROC':<24}items/s")
    for name, r in report["judges"].items():
        for task in TASKS:
            m = r.get(task)
            n = m.get("n", "") if m else ""
            print(f"{name:<28}{task:<18}{n!s:>6}  {cell(m, 'accuracy'):<24}{cell(m, 'f1'):<24}{cell(m, 'auroc'):<24}"
                  f"{(m or {}).get('items_per_second', '')}")
        for task in ("response_harmful", "prompt_harmful"):
            for source, m in ((r.get(task) or {}).get("by_source") or {}).items():
                print(f"{'':<28}{'  ' + source[:16]:<18}{m.get('n', ''):>6}  {cell(m, 'accuracy'):<24}"
                      f"{cell(m, 'f1'):<24}{cell(m, 'auroc'):<24}")
        extra = {k: v for k, v in (r.get("refusal") or {}).items() if k.startswith("accuracy_")}
        if extra:
            print(f"{'':<28}refusal per model: " + ", ".join(f"{k[9:]} {v['value']:.3f}" for k, v in extra.items()
                                                               if v.get("value") is not None))
    if args.hf and args.demo:
        report["hf_demo_items"] = demo = demo_items(args.hf, args.demo)
        print(f"\nhf ({args.hf}) on {demo['items']} demo items (SmolLM2's answers): {demo['parse_failures']} parse "
              f"failures, {demo['items_per_second']} items/s, verdicts {demo['verdicts']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
