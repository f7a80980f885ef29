"""The engine on its own, with a fake async model: concurrency, retries, budgets, rate limits.

No server and no real model: the fake's behaviour is scripted per prompt and per attempt, and it
records when each call started and how many calls were in flight at once. Timings use small
numbers (tens of milliseconds) and assert only what a loaded machine cannot break: a sleep is
never shorter than asked, so lower bounds on waiting are exact up to the clock's resolution.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import Callable

import pytest

from selfinstruct.engine import WAIT, Engine, EngineSettings, Request, RequestFailed
from selfinstruct.errors import ModelError, TransientModelError
from selfinstruct.models.base import Completion, Model, ModelInfo, Sampling

# asyncio may fire a timer up to one clock tick early; allow that much and no more.
TICK = 0.005
SAMPLING = Sampling(max_tokens=16)

# Behaviour of one call: given (prompt, attempt number), return None to answer normally or raise.
Behaviour = Callable[[str, int], None]


class FakeModel(Model):
    """An async model whose failures are scripted; it records every call."""

    default_concurrency = 3

    def __init__(
        self,
        behave: Behaviour | None = None,
        *,
        latency: float = 0.0,
        latencies: dict[str, float] | None = None,
        tokens: tuple[int, int] = (10, 10),
    ):
        self.behave = behave
        self.latency = latency
        self.latencies = latencies or {}
        self.tokens = tokens
        self.attempts: Counter[str] = Counter()
        self.starts: dict[str, list[float]] = {}
        self.order: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled: list[str] = []

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(backend="fake", name="fake", api="completions")

    async def complete(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        key = prompts[0]
        self.attempts[key] += 1
        self.starts.setdefault(key, []).append(time.monotonic())
        self.order.append(key)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            delay = self.latencies.get(key, self.latency)
            if delay:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
            if self.behave is not None:
                self.behave(key, self.attempts[key])
            p, c = self.tokens
            return [Completion(f"answer to {p_}", "stop", p, c) for p_ in prompts]
        except asyncio.CancelledError:
            self.cancelled.append(key)
            raise
        finally:
            self.in_flight -= 1


def requests(n: int, prefix: str = "p") -> list[Request]:
    return [Request([f"{prefix}{i}"], SAMPLING, key=i) for i in range(n)]


class Collector:
    def __init__(self) -> None:
        self.results: list[tuple[Request, list[Completion]]] = []
        self.failures: list[tuple[Request, RequestFailed]] = []

    def on_result(self, request: Request, completions: list[Completion]) -> None:
        self.results.append((request, completions))

    def on_failure(self, request: Request, failure: RequestFailed) -> None:
        self.failures.append((request, failure))


def drive(engine: Engine, source, collector: Collector | None = None, timeout: float = 10.0):
    collector = collector or Collector()

    async def main():
        return await asyncio.wait_for(
            engine.run(source, collector.on_result, collector.on_failure), timeout
        )

    stats = asyncio.run(main())
    return stats, collector


def fail_first(n: int, reason: str, retry_after: float | None = None) -> Behaviour:
    def behave(prompt: str, attempt: int) -> None:
        if attempt <= n:
            raise TransientModelError(f"{prompt}: {reason}", reason=reason, retry_after=retry_after)

    return behave


# -- concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4, 16])
def test_in_flight_never_exceeds_concurrency_and_reaches_it(concurrency):
    model = FakeModel(latency=0.01)
    engine = Engine(model, EngineSettings(concurrency=concurrency))
    stats, got = drive(engine, requests(3 * concurrency + 1))
    assert model.max_in_flight == concurrency
    assert stats.succeeded == stats.requests == 3 * concurrency + 1
    assert sorted(r.key for r, _ in got.results) == list(range(3 * concurrency + 1))
    assert not got.failures


def test_concurrency_defaults_to_the_models():
    model = FakeModel(latency=0.01)
    stats, _ = drive(Engine(model, EngineSettings()), requests(10))
    assert model.max_in_flight == FakeModel.default_concurrency
    assert stats.succeeded == 10


def test_a_plain_list_is_a_source_and_results_carry_their_request():
    model = FakeModel(latencies={"p0": 0.05})  # the first finishes last
    stats, got = drive(Engine(model, EngineSettings(concurrency=4)), requests(4))
    assert [r.key for r, _ in got.results][-1] == 0
    for request, completions in got.results:
        assert [c.text for c in completions] == [f"answer to {request.prompts[0]}"]
    assert stats.to_dict() == {
        "requests": 4,
        "succeeded": 4,
        "failed": 0,
        "retries": {},
        "failures": {},
        "budget_stop": None,
    }


def test_usage_counts_tokens_of_successful_requests_only():
    model = FakeModel(fail_first(1, "500"), tokens=(7, 3))
    engine = Engine(model, EngineSettings(concurrency=2, backoff_base=0.001))
    stats, _ = drive(engine, requests(5))
    assert stats.requests == 10 and stats.succeeded == 5
    assert (engine.usage.requests, engine.usage.prompt_tokens) == (5, 35)
    assert engine.usage.completion_tokens == 15 and engine.usage.total_tokens == 50


# -- retries ----------------------------------------------------------------------------------


def test_transient_errors_are_retried_and_counted_by_reason():
    reasons = {"p0": ["429", "429"], "p1": ["500"], "p2": ["timeout", "malformed", "503"]}

    def behave(prompt: str, attempt: int) -> None:
        script = reasons.get(prompt, [])
        if attempt <= len(script):
            raise TransientModelError("boom", reason=script[attempt - 1])

    model = FakeModel(behave)
    seen: list[tuple[object, str, float]] = []
    engine = Engine(
        model,
        EngineSettings(concurrency=4, backoff_base=0.001, backoff_max=0.01),
        on_retry=lambda request, error, delay: seen.append((request.key, error.reason, delay)),
    )
    stats, got = drive(engine, requests(5))
    assert stats.retries == Counter({"429": 2, "500": 1, "timeout": 1, "malformed": 1, "503": 1})
    assert stats.requests == 5 + 6 and stats.succeeded == 5 and stats.failed == 0
    assert model.attempts == Counter({"p0": 3, "p1": 2, "p2": 4, "p3": 1, "p4": 1})
    assert len(got.results) == 5 and not got.failures
    assert sorted((k, r) for k, r, _ in seen) == sorted(
        [(0, "429"), (0, "429"), (1, "500"), (2, "timeout"), (2, "malformed"), (2, "503")]
    )


def test_backoff_is_exponential_full_jitter_capped_and_actually_waited():
    model = FakeModel(fail_first(5, "503"))
    delays: list[float] = []
    settings = EngineSettings(concurrency=1, max_attempts=6, backoff_base=0.01, backoff_max=0.04)
    engine = Engine(model, settings, on_retry=lambda r, e, d: delays.append(d), jitter_seed=3)
    stats, got = drive(engine, requests(1))
    assert len(got.results) == 1 and stats.retries == Counter({"503": 5})
    ceilings = [0.01, 0.02, 0.04, 0.04, 0.04]
    assert len(delays) == 5
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert 0 <= delay <= ceiling
    starts = model.starts["p0"]
    for k, delay in enumerate(delays):
        assert starts[k + 1] - starts[k] >= delay - TICK

    # Full jitter: across many retries the delays spread over [0, ceiling], not bunched at it.
    model = FakeModel(fail_first(1, "500"))
    spread: list[float] = []
    settings = EngineSettings(concurrency=50, backoff_base=0.02)
    engine = Engine(model, settings, on_retry=lambda r, e, d: spread.append(d), jitter_seed=5)
    drive(engine, requests(50))
    assert len(spread) == 50
    assert min(spread) < 0.005 and max(spread) > 0.015 and max(spread) <= 0.02

    # The same jitter seed gives the same delays.
    again: list[float] = []
    engine = Engine(
        FakeModel(fail_first(5, "503")),
        EngineSettings(concurrency=1, max_attempts=6, backoff_base=0.01, backoff_max=0.04),
        on_retry=lambda r, e, d: again.append(d),
        jitter_seed=3,
    )
    drive(engine, requests(1))
    assert again == delays


def test_retry_after_is_honoured():
    model = FakeModel(fail_first(2, "429", retry_after=0.15))
    delays: list[float] = []
    settings = EngineSettings(concurrency=2, backoff_base=0.001, backoff_max=5)
    engine = Engine(model, settings, on_retry=lambda r, e, d: delays.append(d))
    stats, got = drive(engine, requests(2))
    assert stats.retries == Counter({"429": 4}) and stats.succeeded == 2
    assert len(delays) == 4
    # Never before the server's Retry-After, and not much later either (jitter <= base / 4).
    assert all(0.15 <= d <= 0.15 + 0.001 for d in delays)
    for starts in model.starts.values():
        assert len(starts) == 3
        assert starts[1] - starts[0] >= 0.15 - TICK
        assert starts[2] - starts[1] >= 0.15 - TICK


def test_retry_after_longer_than_backoff_max_is_capped():
    model = FakeModel(fail_first(1, "503", retry_after=3600))
    delays: list[float] = []
    settings = EngineSettings(concurrency=1, backoff_base=0.02, backoff_max=0.05)
    engine = Engine(model, settings, on_retry=lambda r, e, d: delays.append(d))
    t0 = time.monotonic()
    stats, _ = drive(engine, requests(1))
    assert stats.succeeded == 1
    assert 0.05 <= delays[0] <= 0.05 + 0.02 / 4
    assert time.monotonic() - t0 < 2


def test_request_failing_every_attempt_reaches_on_failure_with_its_reason():
    def behave(prompt: str, attempt: int) -> None:
        if prompt == "p1":
            raise TransientModelError("always down", reason="503")

    model = FakeModel(behave)
    engine = Engine(model, EngineSettings(concurrency=3, max_attempts=4, backoff_base=0.001))
    stats, got = drive(engine, requests(3))
    assert [r.key for r, _ in got.failures] == [1]
    failure = got.failures[0][1]
    assert isinstance(failure, RequestFailed)
    assert failure.reason == "503" and failure.attempts == 4
    assert isinstance(failure.cause, TransientModelError)
    assert "after 4 attempts" in str(failure)
    assert sorted(r.key for r, _ in got.results) == [0, 2]
    assert stats.failed == 1 and stats.failures == Counter({"503": 1})
    assert stats.retries == Counter({"503": 3})
    assert stats.requests == 2 + 4 and model.attempts["p1"] == 4


def test_max_attempts_one_means_no_retry():
    model = FakeModel(fail_first(1, "timeout"))
    stats, got = drive(Engine(model, EngineSettings(concurrency=2, max_attempts=1)), requests(2))
    assert stats.requests == 2 and stats.failed == 2 and not stats.retries
    assert stats.failures == Counter({"timeout": 2})
    assert [f.attempts for _, f in got.failures] == [1, 1]


# -- fatal errors -----------------------------------------------------------------------------


def test_model_error_stops_at_once_and_cancels_in_flight():
    def behave(prompt: str, attempt: int) -> None:
        if prompt == "p0":
            raise ModelError("refused the API key")

    model = FakeModel(behave, latency=10.0, latencies={"p0": 0.02})
    pulled: list[int] = []

    def source():
        n = len(pulled)
        if n >= 100:
            return None
        pulled.append(n)
        return Request([f"p{n}"], SAMPLING, key=n)

    engine = Engine(model, EngineSettings(concurrency=4, backoff_base=0.001))
    got = Collector()
    t0 = time.monotonic()
    with pytest.raises(ModelError, match="refused the API key"):
        drive(engine, source, got)
    assert time.monotonic() - t0 < 3  # the others would have taken 10 s
    assert pulled == [0, 1, 2, 3]  # nothing dispatched after the error
    assert sorted(model.cancelled) == ["p1", "p2", "p3"]
    assert model.in_flight == 0
    assert model.attempts["p0"] == 1  # never retried
    assert not got.results and not got.failures
    assert not engine.stats.retries


def test_model_error_in_several_requests_leaves_no_exception_unretrieved():
    """Several requests failing fatally at the same instant: one error is raised, the others
    are collected too (asyncio would otherwise log "Task exception was never retrieved")."""

    def behave(prompt: str, attempt: int) -> None:
        raise ModelError(f"fatal {prompt}")

    unhandled: list[dict] = []

    async def main() -> str:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: unhandled.append(ctx))
        engine = Engine(FakeModel(behave, latency=0.02), EngineSettings(concurrency=4))
        message = ""
        try:
            await engine.run(requests(4), lambda r, c: None)
        except ModelError as e:
            message = str(e)
        gc.collect()
        await asyncio.sleep(0)
        return message

    assert asyncio.run(main()).startswith("fatal p")
    gc.collect()
    assert unhandled == []


# -- budgets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_max_requests_stops_dispatch_cleanly(concurrency):
    model = FakeModel(latency=0.005)
    pulled = 0

    def source():
        nonlocal pulled
        pulled += 1
        return Request([f"p{pulled}"], SAMPLING, key=pulled)

    engine = Engine(model, EngineSettings(concurrency=concurrency, max_requests=5))
    stats, got = drive(engine, source)
    assert stats.budget_stop == "max_requests"
    assert stats.requests == 5 and stats.succeeded == 5 and len(got.results) == 5
    assert pulled == 5  # no request taken from the source and then dropped
    assert model.max_in_flight <= min(concurrency, 5)


def test_max_requests_counts_retries_and_gives_up_instead_of_retrying_past_it():
    model = FakeModel(fail_first(100, "503"))
    engine = Engine(
        model, EngineSettings(concurrency=4, max_attempts=8, backoff_base=0.001, max_requests=10)
    )
    stats, got = drive(engine, requests(50))
    assert stats.budget_stop == "max_requests"
    assert stats.requests == 10 == sum(model.attempts.values())
    # Every request taken from the source is accounted for: none succeeded, each was reported.
    assert len(got.failures) == len(model.attempts) and stats.failed == len(got.failures)
    assert all(f.reason == "503" for _, f in got.failures)


def test_max_tokens_total_stops_dispatch_cleanly():
    model = FakeModel(tokens=(15, 5))  # 20 tokens a request
    engine = Engine(model, EngineSettings(concurrency=1, max_tokens_total=100))
    stats, got = drive(engine, requests(50))
    assert stats.budget_stop == "max_tokens_total"
    assert stats.requests == 5 and len(got.results) == 5
    assert engine.usage.total_tokens == 100

    # With requests in flight the budget can only stop dispatch: in-flight ones still land.
    model = FakeModel(latency=0.01, tokens=(15, 5))
    engine = Engine(model, EngineSettings(concurrency=4, max_tokens_total=100))
    stats, got = drive(engine, requests(50))
    assert stats.budget_stop == "max_tokens_total"
    assert 5 <= stats.requests <= 5 + 3
    assert len(got.results) == stats.requests == stats.succeeded
    assert engine.usage.total_tokens == 20 * stats.requests


def test_no_budget_means_no_budget_stop():
    stats, _ = drive(Engine(FakeModel(), EngineSettings(concurrency=2)), requests(20))
    assert stats.budget_stop is None and stats.requests == 20


# -- the source protocol ----------------------------------------------------------------------


def test_wait_holds_dispatch_until_a_result_is_in():
    model = FakeModel(latency=0.01)
    done: list[int] = []
    sent = 0
    calls = 0

    def source():
        nonlocal sent, calls
        calls += 1
        if sent >= 5:
            return None
        if sent > len(done):  # each request depends on the previous answer
            return WAIT
        sent += 1
        return Request([f"p{sent}"], SAMPLING, key=sent)

    engine = Engine(model, EngineSettings(concurrency=4))
    got = Collector()

    def on_result(request, completions):
        done.append(request.key)
        got.on_result(request, completions)

    async def main():
        return await asyncio.wait_for(engine.run(source, on_result), 10)

    stats = asyncio.run(main())
    assert done == [1, 2, 3, 4, 5] and stats.succeeded == 5
    assert model.max_in_flight == 1
    assert calls == 5 + 4 + 1  # asked again after each result; WAIT once per wait; one None


def test_wait_then_more_requests_fill_the_free_slots():
    model = FakeModel(latency=0.01)
    done = 0
    sent = 0

    def source():
        nonlocal sent
        if sent >= 9:
            return None
        if sent >= 3 and done < 3:  # a second wave once the first is all in
            return WAIT
        sent += 1
        return Request([f"p{sent}"], SAMPLING, key=sent)

    def on_result(request, completions):
        nonlocal done
        done += 1

    engine = Engine(model, EngineSettings(concurrency=6))
    stats = asyncio.run(asyncio.wait_for(engine.run(source, on_result), 10))
    assert stats.succeeded == 9 and done == 9
    assert model.max_in_flight == 6
    assert model.order[:3] == ["p1", "p2", "p3"]


def test_wait_with_nothing_in_flight_ends_the_run():
    calls = 0

    def source():
        nonlocal calls
        calls += 1
        return WAIT

    model = FakeModel()
    stats, got = drive(Engine(model, EngineSettings(concurrency=3)), source, timeout=2)
    assert stats.requests == 0 and not got.results
    assert calls == 1


def test_source_is_not_asked_again_once_it_returned_none():
    calls = 0

    def source():
        nonlocal calls
        calls += 1
        return Request(["only"], SAMPLING) if calls == 1 else None

    stats, got = drive(Engine(FakeModel(latency=0.01), EngineSettings(concurrency=4)), source)
    assert stats.succeeded == 1 and calls == 2


# -- rate limits ------------------------------------------------------------------------------


def test_requests_per_minute_spaces_requests():
    model = FakeModel()
    engine = Engine(model, EngineSettings(concurrency=8, requests_per_minute=1200))  # one / 50 ms
    t0 = time.monotonic()
    stats, _ = drive(engine, requests(6))
    elapsed = time.monotonic() - t0
    assert stats.succeeded == 6
    starts = sorted(s for key_starts in model.starts.values() for s in key_starts)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(gap >= 0.05 - TICK for gap in gaps), gaps
    assert elapsed >= 5 * 0.05 - TICK
    assert model.max_in_flight == 1  # answers are instant: the limiter, not concurrency, paces


def test_requests_per_minute_also_paces_retries():
    model = FakeModel(fail_first(1, "500"))
    settings = EngineSettings(concurrency=4, backoff_base=0.0001, requests_per_minute=1200)
    stats, _ = drive(Engine(model, settings), requests(2))
    assert stats.requests == 4
    starts = sorted(s for key_starts in model.starts.values() for s in key_starts)
    assert all(b - a >= 0.05 - TICK for a, b in zip(starts, starts[1:], strict=False))


def test_tokens_per_minute_limits_tokens():
    # 120,000 tokens a minute = 2,000 a second; each request is estimated at 100 tokens
    # (max_tokens 100, a 1-character prompt). The bucket starts with a minute's worth, so 1,210
    # requests cannot all have started before (1,210 * 100 - 120,000) / 2,000 = 0.5 s.
    sampling = Sampling(max_tokens=100)
    source = [Request(["x"], sampling, key=i) for i in range(1210)]
    model = FakeModel()
    engine = Engine(model, EngineSettings(concurrency=8, tokens_per_minute=120_000))
    t0 = time.monotonic()
    stats, _ = drive(engine, source, timeout=30)
    assert stats.succeeded == 1210
    assert max(model.starts["x"]) - t0 >= 0.5 - TICK
