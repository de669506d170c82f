"""Our own decode loop for llama-family models: the fast path behind `generation.generate` on a CPU.

HF `generate` spends most of a CPU decoding step outside arithmetic: a growing `DynamicCache` concatenated every
step, masks and position ids rebuilt, logits processors in Python, `torch.multinomial` (about 1 ms per row over
a 50k vocabulary), logits for every prompt position, and a batch that runs until its longest row ends. The loop
here does the work the model needs and little else:

- **Prefixes computed once and kept.** Rows are grouped by their system prompt; a group's common beginning (the
  policy spec and worked examples, or the whole prompt for k samples of it) is computed once, without the
  output head, and kept in a small LRU per model (`PREFIX_CACHE_BYTES`), so later calls (a stage's next
  chunk, the answer phase of budget forcing) reuse it. A new prefix extends the longest kept one it starts
  with: five categories' specs that open with the same principles share that part. Kept prefixes are dropped
  when the weights change.
- **Cascade attention.** A prefix is kept once, `(kv_heads, length, head_dim)`, and the rows of its group read
  it with one batched matmul per layer; the rows' own tokens live in a cache written in place. The parts are
  merged as one softmax through their running maxima and sums (float32), as flash decoding does. Prompts
  (many tokens per row) use PyTorch's fused CPU flash-attention kernel instead, twice as fast there.
- **Continuous batching.** Up to `batch_size` rows decode together; when a quarter of them have ended, they
  leave, the caches are compacted (columns no row reads are dropped) and the next prompts take their place,
  so batches stay full until the prompts run out instead of waiting for their longest answer.
- **Sampling as HF does it**: repetition penalty on the answer's own tokens, then temperature, top-k and top-p
  (the same filters in the same order; tested against HF's warpers), and a draw by inverting the CDF at a
  uniform number from the row's own `torch.Generator`. A row's sample depends on its seed only, not on which
  rows share its batch, so a resumed run draws what the uninterrupted one would have (up to float rounding:
  other batch mates can change the summation order, which in bfloat16 occasionally changes a token).

Supported: the families whose decoder layer is exactly input norm, q/k/v projections (optional per-head q/k
norms), rotary embedding, full attention, o projection, post-attention norm and a gated MLP (`FAMILIES`), with
no sliding window. Modules are called as they are, so LoRA adapters (peft) and quantized linears work. Other
models, and `DELIBERATE_DECODER=hf`, use HF generate (`generation.py`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    import torch

    from deliberate.config import SamplingConfig

FAMILIES = {"llama", "mistral", "qwen2", "qwen3"}
PREFIX_CACHE_BYTES = 1 << 30  # keys/values of kept prefixes, per model
PREFILL_CHUNK = 512  # prompt columns per forward pass while filling caches (bounds the attention scores' memory)
MIN_PREFIX = 16  # tokens; a shorter common beginning is not worth a separate cache (SmolLM2's default system
                # prompt, ~30 tokens, is shared)


def causal_lm(model):
    """The transformers causal LM inside `model` (a peft wrapper's base model)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supported(model) -> bool:
    """Whether the fast path can run `model` (see the module docstring)."""
    if os.environ.get("DELIBERATE_DECODER", "").lower() == "hf":
        return False
    lm = causal_lm(model)
    config = lm.config.get_text_config(decoder=True)
    body = getattr(lm, "model", None)
    layers = getattr(body, "layers", None)
    if config.model_type not in FAMILIES or layers is None or not len(layers):
        return False
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if any(t != "full_attention" for t in layer_types):
        return False
    if config.model_type == "mistral" and getattr(config, "sliding_window", None):
        return False
    attn, mlp = layers[0].self_attn, layers[0].mlp
    return (all(hasattr(attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling", "head_dim"))
            and all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj"))
            and all(hasattr(body, name) for name in ("embed_tokens", "norm", "rotary_emb"))
            and lm.get_output_embeddings() is not None)


_DECODERS: WeakKeyDictionary = WeakKeyDictionary()


def decoder_for(model) -> Decoder:
    """The model's decoder (one per model, so that its prefix cache lives as long as the model)."""
    lm = causal_lm(model)
    decoder = _DECODERS.get(lm)
    if decoder is None:
        decoder = _DECODERS[lm] = Decoder(lm)
    return decoder


class Constraint(Protocol):
    """Which tokens each row may draw next (e.g. a JSON schema's grammar); one state per row."""

    def start(self) -> Any:
        """The state of a new row."""

    def mask(self, states: list[Any], logits: torch.Tensor) -> None:
        """Set to -inf, in place, the logits (one row per state) of the tokens a state does not allow; a None
        state leaves its row as it is."""

    def advance(self, state: Any, token: int) -> None:
        """The row drew `token` (never an end token)."""


@dataclass
class Prefix:
    tokens: tuple[int, ...]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (kv_heads, length, head_dim)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.kv)


@dataclass
class Output:
    tokens: list[int]  # without the end-of-sequence token
    stopped: bool  # ended with an end-of-sequence token (else: max_new_tokens reached)


def _plain(q, keys, values, mask, scaling: float):
    """Attention by batched matmuls, unnormalised: weighted values, running max and sum of exponentials (float32)."""
    import torch

    scores = torch.matmul(q, keys.transpose(-1, -2)).float().mul_(scaling)
    if mask is not None:
        scores.add_(mask)
    top = scores.amax(dim=-1, keepdim=True)  # finite: every query sees at least one column
    weights = scores.sub_(top).exp_()
    return torch.matmul(weights.to(q.dtype), values).float(), top, weights.sum(dim=-1, keepdim=True)


def _flash(q, keys, values, mask, scaling: float):
    """Fused attention (PyTorch's CPU flash kernel): normalised output (float32) and log-sum-exp (..., n, 1)."""
    import torch

    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, keys, values, 0.0, False, attn_mask=None if mask is None else mask.to(q.dtype), scale=scaling)
    return out.float(), lse.unsqueeze(-1)


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own to feed the model."""
    n = min(len(r) for r in rows) - 1
    for row in rows[1:]:
        n = min(n, common_prefix(rows[0], row))
    return max(n, 0)


class Bank:
    """The prefixes of one batch and which rows read each: `spans` of (rows, Prefix), rows as an index tensor."""

    def __init__(self, prefixes: list[Prefix], group: list[int]) -> None:
        self.prefixes = prefixes
        self.place(group)

    def place(self, group: list[int]) -> None:
        """Rows' groups: an index into the prefixes, or -1 for none."""
        import torch

        device = self.prefixes[0].kv[0][0].device if self.prefixes else None
        self.spans = []
        for k, prefix in enumerate(self.prefixes):
            members = [r for r, g in enumerate(group) if g == k]
            if members:
                first, last = members[0], members[-1] + 1
                rows = slice(first, last) if members == list(range(first, last)) else torch.tensor(members,
                                                                                                   device=device)
                self.spans.append((rows, len(members), prefix))

    @property
    def longest(self) -> int:
        return max((len(p.tokens) for p in self.prefixes), default=0)


class Decoder:
    """The decode loop of one model. It holds the model weakly (it lives in `_DECODERS`, keyed by the model), so
    that a model and its kept prefixes are freed together."""

    def __init__(self, lm) -> None:
        import weakref

        self._lm = weakref.ref(lm)
        config = lm.config.get_text_config(decoder=True)
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.groups = self.heads // self.kv_heads
        attn = lm.model.layers[0].self_attn
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.qk_norm = hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
        self.prefixes: OrderedDict[tuple[int, ...], Prefix] = OrderedDict()
        self._weights: tuple | None = None

    @property
    def lm(self):
        return self._lm()

    @property
    def embed(self):
        return self.lm.model.embed_tokens

    @property
    def layers(self):
        return self.lm.model.layers

    @property
    def norm(self):
        return self.lm.model.norm

    @property
    def rotary(self):
        return self.lm.model.rotary_emb

    @property
    def head(self):
        return self.lm.get_output_embeddings()

    # -- the model, layer by layer ------------------------------------------------------------------------------

    def _forward(self, ids, positions, own, start: int, valid, bank: Bank | None) -> torch.Tensor:
        """Hidden states (rows, T, hidden) before the final norm, for tokens `ids` (rows, T) at own-cache columns
        [start, start + T), at `positions` (rows, T). `own` holds each layer's keys and values (rows, kv_heads,
        capacity, head_dim) and is written in place; `valid` (rows, capacity) marks the columns holding real
        tokens; `bank` holds the prefixes the rows continue."""
        import torch

        rows, width = ids.shape
        end = start + width
        x = self.embed(ids)
        cos, sin = self.rotary(x, positions)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (rows, T, 1, dim) against (rows, T, heads, dim)
        # Own columns a query sees: real tokens up to its own column; a padding query sees itself (never nothing).
        column = torch.arange(end, device=ids.device)
        query_column = torch.arange(start, end, device=ids.device)[:, None]
        seen = (valid[:, None, :end] & (column <= query_column)) | (column == query_column)  # (rows, T, end)
        mask = torch.zeros(seen.shape, dtype=torch.float32, device=ids.device).masked_fill_(~seen, float("-inf"))
        mask = mask.unsqueeze(1).repeat(1, 1, self.groups, 1)  # (rows, 1, groups*T, end), query index g*T + t
        kv_heads, groups, dim = self.kv_heads, self.groups, self.head_dim
        for index, (layer, (own_keys, own_values)) in enumerate(zip(self.layers, own, strict=True)):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(rows, width, self.heads, dim)
            k = attn.k_proj(h).view(rows, width, kv_heads, dim)
            v = attn.v_proj(h).view(rows, width, kv_heads, dim)
            if self.qk_norm:
                q, k = attn.q_norm(q), attn.k_norm(k)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            own_keys[:, :, start:end] = k.transpose(1, 2)
            own_values[:, :, start:end] = v.transpose(1, 2)
            # Queries grouped by the key/value head they read: (rows, kv_heads, groups*T, dim)
            q = q.view(rows, width, kv_heads, groups, dim).permute(0, 2, 3, 1, 4).reshape(rows, kv_heads, -1, dim)
            out = self._attend(q, own_keys[:, :, :end], own_values[:, :, :end], mask, bank, index)
            out = out.view(rows, kv_heads, groups, width, dim).permute(0, 3, 1, 2, 4).reshape(rows, width, -1)
            x = x + attn.o_proj(out)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x

    def _attend(self, q, keys, values, mask, bank: Bank | None, layer: int) -> torch.Tensor:
        """Attention of queries `q` (rows, kv_heads, groups*T, dim) over each row's own `keys`/`values` (rows,
        kv_heads, columns, dim), masked by the additive `mask`, and over its prefix in `bank`. The parts are
        merged as one softmax through their log-sum-exps (float32), as flash decoding does. One new token per
        row (T = 1) is attended by plain batched matmuls, which keep each prefix in cache; a prompt (T > 1) by
        the fused flash-attention kernel, twice as fast there and without the scores in memory."""
        import torch

        decoding = q.shape[2] == self.groups
        if decoding:
            out, top, total = _plain(q, keys, values, mask, self.scaling)
        else:
            out, top = _flash(q, keys, values, mask, self.scaling)
            total = torch.ones_like(top)
        if bank is None or not bank.spans:
            return out.div_(total).to(q.dtype)
        kv_heads, dim = self.kv_heads, self.head_dim
        for rows, n, prefix in bank.spans:
            prefix_keys, prefix_values = prefix.kv[layer]
            grouped = q[rows].transpose(0, 1).reshape(kv_heads, -1, dim)  # (kv_heads, n*groups*T, dim)
            if decoding:
                parts = _plain(grouped, prefix_keys, prefix_values, None, self.scaling)
            else:
                prefix_out, prefix_top = _flash(grouped[None], prefix_keys[None], prefix_values[None], None,
                                                self.scaling)
                parts = (prefix_out[0], prefix_top[0], torch.ones_like(prefix_top[0]))
            prefix_out, prefix_top, prefix_total = (x.view(kv_heads, n, -1, x.shape[-1]).transpose(0, 1)
                                                    for x in parts)
            own_top = top[rows]
            both = torch.maximum(own_top, prefix_top)
            own_scale, prefix_scale = (own_top - both).exp_(), (prefix_top - both).exp_()
            merged_out = out[rows].mul_(own_scale).add_(prefix_out.mul_(prefix_scale))
            merged_total = total[rows].mul_(own_scale).add_(prefix_total.mul_(prefix_scale))
            if isinstance(rows, slice):
                out[rows], total[rows] = merged_out, merged_total
            else:
                out.index_copy_(0, rows, merged_out)
                total.index_copy_(0, rows, merged_total)
        return out.div_(total).to(q.dtype)

    def _own_cache(self, rows: int, capacity: int, like) -> list[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        shape = (rows, self.kv_heads, capacity, self.head_dim)
        return [(torch.zeros(shape, dtype=like.dtype, device=like.device),
                 torch.zeros(shape, dtype=like.dtype, device=like.device)) for _ in self.layers]

    def _fill(self, ids, positions, own, start: int, valid, bank: Bank | None) -> torch.Tensor:
        """`_forward` over many columns in chunks; the last column's hidden state (after the norm)."""
        rows, width = ids.shape
        longest = bank.longest if bank is not None else 0
        chunk = max(16, min(PREFILL_CHUNK, (1 << 24) // max(1, rows * self.heads * (start + width + longest))))
        for s in range(0, width, chunk):
            h = self._forward(ids[:, s:s + chunk], positions[:, s:s + chunk], own, start + s, valid, bank)
        return self.norm(h[:, -1])

    def hidden_states(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer's hidden states (after the final norm, as `last_hidden_state`) of each row of token ids,
        right-padded: (rows, T, hidden), with the mask of real tokens (rows, T). No cache is kept."""
        import torch

        device = self.embed.weight.device
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        valid = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            valid[i, : len(r)] = True
        positions = torch.arange(width, device=device)[None].expand(len(rows), -1)
        own = self._own_cache(len(rows), width, self.embed.weight)
        return self.norm(self._forward(ids, positions, own, 0, valid, None)), valid

    # -- prefixes -----------------------------------------------------------------------------------------------

    def _check_weights(self) -> None:
        """Kept prefixes belong to the weights they were computed with: any in-place change (an optimizer step,
        a loaded state dict), a replaced tensor (a dtype cast) or a LoRA adapter switched on or off drops them."""
        try:
            from peft.tuners.tuners_utils import BaseTunerLayer
        except ImportError:  # pragma: no cover - peft is a dependency
            BaseTunerLayer = ()  # noqa: N806
        weights = (tuple((p.data_ptr(), p._version, p.dtype) for p in self.lm.parameters()),
                   tuple((m.disable_adapters, tuple(m.active_adapters), m.merged) for m in self.lm.modules()
                         if isinstance(m, BaseTunerLayer)))
        if weights != self._weights:
            self.prefixes.clear()
            self._weights = weights

    def prefix(self, tokens: Sequence[int]) -> Prefix:
        """The keys/values of `tokens`, kept or computed (extending the longest kept prefix it starts with)."""
        import torch

        key = tuple(tokens)
        if key in self.prefixes:
            self.prefixes.move_to_end(key)
            return self.prefixes[key]
        base, shared = None, 0
        for other in self.prefixes.values():
            n = common_prefix(other.tokens, key)
            if n > shared:
                base, shared = other, n
        if base is None or shared < MIN_PREFIX:
            base, shared = None, 0
        else:  # the shared part of the kept prefix, without copying it
            base = Prefix(key[:shared], [(k[:, :shared], v[:, :shared]) for k, v in base.kv])
        rest = len(key) - shared
        if base is not None and rest == 0:  # the beginning of a longer kept prefix (copied: the longer one may go)
            prefix = self.prefixes[key] = Prefix(key, [(k.clone(), v.clone()) for k, v in base.kv])
            self._evict()
            return prefix
        device = self.embed.weight.device
        ids = torch.tensor([key[shared:]], device=device)
        positions = torch.arange(shared, len(key), device=device)[None]
        own = self._own_cache(1, rest, self.embed.weight)
        valid = torch.ones((1, rest), dtype=torch.bool, device=device)
        self._fill(ids, positions, own, 0, valid, Bank([base], [0]) if base is not None else None)
        kv = [(k[0], v[0]) for k, v in own]
        if base is not None:
            kv = [(torch.cat([bk, k], dim=1), torch.cat([bv, v], dim=1)) for (bk, bv), (k, v) in zip(base.kv, kv,
                                                                                                   strict=True)]
        prefix = self.prefixes[key] = Prefix(key, kv)
        self._evict()
        return prefix

    def _evict(self) -> None:
        while len(self.prefixes) > 1 and sum(p.nbytes for p in self.prefixes.values()) > PREFIX_CACHE_BYTES:
            self.prefixes.popitem(last=False)

    # -- generation ---------------------------------------------------------------------------------------------

    def generate(self, rows: Sequence[Sequence[int]], group_keys: Sequence[object], settings: SamplingConfig,
                 seeds: Sequence[int], eos: Sequence[int], batch_size: int | None = None,
                 on_finished: Callable[[list[int], list[Output]], None] | None = None,
                 constraint: Constraint | None = None) -> list[Output]:
        """New tokens for each prompt of `rows` (token ids), at most `batch_size` rows decoding at once, admitted in
        the given order. Rows with equal `group_keys` (their system prompt) share their common beginning as one
        prefix. A row that ends leaves the batch and the next prompt takes its place (continuous batching), so
        the batch stays full until the prompts run out; `on_finished(indices, outputs)` hears of finished rows
        as they come. A `constraint` masks, row by row, the tokens each row may draw next (a JSON schema)."""
        self._check_weights()
        batch_size = batch_size or len(rows)
        members: dict[object, list[int]] = {}
        for r, key in enumerate(group_keys):
            members.setdefault(key, []).append(r)
        shared_of: dict[object, int] = {}
        for key, indices in members.items():
            shared = shared_prefix_length([rows[r] for r in indices])
            shared_of[key] = shared if shared >= MIN_PREFIX else 0
        device = self.embed.weight.device
        state = _Batch(self, settings, eos, device, constraint)
        pending = list(range(len(rows)))[::-1]  # popped from the end: admitted in order
        results: list[Output | None] = [None] * len(rows)

        def report(finished: list[tuple[int, Output]]) -> None:  # as they end, so a crash loses none of them
            for r, out in finished:
                results[r] = out
            if finished and on_finished is not None:
                on_finished([r for r, _ in finished], [o for _, o in finished])

        while True:
            room = pending and state.size <= batch_size * 3 // 4
            if state.dead_share() >= 0.25 or room:  # ended rows leave, waiting prompts join
                admitted = [pending.pop() for _ in range(min(len(pending), batch_size - state.alive()))]
                prompts = []
                for r in admitted:
                    skip = shared_of[group_keys[r]]
                    prefix = self.prefix(rows[r][:skip]) if skip else None
                    prompts.append((r, rows[r][skip:], skip, prefix, seeds[r]))
                state.rebuild(prompts)
                report(state.take_finished())
            if not state.alive():
                if pending:
                    continue
                break
            state.step()
            report(state.take_finished())
        return results  # type: ignore[return-value]


class _Batch:
    """The rows decoding together: their own-token caches (rows, kv_heads, capacity, head_dim) with one write
    column for all, what each row has generated, and the prefixes their groups read."""

    def __init__(self, decoder: Decoder, settings: SamplingConfig, eos: Sequence[int], device,
                 constraint: Constraint | None = None) -> None:
        import torch

        self.decoder, self.settings, self.device = decoder, settings, device
        self.constraint = constraint
        self.states: list = []  # each row's constraint state
        self.eos = torch.tensor(sorted(set(eos)))
        self.new = settings.max_new_tokens
        self.index: list[int] = []  # the caller's row of each batch row
        self.tokens: list[list[int]] = []  # generated so far (without an end token)
        self.done: list[bool] = []  # ended (waits for the next rebuild to leave)
        self.stopped: list[bool] = []
        self.groups: list[Prefix | None] = []
        self.finished: list[tuple[int, Output]] = []
        self.own: list = []
        self.valid = None
        self.positions = None  # (rows,) position of the token fed next
        self.feed = None  # (rows,) token fed next
        self.column = 0
        self.bank: Bank | None = None
        self.sampler = Sampler(settings, [], device, decoder.head.weight.shape[0])

    @property
    def size(self) -> int:
        return len(self.index)

    def alive(self) -> int:
        return self.done.count(False)

    def dead_share(self) -> float:
        return self.done.count(True) / self.size if self.size else 0.0

    def take_finished(self) -> list[tuple[int, Output]]:
        finished, self.finished = self.finished, []
        return finished

    def rebuild(self, prompts: list[tuple[int, Sequence[int], int, Prefix | None, int]]) -> None:
        """Drop ended rows, and admit `prompts` (row, own tokens, position of the first, prefix, seed): their
        tokens are run through the model and their first new token drawn."""
        import torch

        dec, device = self.decoder, self.device
        keep = [i for i, d in enumerate(self.done) if not d]
        width = max((len(t) for _, t, _, _, _ in prompts), default=0)
        if keep:  # columns no kept row reads are dropped; the write column moves right if a new prompt needs room
            first = int(self.valid[keep, :self.column].any(dim=0).nonzero()[0])
        else:
            first = self.column
        column = max(self.column - first, width)
        shift = column - self.column
        capacity = column + self.new
        rows = len(keep) + len(prompts)
        kept = torch.tensor(keep, dtype=torch.long, device=device)
        own = dec._own_cache(rows, capacity, dec.embed.weight)
        if keep:
            for fresh, old in zip(own, self.own, strict=True):
                for f, o in zip(fresh, old, strict=True):
                    f[:len(keep), :, first + shift:column] = o.index_select(0, kept)[:, :, first:self.column]
        valid = torch.zeros((rows, capacity), dtype=torch.bool, device=device)
        if keep:
            valid[:len(keep), first + shift:column] = self.valid.index_select(0, kept)[:, first:self.column]
        ids = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        positions = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        for i, (_, tail, start, _, _) in enumerate(prompts):  # left padding: every prompt ends at column - 1
            ids[i, width - len(tail):] = torch.tensor(tail)
            positions[i, width - len(tail):] = torch.arange(start, start + len(tail))
            valid[len(keep) + i, column - len(tail):column] = True
        self.index = [self.index[i] for i in keep] + [r for r, _, _, _, _ in prompts]
        self.tokens = [self.tokens[i] for i in keep] + [[] for _ in prompts]
        self.stopped = [False] * rows
        self.done = [False] * rows
        self.groups = [self.groups[i] for i in keep] + [p for _, _, _, p, _ in prompts]
        if self.constraint is not None:
            self.states = [self.states[i] for i in keep] + [self.constraint.start() for _ in prompts]
        self.sampler.rebuild(keep, [seed for *_, seed in prompts])
        feed = self.feed.index_select(0, kept) if keep else torch.zeros(0, dtype=torch.long, device=device)
        next_positions = self.positions.index_select(0, kept) if keep else feed.clone()
        self.own, self.valid, self.column = own, valid, column
        self.bank = self._bank()
        if prompts:
            new_rows = slice(len(keep), rows)
            bank = self._bank(new_rows)
            hidden = dec._fill(ids, positions, [(k[new_rows], v[new_rows]) for k, v in own], column - width,
                               valid[new_rows], bank)
            first_tokens = self._draw(hidden, new_rows)
            feed = torch.cat([feed, first_tokens])
            next_positions = torch.cat([next_positions, positions[:, -1] + 1])
        self.feed, self.positions = feed, next_positions

    def _bank(self, rows: slice | None = None) -> Bank | None:
        groups = self.groups[rows] if rows is not None else self.groups
        prefixes = list({id(p): p for p in groups if p is not None}.values())
        if not prefixes:
            return None
        number = {id(p): k for k, p in enumerate(prefixes)}
        return Bank(prefixes, [number[id(p)] if p is not None else -1 for p in groups])

    def _draw(self, hidden, rows: slice) -> torch.Tensor:
        """The next token of `rows` from their hidden states; ends rows at an end token or at max_new_tokens."""
        import torch

        logits = self.decoder.head(hidden).float()
        if self.constraint is not None:  # rows that ended draw unconstrained (their token is never used)
            self.constraint.mask([None if self.done[i] else self.states[i] for i in range(rows.start, rows.stop)],
                                 logits)
        token = self.sampler(logits, rows)
        ended = torch.isin(token.cpu(), self.eos).tolist()
        for offset, (t, end) in enumerate(zip(token.tolist(), ended, strict=True)):
            i = rows.start + offset
            if self.done[i]:
                continue
            if end:
                self.stopped[i] = True
            else:
                self.tokens[i].append(t)
                if self.constraint is not None:
                    self.constraint.advance(self.states[i], t)
            if end or len(self.tokens[i]) == self.new:
                self.done[i] = True
                self.finished.append((self.index[i], Output(self.tokens[i], self.stopped[i])))
        return token

    def step(self) -> None:
        """Feed every row its last token and draw the next."""
        dec = self.decoder
        self.valid[:, self.column] = True
        hidden = dec._forward(self.feed[:, None], self.positions[:, None], self.own, self.column, self.valid,
                              self.bank)
        self.column += 1
        self.positions = self.positions + 1
        self.feed = self._draw(dec.norm(hidden[:, -1]), slice(0, self.size))


class Sampler:
    """The next token per row, as HF generate picks it: repetition penalty on the answer's own tokens, then
    temperature, top-k and top-p, then a draw with the row's own generator (or the argmax when greedy)."""

    def __init__(self, settings: SamplingConfig, seeds: Sequence[int], device, vocabulary: int) -> None:
        import torch

        self.settings, self.device = settings, device
        self.greedy = settings.temperature <= 0
        self.penalty = settings.repetition_penalty != 1.0
        self.generators: list = []
        # (rows, vocabulary): the tokens each row generated, for the repetition penalty
        self.seen = torch.zeros((0, vocabulary), dtype=torch.bool, device=device) if self.penalty else None
        self.rebuild([], seeds)

    def rebuild(self, keep: list[int], seeds: Sequence[int]) -> None:
        """Keep rows `keep` (in order) and add rows drawing with `seeds`."""
        import torch

        if not self.greedy:
            self.generators = [self.generators[i] for i in keep] + [
                torch.Generator(device=self.device).manual_seed(int(s) % (1 << 63)) for s in seeds]
        if self.seen is not None:
            self.seen = torch.cat([self.seen[keep], self.seen.new_zeros((len(seeds), self.seen.shape[1]))])

    def __call__(self, logits, rows: slice | None = None) -> torch.Tensor:
        """Tokens for `logits` (one row of logits per batch row in `rows`, all rows by default)."""
        import torch

        rows = rows if rows is not None else slice(0, logits.shape[0])
        if self.penalty:  # HF's RepetitionPenaltyLogitsProcessor over the answer's own tokens
            p = self.settings.repetition_penalty
            logits = torch.where(self.seen[rows], torch.where(logits < 0, logits * p, logits / p), logits)
        token = self._pick(logits, rows)
        if self.penalty:
            self.seen[rows].scatter_(1, token[:, None], True)
        return token

    def _pick(self, logits, rows: slice) -> torch.Tensor:
        import torch

        s = self.settings
        if self.greedy:
            return logits.argmax(dim=-1)
        if s.temperature != 1.0:
            logits = logits / s.temperature
        if s.top_k:
            kth = torch.topk(logits, min(s.top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if s.top_p < 1.0:
            logits = logits.masked_fill(~_nucleus(logits, s.top_p), float("-inf"))
        return self._draw(torch.softmax(logits, dim=-1), self.generators[rows])

    @staticmethod
    def _draw(probs, generators) -> torch.Tensor:
        """One token per row by inverting its cumulative distribution at a uniform number from the row's own
        generator (torch.multinomial takes ~1 ms per row over a 50k vocabulary on a CPU; this takes ~0.05 ms).
        A token of probability zero is never drawn: the point lies below the total, where the CDF steps up."""
        import torch

        cdf = probs.cumsum(dim=-1)
        total = cdf[:, -1:]
        uniform = torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators])
        point = torch.minimum(uniform[:, None].to(cdf.device) * total, torch.nextafter(total, torch.zeros_like(total)))
        return torch.searchsorted(cdf, point, right=True).squeeze(1).clamp_(max=cdf.shape[-1] - 1)


NUCLEUS_CANDIDATES = 1024  # top-p looks among the most likely tokens first, and sorts the whole vocabulary only
                           # when they do not hold top_p of the probability


def _nucleus(logits, top_p: float):
    """The tokens top-p sampling keeps, as HF's TopPLogitsWarper: those whose more likely tokens hold less than
    top_p of the probability (at least one per row)."""
    import torch

    probs = torch.softmax(logits, dim=-1)
    k = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    top, index = probs.topk(k, dim=-1)
    cumulative = top.cumsum(dim=-1)
    if k < probs.shape[-1] and not bool((cumulative[:, -1] >= top_p).all()):
        top, index = probs.sort(dim=-1, descending=True)
        cumulative = top.cumsum(dim=-1)
    before = cumulative - top  # probability of the more likely tokens
    keep = before < top_p
    keep[:, 0] = True
    return torch.zeros_like(probs, dtype=torch.bool).scatter_(1, index, keep)
