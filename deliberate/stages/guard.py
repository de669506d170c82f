"""`deliberate guard train`: a small safety guard trained on labelled data, served by the `guard` judge.

1. `guard.sources` are read and split by prompt (services/guard_data.py); `manifest.jsonl` lists every example's
   side, so anyone can check that no held-out prompt was trained on.
2. The feature model (`guard.model`, cut after `guard.layer`) reads every example once (services: probe.Features).
3. One logistic-regression head per question (request harmful, response refuses, response harmful) and a softmax
   head for the request's category, each with the L2 penalty that did best on a validation tenth of the training
   prompts, then refitted on all of them.
4. Held-out accuracy, F1 and AUROC per question go in `summary.json` and the guard's own metadata; the folder
   is written whole, then put in place of any earlier guard (never half-written).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from deliberate.config import ModelConfig, Recipe
from deliberate.errors import DeliberateError
from deliberate.judges.probe import BINARY_HEADS, FORMAT_VERSION, GUARD_FILE, HEADS_FILE, Features, apply_head
from deliberate.services.guard_data import Example, load_examples, manifest, prompt_hash
from deliberate.services.io import replace_dir, write_json, write_jsonl
from deliberate.services.models import load_model
from deliberate.services.progress import progress_bar
from deliberate.services.runs import Layout
from deliberate.services.stats import binary_metrics

CHUNK = 2048  # items whose features are written together


class FeatureCache:
    """The features read so far, one safetensors file per chunk of items under a folder named by everything that
    determines them (model, layer, dtype, lengths): a crash, or a rerun with other head settings or sources,
    reads again only what was never read."""

    def __init__(self, root: Path, settings: dict[str, Any]):
        self.folder = root / hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=8).hexdigest()

    @staticmethod
    def key(prompt: str, response: str | None) -> str:
        return hashlib.blake2b(json.dumps([prompt, response]).encode(), digest_size=12).hexdigest()

    def _known(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        known: dict[str, Any] = {}
        for path in sorted(self.folder.glob("chunk-*.safetensors")):
            try:
                known.update(load_file(str(path)))
            except Exception:  # a chunk cut short by a crash: its items are read again
                path.unlink(missing_ok=True)
        return known

    def features(self, items: list[tuple[str, str | None]], features: Features, show_progress: bool):
        """(len(items), dim) features, reading only the items no chunk holds; and how many were read now."""
        import torch
        from safetensors.torch import save_file

        keys = [self.key(p, r) for p, r in items]
        known = self._known()
        todo = sorted({k: i for i, k in enumerate(keys) if k not in known}.values(),
                      key=lambda i: len(features.tokens(*items[i])[0]))
        self.folder.mkdir(parents=True, exist_ok=True)
        with progress_bar("guard features", total=len(todo), enabled=show_progress) as bar:
            for start in range(0, len(todo), CHUNK):
                part = todo[start : start + CHUNK]
                x = features([items[i] for i in part], on_batch=bar.advance)
                chunk = {keys[i]: x[j].contiguous() for j, i in enumerate(part)}
                tmp = self.folder / f".chunk-{len(known)}.tmp"
                save_file(chunk, str(tmp))
                tmp.replace(self.folder / f"chunk-{len(known):07d}.safetensors")  # whole, or not at all
                known.update(chunk)
        return torch.stack([known[k] for k in keys]), len(todo)


def _fit(x, y, classes: int, l2: float, steps: int = 200):
    """Multinomial (or, with classes == 1, binary) logistic regression by L-BFGS on standardised features."""
    import torch

    torch.manual_seed(0)
    w = torch.zeros((classes, x.shape[1]), requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    # A yes/no head weighs its classes to balance (the sources' mix of harmful and harmless is no one's real
    # prior): P = 0.5 is where a mistake either way costs the same. The category head is scored by accuracy, so
    # it keeps the data's own frequencies (balancing them cost 11 points of held-out accuracy).
    pos_weight = None
    if classes == 1:
        positives = float(y.sum())
        pos_weight = torch.tensor((len(y) - positives) / max(positives, 1.0))

    def loss_fn():
        opt.zero_grad()
        logits = x @ w.T + b
        if classes == 1:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float(), pos_weight=pos_weight)
        else:
            loss = torch.nn.functional.cross_entropy(logits, y)
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(loss_fn)
    return w.detach(), b.detach()


def _loss(x, y, w, b, classes: int) -> float:
    import torch

    logits = x @ w.T + b
    if classes == 1:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float()))
    return float(torch.nn.functional.cross_entropy(logits, y))


def train_head(x, y, prompts: list[str], classes: int, penalties: list[float]) -> tuple[Any, Any, float]:
    """The head with the penalty whose validation loss (a tenth of the prompts, by hash) was lowest, refitted on
    everything; and that penalty."""
    import torch

    val = torch.tensor([int(prompt_hash(p), 16) % 10 == 0 for p in prompts])
    best = penalties[0]
    if len(penalties) > 1 and 0 < int(val.sum()) < len(prompts):
        losses = {}
        for l2 in penalties:
            w, b = _fit(x[~val], y[~val], classes, l2)
            losses[l2] = _loss(x[val], y[val], w, b, classes)
        best = min(losses, key=losses.get)
    w, b = _fit(x, y, classes, best)
    return w, b, best


def run_guard_train(recipe: Recipe, show_progress: bool = True) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    cfg = recipe.guard
    start = time.perf_counter()
    examples, data_summary = load_examples(cfg)
    train = [e for e in examples if e.split == "train"]
    for task in BINARY_HEADS:
        labels = {e.label for e in train if e.task == task}
        if labels != {0, 1}:
            raise DeliberateError(f"guard: the training data has no {'positive' if 1 not in labels else 'negative'} "
                                  f"{task} examples; add a source for it")
    loaded = load_model(ModelConfig(name=cfg.model, dtype=cfg.dtype))
    model = loaded.model
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    depth = len(body.layers)
    keep = max(1, round(cfg.layer * depth))
    body.layers = body.layers[:keep]  # the layers above the probed one are never run, nor saved
    for name in ("num_hidden_layers",):
        setattr(model.config.get_text_config(decoder=True), name, keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:keep]
    features = Features(model, loaded.tokenizer, cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.batch_size)

    items = [(e.prompt, None if e.task == "prompt_harmful" else e.response) for e in examples]
    # The harm head also reads each response's request alone (judges/probe.py: read_responses).
    requests = sorted({e.prompt for e in examples if e.task == "response_harmful"})
    items += [(p, None) for p in requests]
    out = Path(cfg.output) if cfg.output else Layout(recipe).guard
    cache = FeatureCache(out.with_name(out.name + "_features"),
                         {"model": loaded.path, "layer": keep, "dtype": cfg.dtype, "version": 1,
                          "max_prompt_tokens": cfg.max_prompt_tokens, "max_response_tokens": cfg.max_response_tokens})
    feature_start = time.perf_counter()
    x, read_now = cache.features(items, features, show_progress)
    feature_seconds = time.perf_counter() - feature_start

    request_row = {p: len(examples) + k for k, p in enumerate(requests)}
    is_train = torch.tensor([e.split == "train" for e in examples])
    mean = x[: len(examples)][is_train].mean(0)
    std = x[: len(examples)][is_train].std(0).clamp_min(1e-4)
    z = (x - mean) / std
    heads: dict[str, torch.Tensor] = {"feature_mean": mean, "feature_std": std}
    penalties: dict[str, float] = {}

    def rows(task: str, split: str) -> list[int]:
        return [i for i, e in enumerate(examples) if e.task == task and e.split == split]

    def inputs(task: str, idx: list[int]):
        if task != "response_harmful":
            return z[idx]
        return torch.cat([z[idx], z[[request_row[examples[i].prompt] for i in idx]]], dim=1)

    for task in BINARY_HEADS:
        idx = rows(task, "train")
        y = torch.tensor([examples[i].label for i in idx])
        w, b, penalties[task] = train_head(inputs(task, idx), y, [examples[i].prompt for i in idx], 1, cfg.l2)
        heads[f"{task}.weight"], heads[f"{task}.bias"] = w, b
    # The category head: harmful requests whose source maps a spec category, and harmless requests as `safe`.
    cat_idx = [i for i in rows("prompt_harmful", "train") if examples[i].label == 0 or examples[i].category]
    categories = sorted({examples[i].category or "safe" for i in cat_idx} | {"safe"})
    if len(categories) < 2:
        raise DeliberateError("guard: no source maps a request to a spec category (guard.sources[].categories)")
    y = torch.tensor([categories.index(examples[i].category if examples[i].label else "safe") for i in cat_idx])
    w, b, penalties["category"] = train_head(z[cat_idx], y, [examples[i].prompt for i in cat_idx], len(categories),
                                             cfg.l2)
    heads["category.weight"], heads["category.bias"] = w, b
    heldout = evaluate_heads(heads, x, examples, categories, request_row)
    seconds = time.perf_counter() - start

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    loaded.tokenizer.save_pretrained(tmp)
    save_file({k: v.contiguous() for k, v in heads.items()}, str(tmp / HEADS_FILE))
    summary = {"examples": data_summary["examples"], "dropped": data_summary["dropped"],
               "excluded_prompts": data_summary["excluded_prompts"], "heldout": heldout, "l2": penalties,
               "layer": keep, "of_layers": depth, "seconds": round(seconds, 1),
               "feature_seconds": round(feature_seconds, 1), "features_read_now": read_now,
               "items_per_second": round(read_now / feature_seconds, 1) if read_now and feature_seconds else None}
    meta = {"format_version": FORMAT_VERSION, "kind": "deliberate-probe-guard", "base_model": cfg.model,
            "layer": keep, "of_layers": depth, "dtype": cfg.dtype, "max_prompt_tokens": cfg.max_prompt_tokens,
            "max_response_tokens": cfg.max_response_tokens, "batch_size": cfg.batch_size, "categories": categories,
            "sources": [s.model_dump(exclude_defaults=True) for s in cfg.sources], "summary": summary}
    write_json(tmp / GUARD_FILE, meta)
    write_jsonl(tmp / "manifest.jsonl", manifest(examples))
    write_json(tmp / "summary.json", summary)
    replace_dir(tmp, out)
    return {**summary, "output": str(out)}


def evaluate_heads(heads, x, examples: list[Example], categories: list[str],
                   request_row: dict[str, int]) -> dict[str, Any]:
    """Held-out metrics of each head (the test side of every source)."""
    import torch

    report: dict[str, Any] = {}
    for task in BINARY_HEADS:
        idx = [i for i, e in enumerate(examples) if e.task == task and e.split == "test"]
        if not idx:
            continue
        features = x[idx] if task != "response_harmful" else \
            torch.cat([x[idx], x[[request_row[examples[i].prompt] for i in idx]]], dim=1)
        p = apply_head(heads, task, features).tolist()
        report[task] = binary_metrics([examples[i].label for i in idx], p)
    idx = [i for i, e in enumerate(examples) if e.task == "prompt_harmful" and e.split == "test"
           and (e.label == 0 or e.category)]
    if idx:
        probs = apply_head(heads, "category", x[idx])
        predicted = [categories[j] for j in probs.argmax(dim=1).tolist()]
        truth = [examples[i].category if examples[i].label else "safe" for i in idx]
        report["category"] = {"n": len(idx), "accuracy": round(sum(a == b for a, b in zip(predicted, truth,
                                                                                         strict=True)) / len(idx), 4)}
    return report
