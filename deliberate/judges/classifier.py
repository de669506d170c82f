"""The `classifier` judge: a local sequence-classification model (a reward or cost model) giving a scalar.

The (prompt, response) pair is rendered with the classifier's chat template when it has one. Pointwise, the
score is the model's scalar output (the first logit), on the model's own scale (`raw`), unless its config
declares `score_scale: "0-10"`; pairwise, the better response has the higher score, or
the lower one for a cost model (`judge.higher_is_better: false`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deliberate.errors import DeliberateError
from deliberate.judges.base import (
    Backend,
    Done,
    JudgeFailure,
    PairwiseRequest,
    PointwiseRequest,
    Usage,
    report_all,
)
from deliberate.services.models import pick_device, resolve_model_path
from deliberate.services.runs import model_identity

if TYPE_CHECKING:
    from deliberate.config import JudgeConfig


RM_FILE = "deliberate_rm.json"  # what `deliberate rm` declares about a model it trained: kind, direction, held-out


class ClassifierBackend(Backend):
    kind = "classifier"
    deterministic = True

    def __init__(self, usage: Usage, cfg: JudgeConfig):
        super().__init__(usage)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not cfg.model:
            raise DeliberateError("judge.model: the classifier backend needs a reward or cost model")
        self.cfg = cfg
        self.path = resolve_model_path(cfg.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModelForSequenceClassification.from_pretrained(self.path).to(pick_device("auto")).eval()
        except (OSError, ValueError) as e:
            raise DeliberateError(f"judge.model '{cfg.model}': could not be loaded as a classifier: {str(e).splitlines()[0]}") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.scale = "0-10" if str(getattr(self.model.config, "score_scale", "")) == "0-10" else "raw"
        meta = Path(self.path) / RM_FILE
        self.model_kind = json.loads(meta.read_text(encoding="utf-8")).get("kind") if meta.is_file() else None
        if self.model_kind == "cost" and cfg.higher_is_better:
            raise DeliberateError(f"judge.model '{cfg.model}' is a cost model (higher = less safe): set "
                                  "higher_is_better: false, or it would prefer the less safe answer")

    @staticmethod
    def scale_of(cfg: JudgeConfig) -> str:
        """A reward or cost model's scalar has its own scale; a model trained to score 0-10 says so in its config
        (read without loading the weights)."""
        from transformers import AutoConfig

        if not cfg.model:
            raise DeliberateError("judge.model: the classifier backend needs a reward or cost model")
        try:
            config = AutoConfig.from_pretrained(resolve_model_path(cfg.model))
        except (OSError, ValueError) as e:
            raise DeliberateError(f"judge.model '{cfg.model}': no model config: {str(e).splitlines()[0]}") from None
        return "0-10" if str(getattr(config, "score_scale", "")) == "0-10" else "raw"

    def identity(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": model_identity(self.path)}  # a retrained model is a new judge

    def scores(self, pairs: list[tuple[str | list[dict[str, str]], str]], on_chunk=lambda start, values: None) -> list[float]:
        """The classifier's score of each (prompt, response), `max_concurrency` at a time; `on_chunk(start,
        values)` after each chunk."""
        return classifier_scores(self.model, self.tokenizer, pairs, self.cfg.max_concurrency, on_chunk)

    async def pointwise(self, requests: list[PointwiseRequest], done: Done) -> list[dict[str, Any] | JudgeFailure]:
        def judgment(value: float) -> dict[str, Any]:
            return {"verdict": None, "score": value, "rationale": None}

        def on_chunk(start: int, values: list[float]) -> None:
            for j, v in enumerate(values):
                done(start + j, judgment(v))

        values = await asyncio.to_thread(self.scores, [(r.prompt, r.response) for r in requests], on_chunk)
        return [judgment(v) for v in values]

    async def pairwise(self, requests: list[PairwiseRequest], done: Done) -> list[dict[str, Any] | JudgeFailure]:
        pairs = [(r.prompt, text) for r in requests for text in (r.first, r.second)]
        values = await asyncio.to_thread(self.scores, pairs)
        sign = 1 if self.cfg.higher_is_better else -1
        out: list[dict[str, Any] | JudgeFailure] = []
        for i in range(len(requests)):
            a, b = sign * values[2 * i], sign * values[2 * i + 1]
            out.append({"preferred": "tie" if a == b else ("A" if a > b else "B"), "rationale": None})
        return report_all(done, out)


def conversation_text(tokenizer, prompt: str | list[dict[str, str]], response: str) -> str:
    """(prompt, response) as the scorer reads it: the tokenizer's chat template, else a plain transcript. The
    prompt is a user message, or the conversation before the response (system and earlier turns, as training
    data in chat form has them)."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    conversation = [*turns, {"role": "assistant", "content": response}]
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(conversation, tokenize=False)
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in conversation)


def classifier_scores(model, tokenizer, pairs: list[tuple[str | list[dict[str, str]], str]], batch_size: int,
                      on_chunk=lambda start, values: None) -> list[float]:
    """A sequence classifier's first logit for each (prompt, response), `batch_size` at a time (the one scoring
    path: the classifier judge, and `deliberate rm`'s held-out report)."""
    import torch

    out: list[float] = []
    for start in range(0, len(pairs), batch_size):
        texts = [conversation_text(tokenizer, p, r) for p, r in pairs[start : start + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                        add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            logits = model(**enc).logits
        values = logits[:, 0].float().tolist()
        on_chunk(start, values)
        out.extend(values)
    return out
