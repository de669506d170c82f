"""Attention over a shared prefix without copying it per row (cascade attention).

Spec-conditioned generation sends many prompts that begin with the same long system prompt (the policy spec,
the reasoning instructions, worked examples): a thousand tokens shared, a few dozen of each prompt's own. The
plain way to share that prefix repeats its key/value cache once per row, and every decoding step then copies and
reads all those copies: on a CPU that is most of the step (profiled: 85% of a step of SmolLM2 at 1,200 tokens of
context and 16 rows).

Here the prefix's keys and values are kept once, `(kv_heads, prefix, head_dim)`. Each layer scores all rows'
queries against them in one batched matmul, scores the rows' own tokens as usual, and takes one softmax over
both, so the result is the same attention as with the prefix repeated (up to float summation order).

`shared_prefix_cache(prefix_cache)` turns the one-row cache of the prefix into a cache for any number of
rows; generation runs inside `attention_over_shared_prefix(model, cache)`, which routes the model's attention
through `_attention` for that cache and restores the model afterwards. Only models whose layers all use plain
full attention through transformers' attention interface qualify (`supports_shared_prefix`); others keep the
repeated cache.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

NAME = "deliberate_shared_prefix"
_ACTIVE: contextvars.ContextVar[list | None] = contextvars.ContextVar("deliberate_shared_prefix", default=None)
_registered = False


def _attention(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0, **kwargs):
    """Attention of `query` (batch, heads, q, dim) over the shared prefix and each row's own `key`/`value`
    (batch, kv_heads, own, dim). The mask covers prefix + own positions (an additive float mask)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefixes = _ACTIVE.get()
    if prefixes is None:  # computing the prefix itself, or a model call outside shared generation
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    prefix_keys, prefix_values = prefixes[module.layer_idx]  # (kv_heads, prefix, dim)
    batch, heads, q, dim = query.shape
    kv_heads, prefix = prefix_keys.shape[0], prefix_keys.shape[1]
    groups = heads // kv_heads

    def grouped(x: torch.Tensor, width: int) -> torch.Tensor:  # (batch, heads, q, width) -> (kv_heads, rows, width)
        return x.reshape(batch, kv_heads, groups, q, width).transpose(0, 1).reshape(kv_heads, -1, width)

    def ungrouped(x: torch.Tensor, width: int) -> torch.Tensor:
        return x.reshape(kv_heads, batch, groups, q, width).transpose(0, 1).reshape(batch, heads, q, width)

    on_prefix = ungrouped(torch.bmm(grouped(query, dim), prefix_keys.transpose(1, 2)), prefix)
    own_keys = key.repeat_interleave(groups, dim=1)
    own_values = value.repeat_interleave(groups, dim=1)
    scores = torch.cat([on_prefix, torch.matmul(query, own_keys.transpose(2, 3))], dim=-1) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : scores.shape[-1]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = ungrouped(torch.bmm(grouped(probs[..., :prefix], prefix), prefix_values), dim)
    out = out + torch.matmul(probs[..., prefix:], own_values)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    _registered = True


def supports_shared_prefix(model) -> bool:
    """Plain full attention in every layer, through the attention interface, with sdpa or eager selected."""
    config = model.config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return (
        getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
        and all(t == "full_attention" for t in layer_types)
        and not getattr(config, "sliding_window", None)
        and getattr(config, "attn_logit_softcapping", None) is None
        and model.config.model_type in _SUPPORTED_TYPES
    )


# Model families whose attention module is the standard one: q/k/v projections and rotary embedding, then
# `ALL_ATTENTION_FUNCTIONS[impl](module, q, k, v, mask, scaling=..., dropout=...)` with nothing extra.
_SUPPORTED_TYPES = {"llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "granite", "phi3", "smollm3"}


def shared_prefix_cache(prefix_cache):
    """A cache that continues after the one-row `prefix_cache` for any number of rows, without copying it."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    prefix = prefix_cache.get_seq_length()

    class _Layer(DynamicLayer):  # the rows' own tokens; positions count the prefix too
        def get_seq_length(self) -> int:
            return prefix + super().get_seq_length()

    cache = DynamicCache()
    cache.layers = [_Layer() for _ in prefix_cache.layers]
    cache.shared_prefix = [(layer.keys[0], layer.values[0]) for layer in prefix_cache.layers]
    return cache


@contextlib.contextmanager
def attention_over_shared_prefix(model, cache) -> Iterator[Any]:
    """Run the model's attention through `_attention` with `cache.shared_prefix` while inside."""
    _register()
    previous = model.config._attn_implementation
    token = _ACTIVE.set(cache.shared_prefix)
    model.set_attn_implementation(NAME)
    try:
        yield cache
    finally:
        model.set_attn_implementation(previous)
        _ACTIVE.reset(token)
