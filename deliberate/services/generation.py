"""Batched generation shared by every stage.

`generate(model, tokenizer, conversations, settings)` renders each conversation with the model's own chat
template, sorts prompts by system prompt and length, stops each sequence at any end-of-sequence token, and
returns only the new tokens, in the caller's order. A conversation whose last message is from the assistant is
continued (a pre-filled answer, e.g. an opening reasoning tag).

On a CPU, models of the llama family (Llama, Mistral, Qwen2, Qwen3, SmolLM2; with or without LoRA adapters) go
through deliberate's own decode loop (`decoding.py`): prefixes such as the policy spec computed once and kept
across calls, attention over them without copies, caches allocated once, finished rows dropped, sampling with
one seed per row. Other models, other devices and `DELIBERATE_DECODER=hf` use HF `generate` (`_generate_hf`),
where a batch's common prefix is still run once and read once per step (`prefix_attention.py`): batches there
never mix system prompts, so a batch shares its whole system prompt.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deliberate.errors import DeliberateError
from deliberate.services import decoding
from deliberate.services.decoding import shared_prefix_length
from deliberate.services.prefix_attention import (
    attention_over_shared_prefix,
    shared_prefix_cache,
    supports_shared_prefix,
)
from deliberate.services.progress import progress_bar

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from deliberate.config import SamplingConfig

Message = dict[str, str]
Conversation = Sequence[Message]


@dataclass
class Generation:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (end-of-sequence token) or "length" (max_new_tokens reached)


@dataclass
class GenerationStats:
    prompts: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def render_prompt(tokenizer: PreTrainedTokenizerBase, conversation: Conversation | str) -> str:
    """The text the model sees: the chat template applied, ending where the assistant's words begin."""
    if isinstance(conversation, str):
        conversation = [{"role": "user", "content": conversation}]
    continue_final = continues_turn(conversation)
    return tokenizer.apply_chat_template(
        list(conversation), tokenize=False, add_generation_prompt=not continue_final,
        continue_final_message=continue_final,
    )


def continues_turn(conversation: Conversation | str) -> bool:
    """Whether the conversation ends in a pre-filled assistant turn that generation continues."""
    return not isinstance(conversation, str) and conversation[-1]["role"] == "assistant"


def trim(text: str, continued: bool) -> str:
    """A decoded generation without surrounding whitespace, except that a continued turn keeps its leading space,
    so that "Category: x." + " The policy ..." reads as written."""
    return text.rstrip() if continued else text.strip()


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token that ends an answer: the generation config's (often several) and the tokenizer's."""
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for value in [configured, tokenizer.eos_token_id]:
        if value is None:
            continue
        ids.extend(value if isinstance(value, list) else [value])
    return list(dict.fromkeys(ids))


MAX_CHARS_PER_TOKEN = 64  # no tokenizer we know packs more characters into one token


def context_length(model: PreTrainedModel) -> int | None:
    """The most tokens (prompt and answer) the model reads, from its config."""
    value = getattr(model.config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def check_lengths(texts: Sequence[str], encoded: Sequence[Sequence[int]] | None, context: int | None,
                  max_new_tokens: int, conversations: Sequence[Conversation | str]) -> None:
    """Refuse, before generating anything, prompts that do not fit the model's context with room for the answer:
    by characters first (a bound that needs no tokenizing), then by tokens."""
    if context is None:
        return
    room = context - max_new_tokens
    if encoded is None:
        sizes, unit = [len(t) for t in texts], "characters"
        too_long = [i for i, n in enumerate(sizes) if n > max(room, 1) * MAX_CHARS_PER_TOKEN]
    else:
        sizes, unit = [len(e) for e in encoded], "tokens"
        too_long = [i for i, n in enumerate(sizes) if n > room]
    if too_long:
        worst = max(too_long, key=lambda i: sizes[i])
        last = conversations[worst]
        prompt = last if isinstance(last, str) else next(
            (m["content"] for m in reversed(last) if m["role"] == "user"), texts[worst])
        start = " ".join(prompt[:200].split())[:40]
        raise DeliberateError(
            f"{len(too_long)} of {len(texts)} prompts do not fit the model's context of {context} tokens with "
            f"{max_new_tokens} left for the answer (max_new_tokens): the longest has {sizes[worst]:,} {unit} "
            f"(prompt '{start}...'); refused, nothing generated. Shorten or leave out these prompts (data.where, "
            "data.limit) or lower max_new_tokens")


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation | str],
    settings: SamplingConfig,
    *,
    seed: int = 0,
    description: str = "generating",
    show_progress: bool = True,
    stats: GenerationStats | None = None,
    on_batch: Callable[[list[int], list[Generation]], None] | None = None,
    seeds: Sequence[int] | None = None,
    rendered: bool = False,
    add_special_tokens: bool = False,
    constraint: decoding.Constraint | None = None,
) -> list[Generation]:
    """Generate one answer per conversation, batched; see the module docstring.

    `on_batch(indices, generations)` is called after every batch (indices into `conversations`), so that a
    caller can save results as they come and resume after a crash. When sampling, `seeds` (one per
    conversation, e.g. `row_seed(seed, key)` of a resumable row) make each sample depend on its own seed only,
    so that a resumed run draws what an uninterrupted one would have; by default row i gets `row_seed(seed, i)`.
    With `rendered`, each conversation is already the model's whole prompt text (a guard's own template), tokenized
    as it stands (with the tokenizer's BOS when `add_special_tokens`). A `constraint` (decoding.Constraint) masks
    the tokens each answer may take next, on both paths.
    """
    import torch

    texts = list(conversations) if rendered else [render_prompt(tokenizer, c) for c in conversations]
    context = context_length(model)
    check_lengths(texts, None, context, settings.max_new_tokens, conversations)  # before tokenizing megabytes
    # Special tokens are already in the rendered template; adding a BOS again would change the prompt.
    encoded = [tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]
    check_lengths(texts, encoded, context, settings.max_new_tokens, conversations)
    # Conversations with the same system prompt sit together (so batches share a prefix), longest first.
    order = sorted(range(len(encoded)), key=lambda i: (system_text(conversations[i]), -len(encoded[i])))
    eos = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    device = next(model.parameters()).device
    results: list[Generation | None] = [None] * len(texts)
    stats = stats if stats is not None else GenerationStats()
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    fast = device.type == "cpu" and decoding.supported(model)
    with progress_bar(description, total=len(texts), unit="tok", enabled=show_progress) as bar:

        def finished(indices: list[int], answers: list[tuple[list[int], bool]]) -> None:
            batch_tokens = 0
            for i, (kept, stopped) in zip(indices, answers, strict=True):
                batch_tokens += len(kept)
                results[i] = Generation(
                    text=trim(tokenizer.decode(kept, skip_special_tokens=True), continues_turn(conversations[i])),
                    num_tokens=len(kept),
                    finish_reason="stop" if stopped else "length",
                )
            stats.new_tokens += batch_tokens
            bar.advance(len(indices), tokens=batch_tokens)
            if on_batch is not None:
                on_batch(indices, [results[i] for i in indices])

        if fast:  # one continuous batch over all prompts, in `order`
            row_seeds = list(seeds) if seeds is not None else [row_seed(seed, i) for i in range(len(texts))]
            with torch.inference_mode():
                decoding.decoder_for(model).generate(
                    [encoded[i] for i in order], [system_text(conversations[i]) for i in order], settings,
                    [row_seeds[i] for i in order], eos, settings.batch_size,
                    on_finished=lambda rows, outputs: finished([order[r] for r in rows],
                                                               [(o.tokens, o.stopped) for o in outputs]),
                    constraint=constraint)
        else:
            prefixes: dict[tuple[int, ...], Any] = {}
            for b, batch in enumerate(_batches(order, conversations, settings.batch_size)):
                finished(batch, _generate_hf(model, [encoded[i] for i in batch], pad_id, device, prefixes, settings,
                                             seed + b * settings.batch_size, eos, constraint))
    stats.prompts += len(texts)
    stats.seconds += time.perf_counter() - start
    model.train(was_training)
    return results  # type: ignore[return-value]


MIN_SHARED_PREFIX = 64  # tokens; below this, sharing saves less than it costs


def hidden_states(model: PreTrainedModel, rows: Sequence[Sequence[int]], pad_id: int):
    """The final hidden states (after the model's last norm) of each row of token ids, right-padded: (rows, T,
    hidden) and the mask of real tokens (rows, T). The CPU decode loop's forward where it applies."""
    import torch

    if next(model.parameters()).device.type == "cpu" and decoding.supported(model):
        return decoding.decoder_for(model).hidden_states(rows)
    device = next(model.parameters()).device
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(list(r), dtype=torch.long), 1
    body = decoding.causal_lm(model).get_decoder()
    out = body(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    return out.last_hidden_state, mask.bool().to(device)


def next_token_logits(model: PreTrainedModel, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int = 16):
    """(rows, vocabulary) float32 logits of the token after each row of token ids."""
    import torch

    head = decoding.causal_lm(model).get_output_embeddings()
    out = []
    with torch.inference_mode():
        for s in range(0, len(rows), batch_size):
            h, valid = hidden_states(model, rows[s : s + batch_size], pad_id)
            last = h[torch.arange(h.shape[0]), valid.sum(1) - 1]
            out.append(head(last).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 0))


def row_seed(seed: int, key: object) -> int:
    """A sampling seed for one row: the run's seed and the row's own key (its index, or a resumable row's key)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()) >> 1


class _ConstraintProcessor:
    """A decoding `Constraint` as an HF logits processor: each row's state advances by the token it drew last."""

    def __init__(self, constraint: decoding.Constraint, rows: int, width: int, eos: list[int]):
        self.constraint, self.width, self.eos = constraint, width, set(eos)
        self.states = [constraint.start() for _ in range(rows)]
        self.ended = [False] * rows

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] > self.width:
            for i, token in enumerate(input_ids[:, -1].tolist()):
                if self.ended[i] or token in self.eos:
                    self.ended[i] = True
                else:
                    self.constraint.advance(self.states[i], token)
        masked = scores.float()
        self.constraint.mask([None if e else s for s, e in zip(self.states, self.ended, strict=True)], masked)
        return masked.to(scores.dtype)


def _generate_hf(model, rows: list[list[int]], pad_id: int, device, prefixes: dict, settings: SamplingConfig,
                 seed: int, eos: list[int], constraint: decoding.Constraint | None = None) -> list[tuple[list[int], bool]]:
    """One batch through HF generate (models the fast decoder does not support): new tokens without the
    end-of-sequence token, and whether it ended with one."""
    import torch

    gen_kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.temperature > 0,
                                  "eos_token_id": eos, "pad_token_id": pad_id}
    if settings.temperature > 0:
        gen_kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or None)
    else:  # unset sampling knobs that a model's generation_config may carry, so greedy stays greedy and quiet
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    input_ids, attention, prefix_cache = _batch_inputs(model, rows, pad_id, device, prefixes)
    width = input_ids.shape[1]
    if settings.temperature > 0:
        torch.manual_seed(seed)
    shared = getattr(prefix_cache, "shared_prefix", None) is not None
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:  # on the answer's own tokens, not the prompt's (config/sampling.py)
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty, prompt_ignore_length=width))
    if constraint is not None:  # last, so that nothing re-allows a masked token
        processors.append(_ConstraintProcessor(constraint, len(rows), width, eos))
    if processors:
        gen_kwargs["logits_processor"] = processors
    with torch.inference_mode(), (attention_over_shared_prefix(model, prefix_cache) if shared
                                  else contextlib.nullcontext()):
        out = model.generate(input_ids=input_ids, attention_mask=attention, past_key_values=prefix_cache,
                             **gen_kwargs)
    answers = []
    for tokens in out[:, width:].tolist():
        stop = next((k for k, t in enumerate(tokens) if t in eos), None)
        answers.append((tokens[:stop] if stop is not None else tokens, stop is not None))
    return answers


def system_text(conversation: Conversation | str) -> str:
    if isinstance(conversation, str) or not conversation or conversation[0]["role"] != "system":
        return ""
    return conversation[0]["content"]


def _batches(order: list[int], conversations, size: int) -> list[list[int]]:
    """Consecutive runs of `order`, at most `size` long, that never mix two system prompts (so that a batch
    shares its whole system prompt, not just the part two prompts have in common)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) == size
                        or system_text(conversations[i]) != system_text(conversations[current[0]])):
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


def _batch_inputs(model, rows: list[list[int]], pad_id: int, device, prefixes: dict | None = None):
    """input_ids and attention mask for one batch, and the key/value cache of its shared prefix (or None).

    Without a shared prefix, rows are left-padded. With one, each row is [prefix][padding][own tokens]: the
    prefix is computed once and its cache repeated for every row, padding is masked, and position ids (which
    generate derives from the mask) continue from the prefix as if the padding were not there.
    """
    import torch

    shared = shared_prefix_length(rows) if len(rows) > 1 else 0
    shared = shared if shared >= MIN_SHARED_PREFIX else 0
    tails = [r[shared:] for r in rows]
    width = max(len(t) for t in tails)
    input_ids = torch.full((len(rows), shared + width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), shared + width), dtype=torch.long)
    if shared:
        input_ids[:, :shared] = torch.tensor(rows[0][:shared])
        attention[:, :shared] = 1
    for i, tail in enumerate(tails):  # left padding (after the prefix): every prompt ends where generation starts
        input_ids[i, shared + width - len(tail):] = torch.tensor(tail)
        attention[i, shared + width - len(tail):] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    if not shared:
        return input_ids, attention, None
    import copy

    from transformers import DynamicCache

    key = tuple(rows[0][:shared])
    if prefixes is None or key not in prefixes:
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            model(input_ids=input_ids[:1, :shared], past_key_values=cache, use_cache=True)
        if prefixes is not None:  # later batches with the same prefix (same system prompt) reuse it
            prefixes.clear()
            prefixes[key] = cache
    cache = prefixes[key] if prefixes is not None else cache
    if supports_shared_prefix(model):  # the prefix is kept once and read by every row (prefix_attention.py)
        return input_ids, attention, shared_prefix_cache(cache)
    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(len(rows))
    return input_ids, attention, cache
