"""A prepared GPU check: training and generation speed of a 0.5B Llama on one accelerator, in a few minutes.

    PYTHONPATH=. python benchmarks/gpu_check.py [--out gpu_check.json]      # from the repo root, on one GPU
    PYTHONPATH=. python benchmarks/gpu_check.py --tiny --device cpu         # the same sections, tiny, on a CPU

Needs torch, transformers >= 5 (deliberate's pin; tokenizers comes with it), Python >= 3.11 and the repo on
PYTHONPATH; nothing to download or carry: no trl, datasets, vllm, pydantic or rich. The model is built from a
config with random weights (the shapes of Qwen2.5-0.5B as a Llama: hidden 896, 24 layers, 14 heads, 2 key/value
heads, vocabulary 151,936, tied embeddings: 494M parameters) and its prompts are random token ids, read through
a word-level tokenizer built here whose token i is the word `t{i}`, so that deliberate's text-in, text-out
`generation.generate` can be timed on them. That module imports `rich` for progress bars, which this check never
draws; where rich is missing, a stand-in that draws nothing is used while it is imported (`import_generation`).

Sections (each a fixed number of steps after warm-up, timed between `torch.cuda.synchronize()` calls, and
skipped once `--budget-s` has run out; sized for about two minutes on an H100/H200, an estimate): a section
that fails is reported with its error and the others still run.
- `sft`: causal-LM loss on a fixed batch of random tokens, AdamW, weights and optimizer states in the model's
  dtype (bfloat16 on a GPU; no float32 master copy). Tokens/s and MFU.
- `dpo`: the sigmoid DPO loss written out: a frozen copy of the policy as reference, chosen and rejected
  completions after a shared prompt run as one batch, log-probabilities summed over completion tokens. At step 0
  policy and reference are equal, so the loss is log 2.
- generation, greedy, prompts of a long shared prefix and a few tokens of their own (as deliberate's
  spec-conditioned prompts are): `hf_generate` is HF batched `generate` with left padding (the prefix repeated per
  row); `deliberate_generate` is `deliberate.services.generation.generate`, which picks deliberate's own decode
  loop (`decoding.py`) on a CPU and, elsewhere, HF generate with the shared prefix computed once and read
  through cascade attention (`prefix_attention.py`); `deliberate_hf_cascade` is that second path forced with
  `DELIBERATE_DECODER=hf` where the first path was the decode loop; `deliberate_decoder` runs the decode loop
  itself on the GPU, and is reported as failed (with its error) where it does not run there. Each run reports
  tokens/s and its agreement with `hf_generate`: the share of rows whose tokens are identical and the mean length
  of the matching beginning. Random weights give nearly flat logits, so bfloat16 rounding flips many argmaxes
  between two correct implementations: the same comparison is repeated in float32 on a few prompts
  (`agreement_float32`), where they should agree.
- `grpo`: one GRPO-like step: P prompts x G sampled completions through `generation.generate`, a deterministic
  reward in-script (the share of even token ids; no judge), group-normalised advantages, the policy-gradient
  loss on the completions' log-probabilities, backward and optimizer step. Seconds in each part and its share.

MFU = model FLOPs per second / the device's dense bfloat16 peak (989 TFLOP/s for an H100 SXM or H200, found from
the device name; `--peak-tflops` otherwise; "n/a" on a CPU unless given). Model FLOPs per token, PaLM's count:
6N + 12·L·d·T for a training step (N parameters, L layers, d attention width, T sequence length), plus 2N + 4·L·d·T
for the reference forward in DPO.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812

PAD, EOS, UNK = 0, 1, 2  # the word-level tokenizer's special tokens; prompts and rewards use ids from 3 up
PEAK_BF16 = [("h100 pcie", 756e12), ("h100 nvl", 835e12), ("h100", 989e12), ("h200", 989e12), ("gh200", 989e12),
             ("a100", 312e12)]  # dense bfloat16 FLOP/s by device name (most specific first)


@dataclass(frozen=True)
class Sizes:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    warmup: int  # untimed steps before each training section
    sft_batch: int
    sft_seq: int
    sft_steps: int
    dpo_pairs: int
    dpo_prompt: int
    dpo_completion: int
    dpo_steps: int
    gen_prompts: int
    gen_prefix: int  # tokens every generation prompt starts with
    gen_own: tuple[int, int]  # each prompt's own tokens after the prefix: lowest and highest count
    gen_new: int
    f32_prompts: int  # the float32 agreement check: prompts and new tokens
    f32_new: int
    grpo_prompts: int
    grpo_generations: int
    grpo_prompt: int
    grpo_new: int
    grpo_steps: int  # the first is a warm-up, reported but left out of the means


FULL = Sizes(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=151936, warmup=3,
             sft_batch=8, sft_seq=1024, sft_steps=20, dpo_pairs=4, dpo_prompt=512, dpo_completion=512, dpo_steps=20,
             gen_prompts=32, gen_prefix=1000, gen_own=(24, 40), gen_new=128, f32_prompts=8, f32_new=32,
             grpo_prompts=8, grpo_generations=8, grpo_prompt=128, grpo_new=128, grpo_steps=4)
TINY = Sizes(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=512, warmup=1,
             sft_batch=4, sft_seq=64, sft_steps=4, dpo_pairs=2, dpo_prompt=32, dpo_completion=32, dpo_steps=4,
             gen_prompts=8, gen_prefix=80, gen_own=(4, 10), gen_new=16, f32_prompts=4, f32_new=8,
             grpo_prompts=2, grpo_generations=4, grpo_prompt=16, grpo_new=16, grpo_steps=3)


@dataclass
class Sampling:
    """The fields of deliberate's SamplingConfig that generation reads, without its pydantic schema."""

    max_new_tokens: int
    batch_size: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0


def import_generation() -> bool:
    """Import deliberate's generation module, with a stand-in for `rich` where it is missing: the module imports
    rich for progress bars, which this check never draws (a Console that is not a terminal draws none). The
    stand-in is in `sys.modules` only while the module is imported, so that nothing else (transformers asks
    `find_spec("rich")`) takes it for the real package. True if the stand-in was used."""
    try:
        import rich.console  # noqa: F401
        import rich.progress  # noqa: F401

        stand_in = False
    except ImportError:
        stand_in = True
    if stand_in:
        class Console:
            is_terminal = False

            def __init__(self, *args, **kwargs) -> None:
                pass

        class Unavailable:
            def __init__(self, *args, **kwargs) -> None:
                raise RuntimeError("rich is not installed; its stand-in draws no progress bars")

        package, console, progress = (types.ModuleType(n) for n in ("rich", "rich.console", "rich.progress"))
        console.Console = Console
        progress.__getattr__ = lambda name: Unavailable
        package.console, package.progress = console, progress
        names = {"rich": package, "rich.console": console, "rich.progress": progress}
        saved = {n: sys.modules[n] for n in names if n in sys.modules}
        sys.modules.update(names)
    try:
        import deliberate.services.generation  # noqa: F401
    finally:
        if stand_in:
            for n in names:
                sys.modules.pop(n, None)
            sys.modules.update(saved)
    return stand_in


# -- the model, its tokenizer and timing -----------------------------------------------------------------------


def build_model(sizes: Sizes, device: torch.device, dtype: torch.dtype, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=sizes.vocab, hidden_size=sizes.hidden, intermediate_size=sizes.intermediate,
        num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads, num_key_value_heads=sizes.kv_heads,
        max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model = model.to(dtype)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = PAD, EOS
    return model


def word_tokenizer(vocab: int):
    """Token i is the word `t{i}` (and 0-2 are <pad>, <eos>, <unk>): text made of such words encodes to exactly
    the ids it was written from, so random token ids can go through text-in, text-out generation."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK, **{f"t{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def as_text(ids: list[int]) -> str:
    return " ".join(f"t{i}" for i in ids)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def timer(device: torch.device, into: dict, key: str) -> Iterator[None]:
    """Adds the seconds of the block (the device's queued work included) to `into[key]`."""
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    into[key] = into.get(key, 0.0) + time.perf_counter() - start


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def train_flops_per_token(n_params: int, sizes: Sizes, seq: int) -> float:
    """PaLM's model FLOPs of one token in a forward and backward pass: 6N plus attention's 12·L·d·T."""
    return 6 * n_params + 12 * sizes.layers * sizes.hidden * seq


def mfu(flops_per_s: float, peak: float | None) -> float | None:
    return round(flops_per_s / peak, 4) if peak else None


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def optimizer(model, device: torch.device, lr: float):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95),
                             weight_decay=0.0, fused=device.type == "cuda")


def timed_steps(step: Callable[[], float], warmup: int, steps: int, device: torch.device, budget: Budget):
    """Runs `step` (which returns its loss) warmup + steps times; seconds of the timed ones and every loss."""
    losses, seconds = [], []
    for i in range(warmup + steps):
        if i >= warmup and seconds and budget.left() < 0:
            break
        sync(device)
        start = time.perf_counter()
        losses.append(step())
        sync(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds, losses


# -- training sections -----------------------------------------------------------------------------------------


def run_sft(model, sizes: Sizes, device, n_params: int, peak, budget: Budget, lr: float) -> dict:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, sizes.vocab, (sizes.sft_batch, sizes.sft_seq), generator=generator).to(device)
    opt = optimizer(model, device, lr)
    model.train()

    def step() -> float:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    seconds, losses = timed_steps(step, sizes.warmup, sizes.sft_steps, device, budget)
    tokens = sizes.sft_batch * sizes.sft_seq
    per_step = statistics.mean(seconds)
    flops = train_flops_per_token(n_params, sizes, sizes.sft_seq) * tokens / per_step
    return {"batch": sizes.sft_batch, "seq": sizes.sft_seq, "steps": len(seconds), "seconds_per_step": per_step,
            "tokens_per_s": tokens / per_step, "tflops": flops / 1e12, "mfu": mfu(flops, peak),
            "loss_first": losses[0], "loss_last": losses[-1], "log_vocab": math.log(sizes.vocab)}


def completion_logps(model, ids: torch.Tensor, completion: int, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the log-probabilities of each row's last `completion` tokens (where `mask` is 1), logits computed
    only where they predict those tokens."""
    logits = model(input_ids=ids, logits_to_keep=completion + 1).logits[:, :-1].float()
    targets = ids[:, -completion:]
    token_logps = -F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    return (token_logps * mask).sum(-1)


def run_dpo(model, sizes: Sizes, device, n_params: int, peak, budget: Budget, lr: float, beta: float) -> dict:
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(2)
    pairs, prompt_len, completion = sizes.dpo_pairs, sizes.dpo_prompt, sizes.dpo_completion
    prompt = torch.randint(3, sizes.vocab, (pairs, prompt_len), generator=generator)
    chosen, rejected = (torch.randint(3, sizes.vocab, (pairs, completion), generator=generator) for _ in range(2))
    # chosen rows then rejected rows, one forward for both (as TRL's concatenated forward)
    ids = torch.cat([torch.cat([prompt, chosen], 1), torch.cat([prompt, rejected], 1)]).to(device)
    mask = torch.ones(2 * pairs, completion, device=device)
    opt = optimizer(model, device, lr)
    model.train()

    def step() -> float:
        with torch.no_grad():
            ref = completion_logps(reference, ids, completion, mask)
        policy = completion_logps(model, ids, completion, mask)
        margin = (policy[:pairs] - ref[:pairs]) - (policy[pairs:] - ref[pairs:])
        loss = -F.logsigmoid(beta * margin).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    seconds, losses = timed_steps(step, sizes.warmup, sizes.dpo_steps, device, budget)
    seq = prompt_len + completion
    tokens = 2 * pairs * seq
    per_step = statistics.mean(seconds)
    per_token = train_flops_per_token(n_params, sizes, seq) + 2 * n_params + 4 * sizes.layers * sizes.hidden * seq
    flops = per_token * tokens / per_step
    return {"pairs": pairs, "seq": seq, "beta": beta, "steps": len(seconds), "seconds_per_step": per_step,
            "tokens_per_s": tokens / per_step, "tflops": flops / 1e12, "mfu": mfu(flops, peak),
            "loss_step0": losses[0], "loss_last": losses[-1], "losses": losses}


# -- generation ------------------------------------------------------------------------------------------------


def hf_generate(model, rows: list[list[int]], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """HF batched greedy `generate`, prompts left-padded, each row's prompt whole (no prefix sharing)."""
    device = next(model.parameters()).device
    outputs = []
    for s in range(0, len(rows), batch_size):
        batch = rows[s: s + batch_size]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), PAD, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, width - len(r):], attention[i, width - len(r):] = torch.tensor(r), 1
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=attention.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=EOS, pad_token_id=PAD,
                                 temperature=None, top_p=None, top_k=None)
        for tokens in out[:, width:].tolist():
            stop = tokens.index(EOS) if EOS in tokens else len(tokens)
            # as deliberate returns them: decoded without special tokens
            outputs.append([t for t in tokens[:stop] if t not in (PAD, UNK)])
    return outputs


def deliberate_generate(model, tokenizer, rows: list[list[int]], settings: Sampling, seed: int = 0):
    """`generation.generate` on the rows as text; the new tokens of each row, read back from its text."""
    from deliberate.services import generation

    out = generation.generate(model, tokenizer, [as_text(r) for r in rows], settings, seed=seed, rendered=True,
                              show_progress=False)
    return [tokenizer(g.text, add_special_tokens=False)["input_ids"] if g.text else [] for g in out]


def decoder_generate(model, rows: list[list[int]], settings: Sampling) -> list[list[int]]:
    """deliberate's decode loop called directly, on whatever device the model is on."""
    from deliberate.services import decoding

    decoder = decoding.decoder_for(model)
    decoder.prefixes.clear()
    model.eval()
    with torch.inference_mode():
        outs = decoder.generate(rows, [""] * len(rows), settings, list(range(len(rows))), [EOS], settings.batch_size)
    return [[t for t in o.tokens if t not in (PAD, UNK)] for o in outs]


def deliberate_path(model, device: torch.device) -> str:
    from deliberate.services import decoding, generation

    if device.type == "cpu" and decoding.supported(model):
        return "decode loop (decoding.py)"
    if generation.supports_shared_prefix(model):
        return "HF generate + cascade attention over the shared prefix (prefix_attention.py)"
    return "HF generate"


@contextlib.contextmanager
def decoder_env(value: str | None) -> Iterator[None]:
    previous = os.environ.get("DELIBERATE_DECODER")
    if value is None:
        os.environ.pop("DELIBERATE_DECODER", None)
    else:
        os.environ["DELIBERATE_DECODER"] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DELIBERATE_DECODER", None)
        else:
            os.environ["DELIBERATE_DECODER"] = previous


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    from deliberate.services.decoding import common_prefix

    matching = [common_prefix(a, b) for a, b in zip(reference, other, strict=True)]
    return {"rows": len(reference), "identical": sum(a == b for a, b in zip(reference, other, strict=True))
            / len(reference), "mean_matching_prefix": statistics.mean(matching),
            "mean_length": statistics.mean(len(a) for a in reference)}


def generation_prompts(sizes: Sizes, count: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, sizes.vocab, (sizes.gen_prefix,), generator=generator).tolist()
    low, high = sizes.gen_own
    own = torch.randint(low, high + 1, (count,), generator=generator).tolist()
    return [prefix + torch.randint(3, sizes.vocab, (n,), generator=generator).tolist() for n in own]


def generation_runs(model, tokenizer, device: torch.device) -> list[tuple[str, Callable]]:
    """The generation paths, each `run(rows, settings) -> new tokens per row`; `hf_generate` first (the reference)."""
    from deliberate.services import decoding

    def cascade(rows, settings):
        with decoder_env("hf"):
            return deliberate_generate(model, tokenizer, rows, settings)

    runs = [("hf_generate", lambda rows, s: hf_generate(model, rows, s.max_new_tokens, s.batch_size)),
            ("deliberate_generate", lambda rows, s: deliberate_generate(model, tokenizer, rows, s))]
    if device.type == "cpu" and decoding.supported(model):  # the path a GPU takes, here too
        runs.append(("deliberate_hf_cascade", cascade))
    else:  # the decode loop, which generate() takes on a CPU only
        runs.append(("deliberate_decoder", lambda rows, s: decoder_generate(model, rows, s)))
    return runs


def run_generation(model, tokenizer, sizes: Sizes, device, budget: Budget) -> dict:
    from deliberate.services import decoding

    rows = generation_prompts(sizes, sizes.gen_prompts, seed=3)
    settings = Sampling(max_new_tokens=sizes.gen_new, batch_size=sizes.gen_prompts)
    warm = Sampling(max_new_tokens=4, batch_size=2)
    report: dict = {"prompts": len(rows), "shared_prefix": sizes.gen_prefix, "own_tokens": list(sizes.gen_own),
                    "max_new_tokens": sizes.gen_new, "batch_size": settings.batch_size,
                    "deliberate_path": deliberate_path(model, device)}
    outputs: dict[str, list[list[int]]] = {}
    for name, run in generation_runs(model, tokenizer, device):
        if budget.left() < 0:
            report[name] = {"ran": False, "skipped": "budget"}
            continue
        times: dict = {}
        try:
            run(rows[:2], warm)  # kernels, allocator; on a GPU, whether the path runs there at all
            if decoding.supported(model):
                decoding.decoder_for(model).prefixes.clear()  # every run starts with no prefix kept
            with timer(device, times, "seconds"):
                outputs[name] = run(rows, settings)
        except Exception as e:  # a path that does not run on this device is a finding, not a crash
            report[name] = {"ran": False, "error": f"{type(e).__name__}: {e}"[:400]}
            continue
        new = sum(map(len, outputs[name]))
        report[name] = {"ran": True, "new_tokens": new, "seconds": times["seconds"],
                        "tokens_per_s": new / times["seconds"]}
        if name != "hf_generate" and "hf_generate" in outputs:
            report[name]["agreement_with_hf_generate"] = agreement(outputs["hf_generate"], outputs[name])
    if model.dtype != torch.float32 and "hf_generate" in outputs and budget.left() > 0:
        report["agreement_float32"] = float32_agreement(model, tokenizer, sizes, device, rows, set(outputs))
    return report


def float32_agreement(model, tokenizer, sizes: Sizes, device, rows, ran: set[str]) -> dict:
    """The paths that ran, again on a float32 copy, few prompts and tokens: agreement without bfloat16 rounding."""
    copy32 = copy.deepcopy(model).float()
    settings = Sampling(max_new_tokens=sizes.f32_new, batch_size=sizes.f32_prompts)
    subset = rows[:sizes.f32_prompts]
    out: dict = {"prompts": len(subset), "max_new_tokens": settings.max_new_tokens}
    (_, reference), *others = generation_runs(copy32, tokenizer, device)
    expected = reference(subset, settings)
    for name, run in others:
        if name in ran:
            try:
                out[name] = agreement(expected, run(subset, settings))
            except Exception as e:
                out[name] = {"ran": False, "error": f"{type(e).__name__}: {e}"[:400]}
    return out


# -- GRPO ------------------------------------------------------------------------------------------------------


def reward(tokens: list[int]) -> float:
    """A deterministic stand-in for a judge: the share of even token ids (an empty answer scores 0)."""
    return sum(t % 2 == 0 for t in tokens) / len(tokens) if tokens else 0.0


def run_grpo(model, tokenizer, sizes: Sizes, device, budget: Budget, lr: float) -> dict:
    P, G, new = sizes.grpo_prompts, sizes.grpo_generations, sizes.grpo_new
    generator = torch.Generator().manual_seed(4)
    prompts = torch.randint(3, sizes.vocab, (P, sizes.grpo_prompt), generator=generator).tolist()
    rows = [p for p in prompts for _ in range(G)]  # each prompt's G copies together
    settings = Sampling(max_new_tokens=new, batch_size=P * G, temperature=1.0)
    opt = optimizer(model, device, lr)
    steps = []
    for step in range(sizes.grpo_steps):
        if steps and budget.left() < 0:
            break
        parts: dict = {}
        with timer(device, parts, "total"):
            with timer(device, parts, "generation"):
                from deliberate.services import generation

                texts = generation.generate(model, tokenizer, [as_text(r) for r in rows], settings, seed=step,
                                            rendered=True, show_progress=False)
            with timer(device, parts, "scoring"):
                completions = [tokenizer(g.text, add_special_tokens=False)["input_ids"] if g.text else []
                               for g in texts]
                rewards = torch.tensor([reward(c) for c in completions]).view(P, G)
                advantages = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4))
                advantages = advantages.flatten().to(device)
            with timer(device, parts, "forward_backward"):
                model.train()
                width = max(1, max(map(len, completions)))
                ids = torch.full((P * G, sizes.grpo_prompt + width), PAD, dtype=torch.long)
                mask = torch.zeros((P * G, width))
                for i, (r, c) in enumerate(zip(rows, completions, strict=True)):
                    ids[i, :len(r)] = torch.tensor(r)
                    ids[i, len(r): len(r) + len(c)] = torch.tensor(c, dtype=torch.long)
                    mask[i, :len(c)] = 1
                ids, mask = ids.to(device), mask.to(device)
                logps = completion_logps(model, ids, width, mask) / mask.sum(-1).clamp(min=1)
                loss = -(advantages * logps).mean()  # on-policy: the ratio is 1, its gradient that of log-probs
                loss.backward()
            with timer(device, parts, "optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
        parts["new_tokens"] = sum(map(len, completions))
        parts["reward_mean"] = rewards.mean().item()
        steps.append(parts)
    measured = steps[1:] or steps  # the first step warms up
    keys = ("generation", "scoring", "forward_backward", "optimizer")
    mean = {k: statistics.mean(s[k] for s in measured) for k in (*keys, "total", "new_tokens")}
    return {"prompts": P, "generations": G, "prompt_tokens": sizes.grpo_prompt, "max_new_tokens": new,
            "steps_measured": len(measured), "seconds": {k: mean[k] for k in (*keys, "total")},
            "share": {k: mean[k] / mean["total"] for k in keys},
            "generation_tokens_per_s": mean["new_tokens"] / mean["generation"], "steps": steps}


# -- report ----------------------------------------------------------------------------------------------------


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def fmt(value, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def summary(report: dict) -> str:
    lines = [f"device {report['device']}  torch {report['torch']}  transformers {report['transformers']}  "
             f"{report['dtype']}  {report['model']['parameters'] / 1e6:,.1f}M parameters  "
             f"{report['elapsed_s']:.1f} s",
             f"{'section':<24}{'tokens/s':>12}{'MFU':>8}  notes"]
    for name in ("sft", "dpo"):
        r = report[name]
        if "skipped" in r or "error" in r:
            lines.append(f"{name:<24}{'-':>12}{'':>8}  {r.get('error') or 'skipped: ' + r['skipped']}")
            continue
        loss = (f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f} (ln V {r['log_vocab']:.3f})" if name == "sft"
                else f"loss step 0 {r['loss_step0']:.4f} (log 2 = 0.6931) -> {r['loss_last']:.4f}")
        lines.append(f"{name:<24}{fmt(r['tokens_per_s']):>12}{fmt(r['mfu'], '.1%'):>8}  {r['steps']} steps, "
                     f"{r['seconds_per_step'] * 1e3:.0f} ms/step, {loss}")
    gen = report["generation"]
    if "skipped" in gen or "error" in gen:
        lines.append(f"{'generation':<24}{'-':>12}{'':>8}  {gen.get('error') or 'skipped: ' + gen['skipped']}")
        gen = {}
    for name in ("hf_generate", "deliberate_generate", "deliberate_hf_cascade", "deliberate_decoder"):
        r = gen.get(name)
        if r is None:
            continue
        if not r.get("ran"):
            lines.append(f"{name:<24}{'-':>12}{'':>8}  {r.get('error') or 'skipped: ' + r['skipped']}")
            continue
        note = f"{r['new_tokens']} tokens in {r['seconds']:.2f} s"
        if "agreement_with_hf_generate" in r:
            a = r["agreement_with_hf_generate"]
            note += (f"; same as hf_generate: {a['identical']:.0%} of rows, matching prefix "
                     f"{a['mean_matching_prefix']:.1f}/{a['mean_length']:.1f} tokens")
        lines.append(f"{name:<24}{fmt(r['tokens_per_s']):>12}{'':>8}  {note}")
    if gen:
        lines.append(f"  deliberate_generate took: {gen['deliberate_path']}; {gen['prompts']} prompts of "
                     f"{gen['shared_prefix']} shared + {gen['own_tokens'][0]}-{gen['own_tokens'][1]} own tokens, "
                     f"{gen['max_new_tokens']} new")
    for name, a in gen.get("agreement_float32", {}).items():
        if isinstance(a, dict):
            lines.append(f"  float32, {name}: " + (f"{a['identical']:.0%} of rows identical to hf_generate, "
                                                   f"matching prefix {a['mean_matching_prefix']:.1f}/"
                                                   f"{a['mean_length']:.1f}" if "identical" in a else a["error"]))
    g = report["grpo"]
    if "skipped" in g or "error" in g:
        lines.append(f"{'grpo step':<24}{'-':>12}{'':>8}  {g.get('error') or 'skipped: ' + g['skipped']}")
    else:
        s, share = g["seconds"], g["share"]
        lines.append(f"{'grpo step':<24}{fmt(g['generation_tokens_per_s']):>12}{'':>8}  {g['prompts']}x"
                     f"{g['generations']} completions, {s['total']:.2f} s/step: " + ", ".join(
                         f"{k} {s[k]:.2f} s ({share[k]:.0%})" for k in share))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama and few steps (a CPU smoke run)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                        help="auto: bfloat16 on a GPU, float32 on a CPU")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU")
    parser.add_argument("--budget-s", type=float, default=420.0, help="sections still to start are skipped after")
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="high enough that pure bfloat16 weights still move")
    parser.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the JSON report here (it is always printed)")
    args = parser.parse_args()

    start = time.perf_counter()
    budget = Budget(args.budget_s)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "bfloat16": torch.bfloat16,
             "float32": torch.float32}[args.dtype]
    stand_in = import_generation()
    sizes = TINY if args.tiny else FULL
    model = build_model(sizes, device, dtype, args.seed)
    tokenizer = word_tokenizer(sizes.vocab)
    n_params = sum(p.numel() for p in model.parameters())
    peak = peak_flops(device, args.peak_tflops)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)")
    report: dict = {
        "device": name, "torch": torch.__version__, "transformers": version("transformers"),
        "peft": version("peft"), "accelerate": version("accelerate"), "cuda": torch.version.cuda,
        "dtype": str(dtype).removeprefix("torch."), "rich_stand_in": stand_in, "peak_flops": peak,
        "budget_s": args.budget_s, "tiny": args.tiny,
        "model": {"parameters": n_params, **{k: v for k, v in asdict(sizes).items()
                                             if k in ("hidden", "intermediate", "layers", "heads", "kv_heads",
                                                      "vocab")},
                  "attn_implementation": model.config._attn_implementation},
        "sizes": asdict(sizes),
    }
    sections = [("sft", lambda: run_sft(model, sizes, device, n_params, peak, budget, args.lr)),
                ("dpo", lambda: run_dpo(model, sizes, device, n_params, peak, budget, args.lr, args.beta)),
                ("generation", lambda: run_generation(model, tokenizer, sizes, device, budget)),
                ("grpo", lambda: run_grpo(model, tokenizer, sizes, device, budget, args.lr))]
    for section, run in sections:
        if budget.left() < 0:
            report[section] = {"skipped": "budget"}
            continue
        t = time.perf_counter()
        try:
            report[section] = run()
        except Exception as e:  # one run on a lent machine: a failing section must not lose the others
            traceback.print_exc()
            report[section] = {"error": f"{type(e).__name__}: {e}"[:400]}
        report[section]["section_s"] = time.perf_counter() - t
        if device.type == "cuda":
            report[section]["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    report["elapsed_s"] = time.perf_counter() - start
    print(summary(report), flush=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
