"""One engine for every model-calling step: bounded concurrency, retries, rate and budget limits.

A step hands the engine a source of requests and a handler for results. The source is asked
for the next request only when a slot is free, so a step can build each prompt from its state
at dispatch time (the bootstrap loop samples from the pool as it is then). Handlers run on the
event loop, one at a time, so a step's state needs no locks.

Failures are sorted in two: a `TransientModelError` (timeout, connection, 429, 5xx, an answer
that cannot be read) is retried with exponential backoff and full jitter, honouring
Retry-After, and after the last attempt the request is reported to the step as failed (counted
by reason, never dropped silently); a `ModelError` (refused key, unknown model, bad request)
stops the whole run at once, after in-flight requests are cancelled.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from selfinstruct.errors import ModelError, TransientModelError
from selfinstruct.models.base import Completion, Model, Sampling, Usage
from selfinstruct.validation import check_values


@dataclass
class Request:
    prompts: list[str]
    sampling: Sampling
    key: Any = None


@dataclass
class EngineSettings:
    concurrency: int | None = None  # None: the backend's default
    max_attempts: int = 8
    backoff_base: float = 1.0  # seconds before the first retry, doubled each time
    backoff_max: float = 60.0
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_requests: int | None = None  # attempts, across the run
    max_tokens_total: int | None = None  # prompt + completion tokens, across the run

    def __post_init__(self) -> None:
        check_values(
            self,
            {
                "concurrency": (1, None),
                "max_attempts": (1, None),
                "backoff_base": (0, None),
                "backoff_max": (0, None),
                "requests_per_minute": (0, None),
                "tokens_per_minute": (0, None),
                "max_requests": (0, None),
                "max_tokens_total": (0, None),
            },
        )


@dataclass
class EngineStats:
    requests: int = 0  # attempts sent
    succeeded: int = 0
    failed: int = 0  # requests given up after the last attempt
    retries: Counter = field(default_factory=Counter)  # by reason
    failures: Counter = field(default_factory=Counter)  # by reason of the last attempt
    budget_stop: str | None = None  # which budget stopped the run, if one did

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "retries": dict(self.retries),
            "failures": dict(self.failures),
            "budget_stop": self.budget_stop,
        }


class RequestFailed(Exception):
    """A request that still failed after its last attempt; the step decides what that means."""

    def __init__(self, cause: TransientModelError, attempts: int):
        super().__init__(f"{cause} (after {attempts} attempts)")
        self.cause = cause
        self.reason = cause.reason
        self.attempts = attempts


class RateLimiter:
    """Requests and tokens per minute, as two continuously refilled buckets."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        now = time.monotonic()
        self._req_level, self._tok_level = 1.0, float(tokens_per_minute or 0)
        self._stamp = now
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.tpm)

    async def acquire(self, tokens: int) -> None:
        if not self.active:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                elapsed, self._stamp = now - self._stamp, now
                wait = 0.0
                if self.rpm:
                    self._req_level = min(1.0, self._req_level + elapsed * self.rpm / 60)
                    if self._req_level < 1.0:
                        wait = (1.0 - self._req_level) * 60 / self.rpm
                if self.tpm:
                    self._tok_level = min(self.tpm, self._tok_level + elapsed * self.tpm / 60)
                    need = min(
                        tokens, self.tpm
                    )  # a request larger than a minute's worth waits a minute
                    if self._tok_level < need:
                        wait = max(wait, (need - self._tok_level) * 60 / self.tpm)
                if wait <= 0:
                    if self.rpm:
                        self._req_level -= 1.0
                    if self.tpm:
                        self._tok_level -= min(tokens, self.tpm)
                    return
                await asyncio.sleep(wait)


def estimate_tokens(request: Request) -> int:
    """A rough, generous cost of a request for rate limiting: 4 characters a token."""
    prompt = sum(len(p) for p in request.prompts) // 4
    return prompt + request.sampling.max_tokens * len(request.prompts)


class _Wait:
    def __repr__(self) -> str:
        return "WAIT"


#: What a source returns for "nothing to send now; ask again when a result is in".
WAIT: Any = _Wait()

Source = Iterable[Request] | Callable[[], Request | None]
OnResult = Callable[[Request, list[Completion]], None]
OnFailure = Callable[[Request, RequestFailed], None]
OnRetry = Callable[[Request, TransientModelError, float], None]


class Engine:
    def __init__(
        self,
        model: Model,
        settings: EngineSettings | None = None,
        *,
        usage: Usage | None = None,
        on_retry: OnRetry | None = None,
        jitter_seed: int | None = None,
    ):
        self.model = model
        self.settings = settings or EngineSettings()
        self.usage = usage if usage is not None else Usage()
        self.stats = EngineStats()
        self.on_retry = on_retry
        self._limiter = RateLimiter(
            self.settings.requests_per_minute, self.settings.tokens_per_minute
        )
        # Jitter has its own generator so that retries never shift the steps' sampling.
        self._jitter = random.Random(jitter_seed)
        # Attempts decided on (dispatched or about to be retried), counted before they are sent
        # so that a --max-requests budget holds however many requests are in flight.
        self._attempts_reserved = 0

    @property
    def concurrency(self) -> int:
        return max(1, self.settings.concurrency or self.model.default_concurrency)

    def budget_reached(self) -> str | None:
        s = self.settings
        if s.max_requests is not None and self._attempts_reserved >= s.max_requests:
            return "max_requests"
        if s.max_tokens_total is not None and self.usage.total_tokens >= s.max_tokens_total:
            return "max_tokens_total"
        return None

    async def run(
        self, source: Source, on_result: OnResult, on_failure: OnFailure | None = None
    ) -> EngineStats:
        """Drive requests until the source is empty, a budget is reached or a fatal error."""
        next_request = _supplier(source)
        in_flight: set[asyncio.Task] = set()
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < self.concurrency:
                    stop = self.budget_reached()
                    if stop is not None:
                        self.stats.budget_stop = stop
                        break
                    request = next_request()
                    if request is WAIT and not in_flight:
                        # Nothing in flight can change the source's mind: it is done.
                        request = None
                    if request is None:
                        exhausted = True
                        break
                    if request is WAIT:
                        break
                    self._attempts_reserved += 1
                    in_flight.add(asyncio.create_task(self._attempts(request)))
                if not in_flight:
                    break
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    # Leave the task in `in_flight` until its result is taken: if one raises
                    # (ModelError), the others still get collected below, never left unread.
                    in_flight.discard(task)
                    request, outcome = task.result()
                    if isinstance(outcome, RequestFailed):
                        self.stats.failed += 1
                        self.stats.failures[outcome.reason] += 1
                        if on_failure is not None:
                            on_failure(request, outcome)
                    else:
                        self.stats.succeeded += 1
                        on_result(request, outcome)
                if self.stats.budget_stop and not in_flight:
                    break
        finally:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        return self.stats

    async def _attempts(self, request: Request) -> tuple[Request, list[Completion] | RequestFailed]:
        s = self.settings
        attempt = 0
        while True:
            attempt += 1  # this attempt's budget was reserved by the caller or below
            await self._limiter.acquire(estimate_tokens(request))
            self.stats.requests += 1
            try:
                completions = await self.model.complete(request.prompts, request.sampling)
            except TransientModelError as e:
                if attempt >= s.max_attempts or self.budget_reached():
                    return request, RequestFailed(e, attempt)
                delay = self._backoff(attempt, e.retry_after)
                self.stats.retries[e.reason] += 1
                if self.on_retry is not None:
                    self.on_retry(request, e, delay)
                await asyncio.sleep(delay)
                if self.budget_reached():  # spent by other requests while this one waited
                    return request, RequestFailed(e, attempt)
                self._attempts_reserved += 1
                continue
            except ModelError:
                raise
            self.usage.add(completions)
            return request, completions

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (attempt - 1))
        delay = self._jitter.uniform(0, ceiling)
        if retry_after is not None:
            # Never earlier than the server asked; jitter on top spreads the herd.
            delay = min(self.settings.backoff_max, retry_after) + delay / 4
        return delay


def _supplier(source: Source) -> Callable[[], Request | None]:
    if callable(source):
        return source
    iterator: Iterator[Request] = iter(source)
    return lambda: next(iterator, None)


def run_sync(coro: Any, *, release: Model | None = None) -> Any:
    """Run a coroutine to completion from synchronous code (the CLI, the steps).

    With `release`, the model's connections made on this event loop are closed before the loop
    ends, whatever happens: each step runs its own loop, and a connection left open would
    outlive the loop it belongs to.
    """

    async def main() -> Any:
        try:
            return await coro
        finally:
            if release is not None:
                await release.aclose()

    return asyncio.run(main())
