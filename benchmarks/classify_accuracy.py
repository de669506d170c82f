"""How well a judge assigns spec categories to prompts (`Judge.classify`, used by `deliberate generate` for
prompts that carry none): accuracy against labelled prompts, and the confusion counts.

    python benchmarks/classify_accuracy.py [--backend hf --model smollm2] [--benchmark demo] [--limit N]
    python benchmarks/classify_accuracy.py --backend openai --model gpt-4o --benchmark strongreject \\
        --datasets-dir ../shared/datasets

The labels are the benchmark's own categories mapped to spec ids (rows whose category the spec does not know
are skipped); the judge sees only the prompt and the spec's overview of categories. A failed judgment counts
as wrong and is reported.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deliberate.config import JudgeConfig  # noqa: E402
from deliberate.judges import make_judge  # noqa: E402
from deliberate.services.benchmarks import benchmark_data, load_benchmark  # noqa: E402
from deliberate.services.data import load_prompts  # noqa: E402
from deliberate.services.spec import load_spec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="hf", choices=["hf", "openai"])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--base-url")
    parser.add_argument("--benchmark", default="demo")
    parser.add_argument("--datasets-dir")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    spec = load_spec()
    records = load_prompts(benchmark_data(load_benchmark(args.benchmark), args.datasets_dir), spec)
    records = [r for r in records if r.category in spec.category_ids][: args.limit]
    judge = make_judge(JudgeConfig(backend=args.backend, model=args.model, base_url=args.base_url, cache="none",
                                   max_concurrency=args.batch_size, max_tokens=96), spec)
    start = time.perf_counter()
    assigned = judge.classify([r.prompt for r in records])
    seconds = time.perf_counter() - start
    judge.close()
    confusion = collections.Counter((r.category, a or "FAILED") for r, a in zip(records, assigned, strict=True))
    correct = sum(n for (truth, got), n in confusion.items() if truth == got)
    failed = sum(n for (_, got), n in confusion.items() if got == "FAILED")
    print(f"{'true category':<18}{'assigned':<18}{'count':>6}")
    for (truth, got), n in sorted(confusion.items()):
        print(f"{truth:<18}{got:<18}{n:>6}")
    print(f"accuracy {correct}/{len(records)} = {correct / len(records):.0%}; {failed} failed judgments; "
          f"{seconds:.0f}s")
    print(json.dumps({"backend": args.backend, "model": args.model, "benchmark": args.benchmark,
                      "prompts": len(records), "correct": correct, "accuracy": round(correct / len(records), 3),
                      "failed": failed, "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
