"""Chat completions from any OpenAI-compatible server, shared by the `openai` judge and the `openai` teacher.

`ChatAPI.complete(batch)` sends every conversation of a batch with at most `max_concurrency` requests in flight.
429, 5xx, timeouts and connection errors are retried up to `max_retries` times with exponential backoff and
full jitter, waiting at least what Retry-After asks; other errors (400, 401, 404, ...) fail at once. Each item
comes back as its text or a `Failure`, never an exception. The API key is read from the environment and kept
in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from deliberate.config import ApiConfig
from deliberate.errors import DeliberateError, redact, register_secret

Messages = list[dict[str, str]]
_CONNECTIONS_PER_CLIENT = 8


@dataclass
class Failure:
    error: str

    def __post_init__(self) -> None:
        self.error = redact(self.error)  # a server may echo the key back in its error body


@dataclass
class ApiUsage:
    """What requests to an API took: requests asked, those that failed after their retries, retries, tokens in
    and out as the server counted them, and seconds (a served model's answers; the judge's `Usage` adds cache
    hits)."""

    requests: int = 0
    failures: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0

    def add(self, other: ApiUsage) -> None:
        for name in ("requests", "failures", "retries", "tokens_in", "tokens_out", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


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


class ChatAPI:
    def __init__(self, *, model: str | None, base_url: str | None, api_key_env: str, timeout: float,
                 max_retries: int, max_concurrency: int, counters: Any, backoff_base: float = 1.0,
                 backoff_max: float = 60.0, role: str = "judge"):
        import openai

        if not model:
            raise DeliberateError(f"{role}: the openai backend needs a model name (e.g. gpt-4o)")
        key = os.environ.get(api_key_env)
        if not key:
            if base_url is None:
                raise DeliberateError(f"{role}: the environment variable {api_key_env} (api_key_env) is not set")
            key = "none"  # local servers (vLLM, ...) usually need no key
        self.model, self.base_url, self.timeout = model, base_url, timeout
        self.max_retries, self.max_concurrency = max_retries, max_concurrency
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.counters = counters
        self._key = key  # kept in memory only
        if key != "none":
            register_secret(key)  # redacted from every error deliberate prints or stores
        self._openai = openai
        self._ssl = None

    @classmethod
    def from_config(cls, cfg: ApiConfig, *, model: str | None, counters: Any, role: str) -> ChatAPI:
        """The client a recipe's API section (the judge's, the teacher's) describes."""
        return cls(model=model, base_url=cfg.base_url, api_key_env=cfg.api_key_env, timeout=cfg.timeout,
                   max_retries=cfg.max_retries, max_concurrency=cfg.max_concurrency, counters=counters,
                   backoff_base=cfg.backoff_base, backoff_max=cfg.backoff_max, role=role)

    def _ssl_context(self):
        """One TLS context for all clients (building one reads the CA bundle: 25 ms each)."""
        if self._ssl is None:
            import httpx2  # the openai client's HTTP library

            self._ssl = httpx2.create_ssl_context()
        return self._ssl

    def _scrub(self, text: str) -> str:
        """`text` without our key (whatever the variable holding it is called) or anything shaped like one."""
        return redact(text.replace(self._key, "[redacted]") if len(self._key) >= 8 else text)

    def _brief(self, e: Exception) -> str:
        """The first line of an error, scrubbed whole, so that a cut cannot leave part of a key."""
        lines = self._scrub(str(e)).strip().splitlines()
        return lines[0][:200] if lines else type(e).__name__

    def _read(self, data: Any) -> str | Failure:
        """The assistant text of a chat completion body, counting its tokens."""
        if not isinstance(data, dict):
            return Failure("the server returned a body that is not a chat completion")
        usage = data.get("usage")
        if isinstance(usage, dict):  # counted when the server says it plainly; a paid answer is never lost over it
            for field, counter in (("prompt_tokens", "tokens_in"), ("completion_tokens", "tokens_out")):
                value = usage.get(field)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    setattr(self.counters, counter, getattr(self.counters, counter) + value)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return Failure("the server returned no choices")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            return Failure("the server returned a choice with no message")
        if message.get("refusal"):
            return Failure(f"the model refused: {self._scrub(str(message['refusal']))[:100]}")
        content = message.get("content")
        if not isinstance(content, str) or not content:
            return Failure("the server returned an empty message")
        return content

    async def _one(self, slots: asyncio.Queue, body: dict[str, Any]) -> str | Failure:
        openai = self._openai
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            client = await slots.get()  # a free slot: at most max_concurrency requests in flight
            try:
                # The documented raw `post` skips the SDK's per-field TypedDict transform and pydantic response
                # models (a third of the client's CPU per request); errors, auth and timeouts work as in `create`.
                data = await client.post("/chat/completions", body=body, cast_to=object)
            except (openai.RateLimitError, openai.InternalServerError) as e:
                error, wait = f"HTTP {e.status_code}", _retry_after(e.response.headers)
            except openai.APIStatusError as e:
                if e.status_code < 500 and e.status_code not in (408, 409, 429):
                    return Failure(f"HTTP {e.status_code}: {self._brief(e)}")
                error, wait = f"HTTP {e.status_code}", _retry_after(e.response.headers)
            except openai.APITimeoutError:
                error = "timeout"
            except openai.APIConnectionError as e:
                error = f"connection error: {self._brief(e)}"
            else:
                return self._read(data)
            finally:
                slots.put_nowait(client)
            if attempt == self.max_retries:
                return Failure(f"{error} after {attempt + 1} attempts")
            self.counters.retries += 1
            backoff = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
            await asyncio.sleep(max(backoff, wait or 0.0))  # waiting holds no slot
        raise AssertionError("unreachable")

    async def complete(self, batch: list[Messages], params: dict[str, Any],
                       on_item: Callable[[int, str | Failure], None] = lambda i, result: None) -> list[str | Failure]:
        """One completion per conversation; `params` (temperature, max_tokens, ...) go into every request.
        `on_item(i, result)` is called the moment conversation i has its result, so a caller can store it before
        the batch ends (a killed run then re-pays at most the requests in flight)."""
        # Several clients, each with a small connection pool: httpcore scans its whole pool on every request and
        # response, so one pool of 64 connections costs more CPU than the requests themselves. Each client
        # belongs to the event loop of this batch, so clients live per batch.
        n_clients = -(-self.max_concurrency // _CONNECTIONS_PER_CLIENT)
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(self._openai.AsyncOpenAI(
                api_key=self._key, base_url=self.base_url, timeout=self.timeout, max_retries=0,
                http_client=self._openai.DefaultAsyncHttpxClient(verify=self._ssl_context())))
                for _ in range(n_clients)]
            slots: asyncio.Queue = asyncio.Queue()
            for i in range(self.max_concurrency):
                slots.put_nowait(clients[i % n_clients])

            async def run(i: int, messages: Messages) -> str | Failure:
                result = await self._one(slots, {"model": self.model, "messages": messages, **params})
                on_item(i, result)
                return result

            return list(await asyncio.gather(*(run(i, m) for i, m in enumerate(batch))))
