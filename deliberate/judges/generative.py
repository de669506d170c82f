"""Generative judges: an OpenAI-compatible server (`openai`) or a local causal LM (`hf`).

Both build the same prompts (`prompts.py`) and parse the same strict JSON; they differ only in how a batch of
chat prompts becomes a batch of texts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deliberate.config import ModelConfig, SamplingConfig
from deliberate.errors import DeliberateError
from deliberate.judges.base import (
    Backend,
    ClassifyRequest,
    Done,
    JudgeFailure,
    PairwiseRequest,
    PointwiseRequest,
    RubricRequest,
    Usage,
)
from deliberate.judges.prompts import (
    PAIRWISE_SCHEMA,
    POINTWISE_SCHEMA,
    ParseError,
    classify_messages,
    classify_schema,
    pairwise_messages,
    parse_classify,
    parse_pairwise,
    parse_pointwise,
    pointwise_messages,
)
from deliberate.judges.rubrics import RUBRICS
from deliberate.services.chat_api import ChatAPI, Messages
from deliberate.services.constrained import JsonSchemaConstraint, RegexConstraint
from deliberate.services.generation import generate
from deliberate.services.models import load_model
from deliberate.services.runs import model_identity

if TYPE_CHECKING:
    from deliberate.config import JudgeConfig


class GenerativeBackend(Backend):
    generative = True

    async def complete(self, batch: list[Messages], schema: dict[str, Any] | None,
                       on_text: Callable[[int, str | JudgeFailure], None], *, regex: str | None = None,
                       max_tokens: int | None = None) -> list[str | JudgeFailure]:
        """One text per conversation; `on_text(i, text)` as soon as conversation i has its text. The reply is a
        JSON value matching `schema`, or text matching `regex` (a local judge is constrained to it; an API judge
        is asked in the prompt); `max_tokens` overrides the judge's own budget."""
        raise NotImplementedError

    async def _judge(self, batch: list[Messages], schema: dict[str, Any] | None, parse, done: Done, **options):
        def judgment(text: str | JudgeFailure) -> dict[str, Any] | JudgeFailure:
            if isinstance(text, JudgeFailure):
                return text
            try:
                return parse(text)
            except ParseError as e:
                return JudgeFailure(f"unparseable judge output: {e}")

        texts = await self.complete(batch, schema, lambda i, text: done(i, judgment(text)), **options)
        return [judgment(t) for t in texts]

    async def rubric(self, requests: list[RubricRequest], done: Done):
        if not requests:
            return []
        rubric = RUBRICS[requests[0].rubric]
        batch = [rubric.messages(r.prompt, r.response) for r in requests]
        return await self._judge(batch, None, rubric.parse, done, regex=rubric.regex, max_tokens=rubric.max_tokens)

    async def pointwise(self, requests: list[PointwiseRequest], done: Done):
        batch = [pointwise_messages(r.prompt, r.response, r.spec_text or "") for r in requests]
        return await self._judge(batch, POINTWISE_SCHEMA, parse_pointwise, done)

    async def classify(self, requests: list[ClassifyRequest], done: Done):
        ids = requests[0].categories if requests else ()
        batch = [classify_messages(r.prompt, r.spec_text, r.categories) for r in requests]
        return await self._judge(batch, classify_schema(ids), lambda text: parse_classify(text, ids), done)

    async def pairwise(self, requests: list[PairwiseRequest], done: Done):
        batch = [pairwise_messages(r.prompt, r.first, r.second, r.criterion, r.spec_text) for r in requests]
        return await self._judge(batch, PAIRWISE_SCHEMA, parse_pairwise, done)


RATIONALE_CHARS = 160  # the longest rationale a local judge may write (one or two sentences)


def bounded(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its rationale bounded to RATIONALE_CHARS (for local decoding; the API gets the schema as
    it is, since strict structured outputs do not all take maxLength)."""
    properties = schema.get("properties", {})
    if "rationale" not in properties:
        return schema
    return {**schema, "properties": {**properties, "rationale": {**properties["rationale"],
                                                                  "maxLength": RATIONALE_CHARS}}}


class OpenAIBackend(GenerativeBackend):
    """Any OpenAI-compatible chat endpoint, through the official client (`deliberate.services.chat_api`): bounded
    concurrency, retries with backoff honouring Retry-After, the key read from the environment only."""

    kind = "openai"

    def __init__(self, usage: Usage, cfg: JudgeConfig):
        super().__init__(usage)
        self.cfg = cfg
        self.api = ChatAPI.from_config(cfg, model=cfg.model, counters=usage, role="judge")
        self.deterministic = cfg.temperature == 0

    def identity(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.cfg.model, "base_url": self.cfg.base_url,
                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens,
                "structured_output": self.cfg.structured_output}

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any] | None:
        if self.cfg.structured_output == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "judgment", "schema": schema, "strict": True}}
        if self.cfg.structured_output == "json_object":
            return {"type": "json_object"}
        return None

    async def complete(self, batch: list[Messages], schema: dict[str, Any] | None, on_text, *, regex: str | None = None,
                       max_tokens: int | None = None) -> list[str | JudgeFailure]:
        params: dict[str, Any] = {"temperature": self.cfg.temperature, "max_tokens": max_tokens or self.cfg.max_tokens}
        if schema is not None and (fmt := self._response_format(schema)) is not None:
            params["response_format"] = fmt
        return await self.api.complete(batch, params, on_text)


class HFBackend(GenerativeBackend):
    """A local causal LM as a generative judge, batched through the shared generation code (greedy), its verdict
    decoded under the request's JSON schema (services/constrained.py), so every answer parses; the rationale is
    bounded (`RATIONALE_CHARS`) so that a small model cannot ramble to max_tokens."""

    kind = "hf"
    deterministic = True  # greedy decoding

    def __init__(self, usage: Usage, cfg: JudgeConfig):
        super().__init__(usage)
        if not cfg.model:
            raise DeliberateError("judge.model: the hf backend needs a model (folder, Hub id or smollm2)")
        self.cfg = cfg
        self.loaded = load_model(ModelConfig(name=cfg.model, dtype=cfg.dtype))

    def identity(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": model_identity(self.loaded.path), "max_tokens": self.cfg.max_tokens,
                "constrained": RATIONALE_CHARS, "dtype": self.cfg.dtype}

    async def complete(self, batch: list[Messages], schema: dict[str, Any] | None, on_text, *, regex: str | None = None,
                       max_tokens: int | None = None) -> list[str | JudgeFailure]:
        settings = SamplingConfig(max_new_tokens=max_tokens or self.cfg.max_tokens,
                                  batch_size=self.cfg.max_concurrency)
        vocabulary = self.loaded.model.get_output_embeddings().weight.shape[0]
        constraint = (RegexConstraint(self.loaded.tokenizer, regex, vocabulary) if regex is not None else
                      JsonSchemaConstraint(self.loaded.tokenizer, bounded(schema or {}), vocabulary))

        def text(g) -> str | JudgeFailure:
            return g.text if g.finish_reason == "stop" else JudgeFailure("judge output cut at max_tokens")

        def on_batch(indices: list[int], gens) -> None:
            for i, g in zip(indices, gens, strict=True):
                on_text(i, text(g))

        def run() -> list[str | JudgeFailure]:
            gens = generate(self.loaded.model, self.loaded.tokenizer, batch, settings, show_progress=False,
                            on_batch=on_batch, constraint=constraint)
            self.usage.tokens_out += sum(g.num_tokens for g in gens)
            return [text(g) for g in gens]

        return await asyncio.to_thread(run)
