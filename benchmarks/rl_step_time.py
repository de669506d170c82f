"""Where an RL step's time goes: generation, judging and optimisation, with a one-at-a-time and a concurrent judge.

    python benchmarks/rl_step_time.py [--algo grpo] [--steps 3] [--latency 0.2] [--model smollm2]

The judge is a local OpenAI-compatible server (tests/fake_openai.py, its own process on 127.0.0.1) that answers
every request after `latency` seconds, as a remote GPT-4 or vLLM judge would. The same short run is made twice:
with `judge.max_concurrency=1` (each completion judged after the previous one: a synchronous judge) and with
`--concurrency` requests in flight (our async judge). Printed: seconds per step in each part, and the judge's
share of the step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
VERDICT = json.dumps({"verdict": "comply", "score": 7, "rationale": "answers the question"})


def run(algo: str, model: str, steps: int, base_url: str, concurrency: int, prompts: int, generations: int,
        tokens: int) -> dict:
    from deliberate.config import load_recipe
    from deliberate.stages.rl import run_rl

    os.environ["DELIBERATE_BENCH_KEY"] = "bench"
    with tempfile.TemporaryDirectory() as out:
        recipe = load_recipe(None, [
            f"model.name={model}", f"output_dir={out}", "data.where.split=train", f"rl.algo={algo}",
            f"rl.max_steps={steps}", f"rl.prompts_per_step={prompts}", f"rl.num_generations={generations}",
            f"rl.max_new_tokens={tokens}", "rl.lora=true", "rl.bf16=true", "rl.learning_rate=1e-5",
            "judge.backend=openai", "judge.model=bench", f"judge.base_url={base_url}",
            "judge.api_key_env=DELIBERATE_BENCH_KEY", "judge.cache=none", f"judge.max_concurrency={concurrency}"])
        return run_rl(recipe, show_progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="grpo", choices=["grpo", "rloo", "ppo"])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt")
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per completion")
    parser.add_argument("--latency", type=float, default=0.2, help="judge seconds per request")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, str(TESTS / "fake_openai.py"), str(args.latency), VERDICT],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rows = []
    try:
        base_url = server.stdout.readline().strip()
        for label, concurrency in (("sync judge (1 in flight)", 1), (f"async judge ({args.concurrency} in flight)",
                                                                     args.concurrency)):
            s = run(args.algo, args.model, args.steps, base_url, concurrency, args.prompts, args.generations,
                    args.tokens)
            parts = [s["seconds_generation"], s["seconds_judge"], s["seconds_optimisation"]]
            rows.append((label, *parts, sum(parts)))
    finally:
        server.stdin.close()
        server.wait()
    n = args.prompts * args.generations
    print(f"{args.algo} on {args.model}: {args.steps} steps of {n} completions (<= {args.tokens} tokens), judge "
          f"latency {args.latency}s per request")
    print(f"{'judge':<28} {'generation':>11} {'judging':>9} {'optimisation':>13} {'step':>7} {'judge share':>12}")
    for label, gen, judge, opt, total in rows:
        print(f"{label:<28} {gen:>10.2f}s {judge:>8.2f}s {opt:>12.2f}s {total:>6.2f}s {judge / total:>11.0%}")
    print(f"judging: {rows[0][2] / max(rows[1][2], 1e-9):.1f}x faster with the async judge")


if __name__ == "__main__":
    main()
