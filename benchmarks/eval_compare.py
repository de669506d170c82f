"""Time and judge calls of a two-model comparison with `deliberate eval`: first run against a cached rerun.

    python benchmarks/eval_compare.py [--other FOLDER] [--benchmark demo] [--latency 0.2] [--max-new-tokens 128]

Models: the embedded SmolLM2 (the base) and `--other` (by default a second folder holding the same weights, so
the two differ only in where they live). The judge is an OpenAI-compatible server on 127.0.0.1 in its own
process that answers like a sensible judge after `--latency` seconds per request, with the judgment cache on.
Pointwise scores for both models, then helpfulness and harmlessness win rates (both orders, 3 repeats) and Elo.
The rerun must generate nothing and send no judge request.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deliberate.config import load_recipe  # noqa: E402
from deliberate.services.models import resolve_model_path  # noqa: E402
from deliberate.stages.evaluate import run_eval  # noqa: E402

TESTS = Path(__file__).resolve().parents[1] / "tests"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", help="the second model (a folder or Hub id); default: a copy of SmolLM2")
    parser.add_argument("--benchmark", default="demo")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the judge server takes per request")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="deliberate-eval-bench-"))
    other = args.other or str(shutil.copytree(resolve_model_path("smollm2"), work / "smollm2-copy"))
    server = subprocess.Popen([sys.executable, str(TESTS / "fake_openai.py"), str(args.latency), "sensible"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    runs = []
    try:
        base_url = server.stdout.readline().strip()
        sets = ["model.name=smollm2", f"output_dir={work / 'run'}", f"eval.models=[{other}]",
                f"eval.benchmarks=[{args.benchmark}]", f"generation.max_new_tokens={args.max_new_tokens}",
                "generation.batch_size=16", "judge.backend=openai", "judge.model=bench", f"judge.base_url={base_url}",
                f"judge.cache={work / 'judge.sqlite'}", "judge.max_concurrency=32"]
        os.environ.setdefault("OPENAI_API_KEY", "not-needed-for-a-local-server")
        for label in ("first run", "cached rerun"):
            start = time.perf_counter()
            report = run_eval(load_recipe(None, sets), show_progress=False)
            seconds = time.perf_counter() - start
            usage = report["judge_usage"]
            runs.append({"run": label, "seconds": round(seconds, 1),
                         "answers_generated": sum(r["generated_now"] for r in report["results"]),
                         "judge_requests": usage["requests"], "judge_cached": usage["cache_hits"],
                         "judge_failed": usage["failures"], "judge_seconds": usage["seconds"]})
    finally:
        server.stdin.close()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'run':<14}{'seconds':>9}{'answers':>9}{'judge calls':>13}{'cached':>8}{'failed':>8}")
    for r in runs:
        print(f"{r['run']:<14}{r['seconds']:>9}{r['answers_generated']:>9}{r['judge_requests']:>13}"
              f"{r['judge_cached']:>8}{r['judge_failed']:>8}")
    print(json.dumps({"benchmark": args.benchmark, "latency_s": args.latency, "runs": runs}))


if __name__ == "__main__":
    main()
