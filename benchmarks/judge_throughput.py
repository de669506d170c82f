"""Judge throughput against a local OpenAI-compatible server with fixed latency per request.

    python benchmarks/judge_throughput.py [--items 640] [--latency 0.05] [--concurrency 64]

The server (tests/fake_openai.py, a real HTTP server on 127.0.0.1, in its own process) sleeps `latency` seconds per request. With
`concurrency` requests in flight the ideal rate is concurrency / latency; we print the achieved rate, its ratio
to the ideal, and the one-request-at-a-time rate for comparison. No cache, so every item is a real request.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"

from deliberate.config import JudgeConfig  # noqa: E402
from deliberate.judges import PointwiseItem, make_judge  # noqa: E402
from deliberate.services.spec import load_spec  # noqa: E402

VERDICT = json.dumps({"verdict": "comply", "score": 9, "rationale": "answers the question"})


def rate(base_url: str, items: list[PointwiseItem], concurrency: int) -> tuple[float, int]:
    cfg = JudgeConfig(backend="openai", model="bench", base_url=base_url, max_concurrency=concurrency, cache="none",
                      structured_output="json_schema")
    judge = make_judge(cfg, load_spec(), show_progress=False)
    start = time.perf_counter()
    results = judge.score(items)
    elapsed = time.perf_counter() - start
    return len(items) / elapsed, sum(r.ok for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=640)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sequential-items", type=int, default=40)
    args = parser.parse_args()
    items = [PointwiseItem(f"question {i}", f"answer {i}", "safe") for i in range(args.items)]
    # The server runs in its own process, as a real judge server would: it must not share our interpreter.
    server = subprocess.Popen([sys.executable, str(TESTS / "fake_openai.py"), str(args.latency), VERDICT],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()
        rate(base_url, items[:args.concurrency], args.concurrency)  # warm-up
        concurrent, ok = rate(base_url, items, args.concurrency)
        sequential, _ = rate(base_url, items[: args.sequential_items], 1)
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    ideal = args.concurrency / args.latency
    report = {"items": args.items, "latency_s": args.latency, "concurrency": args.concurrency,
              "requests_per_s": round(concurrent, 1), "ideal_per_s": round(ideal, 1),
              "ratio_to_ideal": round(concurrent / ideal, 3), "judged_ok": ok,
              "sequential_per_s": round(sequential, 1), "sequential_ideal_per_s": round(1 / args.latency, 1),
              "speedup_vs_sequential": round(concurrent / sequential, 1)}
    print(f"{args.concurrency} in flight: {concurrent:.0f} req/s = {concurrent / ideal:.0%} of the ideal {ideal:.0f} req/s "
          f"({ok}/{args.items} judged)")
    print(f"one at a time: {sequential:.1f} req/s (ideal {1 / args.latency:.0f}); speed-up {concurrent / sequential:.0f}x")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
