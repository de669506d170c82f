"""Generation throughput: batched vs one prompt at a time, in new tokens per second.

    python benchmarks/generation_throughput.py [--model smollm2] [--prompts 32] [--max-new-tokens 64]
        [--batch-size 16] [--dtype auto|float32|bfloat16] [--device auto|cpu|cuda] [--spec]

Greedy decoding, so both runs produce the same answers and the same number of tokens; the ratio is the speed-up
that batching (with length-sorted, left-padded batches) gives. Prompts are the built-in demo prompts.

With `--spec` the prompts are what `deliberate generate` sends a teacher (spec_for(category) and the reasoning
instructions in the system prompt, worked examples, the opening reasoning tag), and two more runs measure the
batched backend with the shared prefix's cache repeated per row instead of read once (`prefix_attention.py`),
and with no prefix sharing at all.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from deliberate.config import DataConfig, ModelConfig, SamplingConfig  # noqa: E402
from deliberate.services import generation  # noqa: E402
from deliberate.services.data import load_prompts  # noqa: E402
from deliberate.services.generation import GenerationStats, generate  # noqa: E402
from deliberate.services.models import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--spec", action="store_true", help="spec-conditioned teacher prompts (deliberate generate)")
    args = parser.parse_args()

    loaded = load_model(ModelConfig(name=args.model, dtype=args.dtype, device=args.device))
    records = load_prompts(DataConfig(limit=args.prompts))
    prompts = [r.prompt for r in records]
    if args.spec:
        from deliberate.services.spec import load_spec
        from deliberate.stages.generate import DEFAULT_INSTRUCTIONS, teacher_messages

        spec = load_spec()
        prompts = [teacher_messages(spec, r, DEFAULT_INSTRUCTIONS, True, "<think>\n") for r in records]
    settings = SamplingConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    generate(loaded.model, loaded.tokenizer, prompts[:2], settings, show_progress=False)  # warm-up

    results = {}
    outputs = {}
    default_min_prefix = generation.MIN_SHARED_PREFIX
    modes = [("batched", args.batch_size), ("one_at_a_time", 1)]
    if args.spec:
        modes[1:1] = [("batched_repeated_prefix", args.batch_size), ("batched_no_prefix_cache", args.batch_size)]
    shared_attention = generation.supports_shared_prefix
    for name, batch_size in modes:
        generation.MIN_SHARED_PREFIX = 10**9 if name == "batched_no_prefix_cache" else default_min_prefix
        generation.supports_shared_prefix = (lambda model: False) if name == "batched_repeated_prefix" \
            else shared_attention
        stats = GenerationStats()
        t = time.perf_counter()
        outputs[name] = generate(loaded.model, loaded.tokenizer, prompts,
                                 settings.model_copy(update={"batch_size": batch_size}), show_progress=False,
                                 stats=stats)
        results[name] = {"batch_size": batch_size, "new_tokens": stats.new_tokens,
                         "seconds": round(time.perf_counter() - t, 2), "tokens_per_s": round(stats.tokens_per_second, 1)}
    same = sum(a.text == b.text for a, b in zip(outputs["batched"], outputs["one_at_a_time"], strict=True))
    device = str(loaded.device) + (f" ({torch.cuda.get_device_name()})" if loaded.device.type == "cuda" else "")
    report = {
        "model": args.model, "device": device, "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "spec_prompts": args.spec,
        **results, "speedup": round(results["batched"]["tokens_per_s"] / results["one_at_a_time"]["tokens_per_s"], 2),
        "identical_answers": f"{same}/{len(prompts)}",
    }
    print(f"{'mode':<25}{'batch':>6}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}")
    for name, _ in modes:
        r = results[name]
        print(f"{name:<25}{r['batch_size']:>6}{r['new_tokens']:>8}{r['seconds']:>9}{r['tokens_per_s']:>10}")
    print(f"speed-up {report['speedup']}x; identical greedy answers {report['identical_answers']}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
