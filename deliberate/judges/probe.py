"""The guard trained by `deliberate guard train`: linear probes on a transformer's middle-layer features.

A trained guard is a model folder: the transformer cut after the probed layer (config, weights, tokenizer, as
`save_pretrained` writes them, so it loads with transformers alone), `deliberate_guard.json` (what it reads,
its categories, how it was trained and what it scored on held-out data) and `guard_heads.safetensors` (the
probes: a feature standardisation and one linear head per question). No pickle is written or read.

Features of a (request, response) are the cut model's final hidden states over "User: <request>\\nAssistant:
<response>" (the request alone for the request's questions), each part cut to its first `max_prompt_tokens` /
`max_response_tokens` tokens, averaged over all tokens and over the last part's (the response's, or the
request's). Mean pooling at the middle layer did best in our measurements (refusal: 0.97 held-out accuracy
against 0.95 for the last token, layer 15 of SmolLM2's 30 against 0.93 at layer 4 and 0.86 at 21). Heads: P(request harmful) and the request's spec
category (softmax over the categories it was trained on, `safe` among them) from the request's features;
P(response refuses) from the pair's, and P(response harmful) from the pair's and the request's side by side,
times P(request harmful) (see `ProbeGuard.read_responses`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deliberate.config import ModelConfig
from deliberate.errors import DeliberateError
from deliberate.judges.guards import Reading
from deliberate.services.generation import hidden_states
from deliberate.services.models import load_model

if TYPE_CHECKING:
    import torch

GUARD_FILE = "deliberate_guard.json"
HEADS_FILE = "guard_heads.safetensors"
FORMAT_VERSION = 2  # 2: the harm head reads the request too
BINARY_HEADS = ("prompt_harmful", "refusal", "response_harmful")


def is_trained_guard(path: str | Path) -> bool:
    return (Path(path) / GUARD_FILE).is_file()


class Features:
    """Pooled hidden states of a (cut) causal LM, in length-sorted batches."""

    def __init__(self, model, tokenizer, max_prompt_tokens: int, max_response_tokens: int, batch_size: int):
        self.model, self.tokenizer = model, tokenizer
        self.max_prompt_tokens, self.max_response_tokens = max_prompt_tokens, max_response_tokens
        self.batch_size = batch_size
        encode = self._encode
        self._user, self._assistant = encode("User: "), encode("\nAssistant: ")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def tokens(self, prompt: str, response: str | None) -> tuple[list[int], int]:
        """The token ids the guard reads, and where its last part (the response, or the request) begins."""
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        ids = bos + self._user
        start = len(ids)
        ids += self._encode(prompt)[: self.max_prompt_tokens]
        if response is not None:
            ids += self._assistant
            start = len(ids)
            ids += self._encode(response)[: self.max_response_tokens]
        return ids, min(start, len(ids) - 1)

    def __call__(self, pairs: Sequence[tuple[str, str | None]],
                 on_batch: Callable[[int], None] = lambda n: None) -> torch.Tensor:
        """(len(pairs), 2 * hidden) float32 features; `on_batch(n)` after each batch of n."""
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        encoded = [self.tokens(p, r) for p, r in pairs]
        rows = [ids for ids, _ in encoded]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        hidden = self.model.config.get_text_config(decoder=True).hidden_size
        out = torch.zeros((len(rows), 2 * hidden), dtype=torch.float32)
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                h, valid = hidden_states(self.model, [rows[i] for i in idx], pad)
                h = h.float()
                column = torch.arange(h.shape[1], device=h.device)
                starts = torch.tensor([encoded[i][1] for i in idx], device=h.device)
                whole = valid.unsqueeze(-1).float()
                part = (valid & (column[None] >= starts[:, None])).unsqueeze(-1).float()
                out[idx] = torch.cat([(h * whole).sum(1) / whole.sum(1), (h * part).sum(1) / part.sum(1)], dim=1).cpu()
                on_batch(len(idx))
        return out


def apply_head(heads: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    """Probabilities of head `name` on raw features `x`: (n,) for a yes/no head, (n, classes) for categories.
    `x` may be several features side by side (the harm head reads the pair's and the request's): each part is
    standardised alike."""
    import torch

    dim = heads["feature_mean"].shape[0]
    z = torch.cat([(x[:, k : k + dim] - heads["feature_mean"]) / heads["feature_std"] for k in range(0, x.shape[1], dim)],
                  dim=1)
    logits = z @ heads[f"{name}.weight"].T + heads[f"{name}.bias"]
    return torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


class ProbeGuard:
    """A trained guard loaded from its folder, answering the same questions as a generative guard."""

    def __init__(self, path: str | Path, batch_size: int | None = None, device: str = "auto"):
        from safetensors.torch import load_file

        folder = Path(path)
        try:
            self.meta: dict[str, Any] = json.loads((folder / GUARD_FILE).read_text())
        except (OSError, ValueError) as e:
            raise DeliberateError(f"guard {folder}: cannot read {GUARD_FILE}: {e}") from None
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise DeliberateError(f"guard {folder}: format version {self.meta.get('format_version')} is not "
                                  f"{FORMAT_VERSION}; retrain it with this version of deliberate")
        try:
            self.heads = load_file(str(folder / HEADS_FILE))
        except (OSError, ValueError) as e:
            raise DeliberateError(f"guard {folder}: cannot read {HEADS_FILE}: {e}") from None
        missing = [f"{h}.weight" for h in (*BINARY_HEADS, "category") if f"{h}.weight" not in self.heads]
        if missing:
            raise DeliberateError(f"guard {folder}: {HEADS_FILE} lacks {', '.join(missing)}")
        self.categories: list[str] = list(self.meta["categories"])
        loaded = load_model(ModelConfig(name=str(folder), dtype=self.meta.get("dtype", "bfloat16"), device=device))
        self.path = loaded.path
        self.features = Features(loaded.model, loaded.tokenizer, self.meta["max_prompt_tokens"],
                                 self.meta["max_response_tokens"], batch_size or self.meta.get("batch_size", 32))

    def read_prompts(self, prompts: Sequence[str], on_batch=lambda n: None) -> list[Reading]:
        x = self.features([(p, None) for p in prompts], on_batch)
        harmful = apply_head(self.heads, "prompt_harmful", x).tolist()
        cats = apply_head(self.heads, "category", x).argmax(dim=1).tolist()
        return [Reading(prompt_harmful=h, categories=(self.categories[c],)) for h, c in zip(harmful, cats, strict=True)]

    def read_responses(self, prompts: Sequence[str], responses: Sequence[str], on_batch=lambda n: None) -> list[Reading]:
        """P(refusal) from the pair's features; P(harmful response) = the harm head's reading (of the pair's
        and the request's features side by side) times P(request harmful). Most labelled harmful answers
        (PKU-SafeRLHF's) answer harmful requests, so the head alone takes any full answer for a risky one (a bread
        recipe: 0.57); a harmful answer to a benign request is rare. The product costs recall on PKU's own test
        responses (F1 0.70 for the head alone, 0.53 for the product), where many requests read as benign."""
        import torch

        x = self.features(list(zip(prompts, responses, strict=True)), on_batch)
        unique = sorted(set(prompts))
        row = {p: k for k, p in enumerate(unique)}
        alone = self.features([(p, None) for p in unique])
        request = alone[[row[p] for p in prompts]]
        refusal = apply_head(self.heads, "refusal", x).tolist()
        harmful = apply_head(self.heads, "response_harmful", torch.cat([x, request], dim=1)).tolist()
        asked = apply_head(self.heads, "prompt_harmful", alone).tolist()
        category = apply_head(self.heads, "category", alone).argmax(dim=1).tolist()
        return [Reading(prompt_harmful=asked[row[p]], categories=(self.categories[category[row[p]]],), refusal=r,
                        response_harmful=h * asked[row[p]]) for p, r, h in zip(prompts, refusal, harmful, strict=True)]
