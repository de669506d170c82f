"""Generative judges: an OpenAI-compatible server (`openai`) or a local causal LM (`hf`).

Both build the same prompts (`prompts.py`) and parse the same strict JSON; they differ only in how a batch of
chat prompts becomes a batch of texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from typing import TYPE_CHECKING, Any

from deliberate.errors import DeliberateError
from deliberate.judges.base import Backend, JudgeFailure, PairwiseRequest, PointwiseRequest, Tick, Usage
from deliberate.judges.prompts import (
    PAIRWISE_SCHEMA,
    POINTWISE_SCHEMA,
    ParseError,
    pairwise_messages,
    parse_pairwise,
    parse_pointwise,
    pointwise_messages,
)

if TYPE_CHECKING:
    from deliberate.recipe import JudgeConfig

Messages = list[dict[str, str]]
_CONNECTIONS_PER_CLIENT = 8


class GenerativeBackend(Backend):
    def _ssl_context(self):
        """One TLS context for all clients (building one reads the CA bundle: 25 ms each)."""
        if self._ssl is None:
            import httpx2  # the openai client's HTTP library

            self._ssl = httpx2.create_ssl_context()
        return self._ssl

    def _read(self, data: Any) -> str | JudgeFailure:
        """The assistant text of a chat completion body, counting its tokens."""
        if not isinstance(data, dict):
            return JudgeFailure("the server returned a body that is not a chat completion")
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.usage.tokens_in += int(usage.get("prompt_tokens") or 0)
            self.usage.tokens_out += int(usage.get("completion_tokens") or 0)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return JudgeFailure("the server returned no choices")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            return JudgeFailure("the server returned a choice with no message")
        if message.get("refusal"):
            return JudgeFailure(f"the judge refused: {str(message['refusal'])[:100]}")
        content = message.get("content")
        if not isinstance(content, str) or not content:
            return JudgeFailure("the judge returned an empty message")
        return content

    async def complete(self, batch: list[Messages], schema: dict[str, Any], tick: Tick) -> list[str | JudgeFailure]:
        raise NotImplementedError

    async def _judge(self, batch: list[Messages], schema: dict[str, Any], parse, tick: Tick):
        texts = await self.complete(batch, schema, tick)
        out: list[dict[str, Any] | JudgeFailure] = []
        for text in texts:
            if isinstance(text, JudgeFailure):
                out.append(text)
                continue
            try:
                out.append(parse(text))
            except ParseError as e:
                out.append(JudgeFailure(f"unparseable judge output: {e}"))
        return out

    async def pointwise(self, requests: list[PointwiseRequest], tick: Tick):
        batch = [pointwise_messages(r.prompt, r.response, r.spec_text or "") for r in requests]
        return await self._judge(batch, POINTWISE_SCHEMA, parse_pointwise, tick)

    async def pairwise(self, requests: list[PairwiseRequest], tick: Tick):
        batch = [pairwise_messages(r.prompt, r.first, r.second, r.criterion, r.spec_text) for r in requests]
        return await self._judge(batch, PAIRWISE_SCHEMA, parse_pairwise, tick)


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait (Retry-After or retry-after-ms), if it said."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class OpenAIBackend(GenerativeBackend):
    """Any OpenAI-compatible chat endpoint, through the official async client.

    At most `max_concurrency` requests are in flight. 429, 5xx, timeouts and connection errors are retried up
    to `max_retries` times with exponential backoff and full jitter, waiting at least what Retry-After asks.
    Other errors (400, 401, 404, ...) fail at once. The API key is read from the environment variable that the
    recipe names, and is never stored or logged.
    """

    kind = "openai"

    def __init__(self, usage: Usage, cfg: JudgeConfig):
        super().__init__(usage)
        import openai

        if not cfg.model:
            raise DeliberateError("judge.model: the openai backend needs a model name (e.g. gpt-4o)")
        key = os.environ.get(cfg.api_key_env)
        if not key:
            if cfg.base_url is None:
                raise DeliberateError(f"judge: the environment variable {cfg.api_key_env} (judge.api_key_env) is not set")
            key = "none"  # local servers (vLLM, ...) usually need no key
        self.cfg = cfg
        self._key = key  # kept in memory only
        self._openai = openai
        self._ssl = None

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

    async def _one(self, slots: asyncio.Queue, messages: Messages, schema: dict[str, Any]) -> str | JudgeFailure:
        openai = self._openai
        kwargs: dict[str, Any] = {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                                  "max_tokens": self.cfg.max_tokens}
        if (fmt := self._response_format(schema)) is not None:
            kwargs["response_format"] = fmt
        for attempt in range(self.cfg.max_retries + 1):
            wait: float | None = None
            client = await slots.get()  # a free slot: at most max_concurrency requests in flight
            try:
                try:
                    # The documented raw `post` skips the SDK's per-field TypedDict transform and pydantic response
                    # models (a third of the client's CPU per request); errors, auth and timeouts work as in `create`.
                    data = await client.post("/chat/completions", body=kwargs, cast_to=object)
                except (openai.RateLimitError, openai.InternalServerError) as e:
                    error, wait = f"HTTP {e.status_code}", _retry_after(e.response.headers)
                except openai.APIStatusError as e:
                    if e.status_code < 500 and e.status_code not in (408, 409, 429):
                        return JudgeFailure(f"HTTP {e.status_code}: {_brief(e)}")
                    error, wait = f"HTTP {e.status_code}", _retry_after(e.response.headers)
                except openai.APITimeoutError:
                    error = "timeout"
                except openai.APIConnectionError as e:
                    error = f"connection error: {_brief(e)}"
                else:
                    return self._read(data)
            finally:
                slots.put_nowait(client)
            if attempt == self.cfg.max_retries:
                return JudgeFailure(f"{error} after {attempt + 1} attempts")
            self.usage.retries += 1
            backoff = random.uniform(0, min(self.cfg.backoff_max, self.cfg.backoff_base * 2**attempt))
            await asyncio.sleep(max(backoff, wait or 0.0))  # waiting holds no slot
        raise AssertionError("unreachable")

    async def complete(self, batch: list[Messages], schema: dict[str, Any], tick: Tick) -> list[str | JudgeFailure]:
        # Several clients, each with a small connection pool: httpcore scans its whole pool on every request and
        # response, so one pool of 64 connections costs more CPU than the requests themselves. Each client
        # belongs to the event loop of this batch, so clients live per batch.
        n_clients = -(-self.cfg.max_concurrency // _CONNECTIONS_PER_CLIENT)
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(self._openai.AsyncOpenAI(
                api_key=self._key, base_url=self.cfg.base_url, timeout=self.cfg.timeout, max_retries=0,
                http_client=self._openai.DefaultAsyncHttpxClient(verify=self._ssl_context())))
                for _ in range(n_clients)]
            slots: asyncio.Queue = asyncio.Queue()
            for i in range(self.cfg.max_concurrency):
                slots.put_nowait(clients[i % n_clients])

            async def run(messages: Messages) -> str | JudgeFailure:
                result = await self._one(slots, messages, schema)
                tick(1)
                return result

            return list(await asyncio.gather(*(run(m) for m in batch)))


def _brief(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


class HFBackend(GenerativeBackend):
    """A local causal LM as a generative judge, batched through the shared generation code (greedy)."""

    kind = "hf"

    def __init__(self, usage: Usage, cfg: JudgeConfig):
        super().__init__(usage)
        from deliberate.models import load_model
        from deliberate.recipe import ModelConfig

        if not cfg.model:
            raise DeliberateError("judge.model: the hf backend needs a model (folder, Hub id or smollm2)")
        self.cfg = cfg
        self.loaded = load_model(ModelConfig(name=cfg.model))

    def identity(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.loaded.path, "max_tokens": self.cfg.max_tokens}

    async def complete(self, batch: list[Messages], schema: dict[str, Any], tick: Tick) -> list[str | JudgeFailure]:
        from deliberate.generation import generate
        from deliberate.recipe import GenerationConfig

        settings = GenerationConfig(max_new_tokens=self.cfg.max_tokens, batch_size=self.cfg.max_concurrency)

        def run() -> list[str | JudgeFailure]:
            gens = generate(self.loaded.model, self.loaded.tokenizer, batch, settings, show_progress=False,
                            on_batch=lambda idx, _: tick(len(idx)))
            self.usage.tokens_out += sum(g.num_tokens for g in gens)
            return [g.text if g.finish_reason == "stop" else JudgeFailure("judge output cut at max_tokens")
                    for g in gens]

        return await asyncio.to_thread(run)
