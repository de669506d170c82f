"""Generation outside transformers: vLLM in this process, or a model served behind an OpenAI-compatible API.

One implementation of each, shared by the model under test (`answer`, `eval`, `pairs`, through
services/answering.py) and by `generate`'s teacher.

`VLLMEngine` renders each conversation with the model's chat template (a pre-filled assistant turn is continued),
keeps the template's own special tokens as they are, and generates the whole batch at once with prefix caching
(prompts that share a system prompt share its cache). `ask_api` sends each conversation as chat messages through
`chat_api.ChatAPI` (at most `max_concurrency` requests in flight, retries with backoff, the key read from the
environment only) and reports each answer, with its completion tokens and finish reason, or its failure after the
retries, the moment it arrives. A chat API cannot continue a pre-filled assistant turn, so callers send none.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from deliberate.config import ApiConfig, SamplingConfig
from deliberate.errors import DeliberateError, redact
from deliberate.services.chat_api import ApiUsage, ChatAPI, Failure, Messages
from deliberate.services.generation import Conversation, Generation, continues_turn, render_prompt, trim
from deliberate.services.progress import progress_bar
from deliberate.services.reasoning import CLOSE, OPEN


def public_url(url: str | None) -> str | None:
    """An endpoint as reports show it: without a user name or password, and with anything secret redacted."""
    if url is None:
        return None
    parts = urlsplit(url)
    return redact(urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])))


def _vllm(role: str):
    """vLLM's `LLM` and `SamplingParams`, or a one-line error naming what is missing."""
    try:
        import torch
        from vllm import LLM, SamplingParams
    except ImportError as e:
        raise DeliberateError(f"{role}=vllm needs vLLM: pip install 'deliberate[vllm]'") from e
    if not torch.cuda.is_available():
        raise DeliberateError(f"{role}=vllm needs a CUDA GPU; use {role}=hf on this machine")
    return LLM, SamplingParams


class VLLMEngine:
    """A model loaded by vLLM on the GPU. `role` names the setting in errors (`generate.backend`)."""

    def __init__(self, path: str, *, dtype: str, seed: int, trust_remote_code: bool = False,
                 revision: str | None = None, role: str = "model.backend"):
        llm, self._params = _vllm(role)
        self.llm = llm(model=path, dtype=dtype, seed=seed, revision=revision, enable_prefix_caching=True,
                       trust_remote_code=trust_remote_code)

    def close(self) -> None:
        """Give the GPU memory back, so that the next model (or a local judge) can load: vLLM keeps it until its
        engine and its distributed state are torn down."""
        import gc

        import torch

        self.llm = None
        with contextlib.suppress(ImportError):
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(self, conversations: Sequence[Conversation], settings: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        """One generation per conversation. With `seeds` (one per conversation) each sample depends on its own
        seed only; without, on the engine's seed (the k samples of one prompt still differ)."""
        tokenizer = self.llm.get_tokenizer()
        # Token ids, not text: the rendered template holds its special tokens already, and vLLM would add a BOS.
        prompts = [{"prompt_token_ids": tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"]}
                   for c in conversations]

        def params(seed: int | None):
            return self._params(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or -1,
                                max_tokens=settings.max_new_tokens, repetition_penalty=settings.repetition_penalty,
                                seed=seed)

        sampling = [params(s) for s in seeds] if seeds is not None else params(None)
        outputs = self.llm.generate(prompts, sampling)
        return [Generation(trim(o.outputs[0].text, continues_turn(c)), len(o.outputs[0].token_ids),
                           "length" if o.outputs[0].finish_reason == "length" else "stop")
                for c, o in zip(conversations, outputs, strict=True)]


class _AnswerAPI(ChatAPI):
    """`ChatAPI` whose results are whole answers (`Generation`): the text, its completion tokens and why it
    stopped. A refusal is an answer here, since it is what an evaluation measures, and so is an empty one; a
    reasoning the server returns apart (vLLM's `reasoning_content`) comes first, in a reasoning block."""

    def _read(self, data: Any) -> Generation | Failure:
        if not isinstance(data, dict):
            return Failure("the server returned a body that is not a chat completion")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        counted = {field: value for field in ("prompt_tokens", "completion_tokens")
                   if isinstance(value := usage.get(field), int) and not isinstance(value, bool) and value >= 0}
        self.counters.tokens_in += counted.get("prompt_tokens", 0)
        self.counters.tokens_out += counted.get("completion_tokens", 0)
        choices = data.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        message = choice.get("message")
        if not isinstance(message, dict):
            return Failure("the server returned no message")
        text = message.get("content") or message.get("refusal") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if not isinstance(text, str) or not isinstance(reasoning, str | None):
            return Failure("the server returned a message that is not text")
        if reasoning:
            text = f"{OPEN}\n{reasoning.strip()}\n{CLOSE}\n{text}"
        finish = choice.get("finish_reason")
        return Generation(text.strip(), counted.get("completion_tokens", 0),
                          finish if isinstance(finish, str) and finish else "stop")


def ask_api(api: ApiConfig, model: str | None, conversations: Sequence[Messages], settings: SamplingConfig,
            on_item: Callable[[int, Generation | Failure], None], *, role: str, usage: ApiUsage,
            description: str = "answering (api)", show_progress: bool = True) -> None:
    """Ask the served `model` for one answer per conversation; `on_item(i, answer or failure)` is called the
    moment conversation i has its result, so a caller can save it at once (a killed run re-pays at most the
    requests in flight). What it took is added to `usage`; `role` names the settings in errors (`model`)."""
    client = _AnswerAPI.from_config(api, model=model, counters=usage, role=role)
    params: dict[str, Any] = {"temperature": settings.temperature, "top_p": settings.top_p,
                              "max_tokens": settings.max_new_tokens}
    if settings.top_k:  # not OpenAI parameters: sent only when asked for (vLLM servers take them)
        params["top_k"] = settings.top_k
    if settings.repetition_penalty != 1.0:
        params["repetition_penalty"] = settings.repetition_penalty
    start = time.perf_counter()
    with progress_bar(description, total=len(conversations), unit="tok", enabled=show_progress) as bar:

        def item(i: int, result: Generation | Failure) -> None:
            usage.requests += 1
            usage.failures += isinstance(result, Failure)
            bar.advance(1, tokens=0 if isinstance(result, Failure) else result.num_tokens)
            on_item(i, result)

        try:
            asyncio.run(client.complete(list(conversations), params, item))
        finally:
            usage.seconds += time.perf_counter() - start
