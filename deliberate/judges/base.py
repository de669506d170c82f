"""One judge interface for every stage: pointwise scores and pairwise preferences over any backend.

`Judge.score(items)` gives each (prompt, response, category) a score from 0 to 10 for policy adherence, a
verdict (comply / refuse / safe_complete / unsafe) and a rationale; `spec_for(category)` goes into the judge's
prompt. Each item is judged `repeats` times and the scores aggregate by min (the deliberative-alignment filter)
or mean. `Judge.compare(items, criterion)` asks which of two responses is better, in both orders, `repeats`
times each, ties allowed (SACPO's protocol). A deterministic judge (`Backend.deterministic`: rules, classifier,
guard, hf's greedy decoding, openai at temperature 0, unless `judge.deterministic` says otherwise) is asked once:
n identical requests would cost n times and count one verdict n times.

A failed judgment (network, a refusal to judge, an unparseable output) is a failure: an item with any failed
repeat has no score, and a comparison counts only when both of its orders succeeded; when one order fails, the
other order's verdict is dropped too (counted in `dropped`), so a judge that fails on one position cannot bring
its position bias back in through the failures. SACPO's script scores a failed judgment 0-0, a tie; here it is
neither a win nor a tie, and callers see the counts.
Successful judgments are cached on disk, keyed by everything that determines them, each one the moment it
arrives: a run killed mid-batch re-pays at most the requests that were in flight.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from deliberate.errors import DeliberateError, redact
from deliberate.judges.cache import JudgeCache, cache_key
from deliberate.judges.prompts import PROMPT_VERSION
from deliberate.judges.rubrics import RUBRIC_VERSION
from deliberate.services.chat_api import ApiUsage, Failure
from deliberate.services.progress import progress_bar
from deliberate.services.reasoning import split_reasoning
from deliberate.services.spec import PolicySpec

T = TypeVar("T")


JudgeFailure = Failure  # a judgment that failed (network, refusal to judge, unparseable output)


@dataclass
class PointwiseItem:
    prompt: str
    response: str
    category: str | None = None
    expected: str | None = None  # comply / refuse / safe_complete, when the data says


@dataclass
class PairwiseItem:
    prompt: str
    first: str
    second: str
    category: str | None = None
    expected: str | None = None


@dataclass
class PointwiseRequest:
    prompt: str
    response: str  # what the judge sees (the final answer only, when reasoning is hidden)
    category: str | None
    expected: str | None
    spec_text: str | None
    repeat: int


@dataclass
class PairwiseRequest:
    prompt: str
    first: str  # shown as response A
    second: str  # shown as response B
    criterion: str
    category: str | None
    expected: str | None
    spec_text: str | None
    repeat: int


@dataclass
class ClassifyRequest:
    prompt: str
    categories: tuple[str, ...]
    spec_text: str
    repeat: int = 0


@dataclass
class RubricRequest:
    prompt: str
    response: str
    rubric: str  # a benchmark's own scoring prompt (judges/rubrics.py): strongreject, xstest
    version: int = RUBRIC_VERSION
    repeat: int = 0


@dataclass
class PointwiseResult:
    score: float | None  # aggregated; None when any repeat failed
    verdict: str | None  # the verdict of the repeat that gave the aggregated score
    rationale: str | None
    scores: list[float] = field(default_factory=list)
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    probabilities: dict[str, float | None] = field(default_factory=dict)  # a guard's p_harmful, p_refusal, ...

    @property
    def ok(self) -> bool:
        return self.score is not None


@dataclass
class PairwiseResult:
    wins: int = 0  # judgments preferring `first`
    losses: int = 0  # judgments preferring `second`
    ties: int = 0
    failures: int = 0  # judgments that failed
    errors: list[str] = field(default_factory=list)
    dropped: int = 0  # successful judgments left out because the other order of the same repeat failed

    @property
    def comparisons(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float | None:
        """(wins + ties / 2) / comparisons, over successful judgments only."""
        return (self.wins + 0.5 * self.ties) / self.comparisons if self.comparisons else None


def win_rate(results: Sequence[PairwiseResult]) -> float | None:
    total = PairwiseResult(wins=sum(r.wins for r in results), losses=sum(r.losses for r in results),
                           ties=sum(r.ties for r in results))
    return total.win_rate


@dataclass
class Usage(ApiUsage):
    """A judge's `ApiUsage` (its requests are the judgments asked of the backend: cache misses) and its cache hits."""

    cache_hits: int = 0

    def line(self) -> str:
        return (f"judge: {self.requests} requests, {self.cache_hits} cached, {self.failures} failed, "
                f"{self.retries} retries, {self.tokens_in} tokens in / {self.tokens_out} out, {self.seconds:.1f}s")


Done = Callable[[int, "dict[str, Any] | JudgeFailure"], None]
"""Called by a backend the moment request `i` of its batch has its result, so the judge can store it at once: a
killed run re-pays at most the requests that were in flight."""


def report_all(done: Done, results: list[dict[str, Any] | JudgeFailure]) -> list[dict[str, Any] | JudgeFailure]:
    """For a backend that computes a whole batch at once: report each result, then return them all."""
    for i, value in enumerate(results):
        done(i, value)
    return results


class Backend:
    """How judgments are made. Subclasses implement `pointwise` and `pairwise` for a batch of requests: each
    returns one result per request and calls `done(i, result)` as soon as request i has its result."""

    kind: str = "backend"
    cacheable: bool = True
    generative: bool = False  # writes text: can answer any prompt, benchmarks' own rubrics included
    deterministic: bool = False  # the same request always gets the same judgment: it is asked once
    scale: str = "0-10"  # what pointwise scores mean: "0-10" (policy adherence) or "raw" (a model's own scalar)

    def __init__(self, usage: Usage):
        self.usage = usage

    def identity(self) -> dict[str, Any]:
        """Everything about the backend that changes its judgments (part of the cache key)."""
        return {"backend": self.kind}

    async def pointwise(self, requests: list[PointwiseRequest], done: Done) -> list[dict[str, Any] | JudgeFailure]:
        raise NotImplementedError

    async def pairwise(self, requests: list[PairwiseRequest], done: Done) -> list[dict[str, Any] | JudgeFailure]:
        raise NotImplementedError

    async def rubric(self, requests: list[RubricRequest], done: Done) -> list[dict[str, Any] | JudgeFailure]:
        raise DeliberateError(f"the {self.kind} judge cannot answer a benchmark's own rubric (StrongREJECT, XSTest); "
                              "use judge.backend openai or hf")

    async def classify(self, requests: list[ClassifyRequest], done: Done) -> list[dict[str, Any] | JudgeFailure]:
        raise DeliberateError(f"the {self.kind} judge cannot assign categories to prompts that have none: set "
                              "data.category or a category column, or use judge.backend openai or hf")

    def missing(self, category: str | None, expected: str | None) -> str | None:
        """What an item lacks that this backend needs to judge it (None: nothing)."""
        return None

    def close(self) -> None:
        pass


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, except that a Ctrl-C is never lost: asyncio turns it into cancelling the coroutine, and a
    coroutine that was already returning then returns normally, so the interrupt is raised here."""
    with asyncio.Runner() as runner:
        value = runner.run(coro)
        if getattr(runner, "_interrupt_count", 0):
            raise KeyboardInterrupt
        return value


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from synchronous code, also when an event loop is already running (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = _run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Judge:
    def __init__(self, backend: Backend, spec: PolicySpec | None, *, repeats: int = 1, aggregate: str = "min",
                 hide_reasoning: bool = True, cache: JudgeCache | None = None, show_progress: bool = True,
                 max_calls: int | None = None, deterministic: bool | None = None):
        self.backend, self.spec = backend, spec
        self.deterministic = backend.deterministic if deterministic is None else deterministic
        self.max_calls = max_calls
        self.repeats, self.aggregate, self.hide_reasoning = repeats, aggregate, hide_reasoning
        self.cache = cache if backend.cacheable else None
        self.usage = backend.usage
        self.show_progress = show_progress
        self._spec_texts: dict[str | None, str] = {}

    def _spec_text(self, category: str | None) -> str | None:
        if self.spec is None:
            return None
        if category not in self._spec_texts:  # rendered once per category, not once per request
            known = category and self.spec.find(category)
            # An unknown category: the judge gets the whole policy.
            self._spec_texts[category] = self.spec.spec_for(category) if known else self.spec.render_full()
        return self._spec_texts[category]

    def _check(self, items: Sequence[PointwiseItem] | Sequence[PairwiseItem]) -> None:
        """Items the backend cannot judge at all are the user's to fix, before any judging starts."""
        lacking = [(n, why) for n, it in enumerate(items) if (why := self.backend.missing(it.category, it.expected))]
        if lacking:
            n, why = lacking[0]
            raise DeliberateError(f"{len(lacking)} of {len(items)} items cannot be judged by the {self.backend.kind} "
                                  f"judge (item {n}: {why})")

    def effective_repeats(self, repeats: int | None = None) -> int:
        """How many times each item (each order of a pair) is really asked: once for a deterministic judge."""
        return 1 if self.deterministic else (repeats or self.repeats)

    def _visible(self, response: str, hide_reasoning: bool | None) -> str:
        hide = self.hide_reasoning if hide_reasoning is None else hide_reasoning
        return split_reasoning(response).answer if hide else response

    async def _run(self, kind: str, requests: list, call) -> list[dict[str, Any] | JudgeFailure]:
        """Serve what the cache has, ask the backend for the rest, and store each success the moment it arrives."""
        import time

        start = time.perf_counter()
        fixed = {**self.backend.identity(), "prompt_version": PROMPT_VERSION, "kind": kind}
        keys = [cache_key({**fixed, **asdict(r)}) for r in requests]
        results: list[dict[str, Any] | JudgeFailure | None] = [None] * len(requests)
        # The same pointwise request twice in one call (two samples with the same answer) is asked once: judged
        # in different batches a guard's bfloat16 scores differ in the last digit, and the cache would then give
        # a rerun the one score where the first run had two, changing its pairs. (A pairwise comparison of two
        # equal answers is still asked in both orders: a judge's position bias shows there.)
        todo, first, also = [], {}, defaultdict(list)  # also: the later copies of a request asked once
        for i, key in enumerate(keys):
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[i] = hit
                self.usage.cache_hits += 1
            elif kind == "pointwise" and key in first:
                also[first[key]].append(i)
            else:
                first[key] = i
                todo.append(i)
        if todo and self.max_calls is not None and self.usage.requests + len(todo) > self.max_calls:
            raise DeliberateError(
                f"judge budget: {len(todo)} more judgments needed, {self.usage.requests} of judge.max_calls="
                f"{self.max_calls} already used; raise the budget (what was judged so far is cached)")
        if todo:
            with progress_bar(f"judging ({self.backend.kind})", total=len(todo), enabled=self.show_progress) as bar:

                def done(j: int, value: dict[str, Any] | JudgeFailure) -> None:
                    i = todo[j]
                    if results[i] is not None:  # reported twice: count and store it once
                        return
                    if isinstance(value, dict) and isinstance(value.get("rationale"), str):
                        value = {**value, "rationale": redact(value["rationale"])}  # a judge may quote a key
                    for k in (i, *also[i]):
                        results[k] = value
                    self.usage.requests += 1
                    if isinstance(value, JudgeFailure):
                        self.usage.failures += 1
                    elif self.cache is not None:
                        self.cache.put(keys[i], value)  # committed at once
                    bar.advance(1)

                fresh = await call([requests[i] for i in todo], done)
                for j, value in enumerate(fresh):  # a backend that did not report a result
                    done(j, value)
        self.usage.seconds += time.perf_counter() - start
        return results  # type: ignore[return-value]

    async def ascore(self, items: Sequence[PointwiseItem], repeats: int | None = None, *,
                     hide_reasoning: bool | None = None) -> list[PointwiseResult]:
        """Score each item `repeats` times; `hide_reasoning` (the judge's own setting when None) says whether the
        judge sees the chain of thought or the final answer only."""
        self._check(items)
        k = self.effective_repeats(repeats)
        requests = [
            PointwiseRequest(prompt=it.prompt, response=self._visible(it.response, hide_reasoning), category=it.category,
                             expected=it.expected, spec_text=self._spec_text(it.category), repeat=r)
            for it in items for r in range(k)
        ]
        raw = await self._run("pointwise", requests, self.backend.pointwise)
        results = []
        for n in range(len(items)):
            outs = raw[n * k : (n + 1) * k]
            ok = [o for o in outs if not isinstance(o, JudgeFailure)]
            errors = [o.error for o in outs if isinstance(o, JudgeFailure)]
            result = PointwiseResult(score=None, verdict=None, rationale=None, scores=[o["score"] for o in ok],
                                     failures=len(errors), errors=errors)
            if ok and not errors:
                chosen = min(ok, key=lambda o: o["score"])
                result.score = chosen["score"] if self.aggregate == "min" else sum(result.scores) / len(ok)
                result.verdict, result.rationale = chosen.get("verdict"), chosen.get("rationale")
                result.probabilities = {k: v for k, v in chosen.items() if k.startswith("p_")}
            results.append(result)
        return results

    async def acompare(self, items: Sequence[PairwiseItem], criterion: str = "harmlessness",
                       repeats: int | None = None, *, hide_reasoning: bool | None = None) -> list[PairwiseResult]:
        self._check(items)
        k = self.effective_repeats(repeats)
        requests = []
        for it in items:
            first, second = self._visible(it.first, hide_reasoning), self._visible(it.second, hide_reasoning)
            for r in range(k):
                for a, b in ((first, second), (second, first)):  # both orders, against position bias
                    requests.append(PairwiseRequest(prompt=it.prompt, first=a, second=b, criterion=criterion,
                                                    category=it.category, expected=it.expected,
                                                    spec_text=self._spec_text(it.category) if criterion == "policy" else None,
                                                    repeat=r))
        raw = await self._run("pairwise", requests, self.backend.pairwise)
        results = []
        per_item = 2 * k
        for n in range(len(items)):
            result = PairwiseResult()
            outs = raw[n * per_item : (n + 1) * per_item]
            for r in range(k):
                both = outs[2 * r : 2 * r + 2]  # (first shown as A, first shown as B)
                failed = [o for o in both if isinstance(o, JudgeFailure)]
                if failed:
                    result.failures += len(failed)
                    result.errors += [o.error for o in failed]
                    result.dropped += 2 - len(failed)
                    continue
                for swapped, out in enumerate(both):
                    preferred = out["preferred"]
                    if preferred == "tie":
                        result.ties += 1
                    elif (preferred == "A") != bool(swapped):
                        result.wins += 1
                    else:
                        result.losses += 1
            results.append(result)
        return results

    async def aclassify(self, prompts: Sequence[str]) -> list[str | None]:
        """The spec category of each prompt, as the judge assigns it (None where the judgment failed)."""
        if self.spec is None:
            raise ValueError("assigning categories needs a spec")
        ids = tuple(self.spec.category_ids)
        overview = self.spec.render_overview()
        requests = [ClassifyRequest(prompt=p, categories=ids, spec_text=overview) for p in prompts]
        raw = await self._run("classify", requests, self.backend.classify)
        return [None if isinstance(o, JudgeFailure) else o["category"] for o in raw]

    def classify(self, prompts: Sequence[str]) -> list[str | None]:
        return run_sync(self.aclassify(prompts))

    async def arubric(self, items: Sequence[PointwiseItem], rubric: str, *,
                      hide_reasoning: bool | None = None) -> list[dict[str, Any] | JudgeFailure]:
        """A benchmark's own scoring (judges/rubrics.py) of each response, asked once, as its authors do: the
        parsed reply (StrongREJECT: refused, convincing, specific, score; XSTest: label) or a failure."""
        requests = [RubricRequest(prompt=it.prompt, response=self._visible(it.response, hide_reasoning), rubric=rubric)
                    for it in items]
        return await self._run("rubric", requests, self.backend.rubric)

    def rubric(self, items: Sequence[PointwiseItem], rubric: str, *,
               hide_reasoning: bool | None = None) -> list[dict[str, Any] | JudgeFailure]:
        return run_sync(self.arubric(items, rubric, hide_reasoning=hide_reasoning))

    def score(self, items: Sequence[PointwiseItem], repeats: int | None = None, *,
              hide_reasoning: bool | None = None) -> list[PointwiseResult]:
        return run_sync(self.ascore(items, repeats, hide_reasoning=hide_reasoning))

    def compare(self, items: Sequence[PairwiseItem], criterion: str = "harmlessness", repeats: int | None = None, *,
                hide_reasoning: bool | None = None) -> list[PairwiseResult]:
        return run_sync(self.acompare(items, criterion, repeats, hide_reasoning=hide_reasoning))

    def close(self) -> None:
        self.backend.close()
        if self.cache is not None:
            self.cache.close()
