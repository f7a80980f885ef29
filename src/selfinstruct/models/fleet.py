"""Several models as one: a router over members (HTTP endpoints, Ray replicas).

The engine and the steps see one `Model`; the fleet sends each request to the member with the
fewest requests outstanding (the faster member frees up sooner and so gets more), ties to the
one that has answered fastest lately.

A member's failure is never retried here: the `TransientModelError` goes up to the engine, which
counts it, backs off and sends the request again; by then the member that failed is cooling
down, so the retry goes to another one. Keeping retries in the engine keeps its accounting
exact: every request a member saw is one attempt in run.json and against `--max-requests`.

A member that keeps failing (three in a row, or one refused connection or dead replica) is taken
out of rotation. It is then probed in the background (`Model.probe`: a cheap call, never a real
request) with exponential backoff, and put back when it answers. A `ModelError` from any member
(refused key, unknown model, bad request) stops the run: the member's message names it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from selfinstruct.errors import (
    ModelError,
    ModelUnreachable,
    SelfInstructError,
    TransientModelError,
)
from selfinstruct.models.base import Completion, Model, ModelInfo, Sampling

#: failures at once that take a member out of rotation, whatever their kind
OUT_AFTER = 3
#: failure kinds that mean the member is gone, not struggling: out at the first one
GONE = frozenset({"connection", "replica_died"})


@dataclass
class MemberStats:
    """What run.json records of one member. Never a key: labels are safe URLs or replica names."""

    requests: int = 0
    succeeded: int = 0
    failures: Counter = field(default_factory=Counter)  # by reason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds_answering: float = 0.0  # summed over succeeded requests
    taken_out: int = 0  # times taken out of rotation
    seconds_out_of_rotation: float = 0.0
    probes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failures": dict(self.failures),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds_answering": round(self.seconds_answering, 3),
            "taken_out_of_rotation": self.taken_out,
            "seconds_out_of_rotation": round(self.seconds_out_of_rotation, 3),
            "probes": self.probes,
        }


@dataclass
class _Member:
    label: str
    model: Model
    stats: MemberStats = field(default_factory=MemberStats)
    outstanding: int = 0
    failures_in_a_row: int = 0  # reset by an answer
    latency: float = 0.0  # moving average of answered requests, seconds
    ready_at: float = 0.0  # cooling down until then (monotonic)
    out_since: float | None = None  # out of rotation since then
    probe_delay: float = 0.0
    next_probe_at: float = 0.0
    probing: bool = False


class FleetModel(Model):
    """Route requests over `members` (each a Model; `labels` name them in run.json and errors)."""

    def __init__(
        self,
        members: list[Model],
        labels: list[str],
        *,
        info: ModelInfo | None = None,
        probe_base: float = 0.5,
        probe_max: float = 5.0,
        probe_timeout: float = 10.0,
    ):
        if not members or len(members) != len(labels):
            raise ValueError("a fleet needs one label per member, and at least one member")
        self._members = [_Member(label, m) for label, m in zip(labels, members, strict=True)]
        self._info = info
        self.probe_base, self.probe_max, self.probe_timeout = probe_base, probe_max, probe_timeout
        self._probes: set[asyncio.Task] = set()
        self.default_concurrency = sum(m.default_concurrency for m in members)

    @property
    def max_batch(self) -> int:  # type: ignore[override]
        # A member may lower its own (a server that refuses a list of prompts): follow it.
        return min(m.model.max_batch for m in self._members)

    @property
    def info(self) -> ModelInfo:
        if self._info is not None:
            return self._info
        first = self._members[0].model.info
        labels = ", ".join(m.label for m in self._members)
        return ModelInfo(first.backend, first.name, first.api, {"members": labels})

    @property
    def labels(self) -> list[str]:
        return [m.label for m in self._members]

    # --- checking ----------------------------------------------------------------------------

    async def check(self) -> None:
        """Every member checked at once. An unreachable one goes out of rotation (and is probed
        later); any other failure stops here; so does a fleet with no member reachable."""
        results = await asyncio.gather(
            *(m.model.check() for m in self._members), return_exceptions=True
        )
        unreachable = []
        for member, result in zip(self._members, results, strict=True):
            if isinstance(result, ModelUnreachable):
                unreachable.append(result)
                self._take_out(member, time.monotonic())
            elif isinstance(result, BaseException):
                raise result
        if len(unreachable) == len(self._members):
            raise ModelError(
                f"none of the {len(self._members)} members answered; first: {unreachable[0]}"
            )

    # --- one request -------------------------------------------------------------------------

    async def complete(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        member = self._pick()
        member.outstanding += 1
        member.stats.requests += 1
        started = time.monotonic()
        try:
            completions = await member.model.complete(prompts, sampling)
        except TransientModelError as e:
            self._failed(member, e)
            raise
        except ModelError:
            member.stats.failures["fatal"] += 1
            raise
        finally:
            member.outstanding -= 1
        self._answered(member, completions, time.monotonic() - started)
        return completions

    def _pick(self) -> _Member:
        now = time.monotonic()
        self._start_due_probes(now)
        ready = [m for m in self._members if m.out_since is None and m.ready_at <= now]
        if ready:
            return min(ready, key=lambda m: (m.outstanding, m.latency))
        # Nothing to send to now: the engine backs off and asks again (counted as a retry).
        waits = [m.ready_at - now for m in self._members if m.out_since is None]
        out = sum(m.out_since is not None for m in self._members)
        raise TransientModelError(
            f"no member available ({out} of {len(self._members)} out of rotation, the others"
            " cooling down after a failure)",
            reason="no_member_available",
            retry_after=min(waits) if waits else None,
        )

    def _answered(self, member: _Member, completions: list[Completion], seconds: float) -> None:
        s = member.stats
        s.succeeded += 1
        s.seconds_answering += seconds
        for c in completions:
            s.prompt_tokens += c.prompt_tokens
            s.completion_tokens += c.completion_tokens
        member.latency = seconds if not member.latency else 0.8 * member.latency + 0.2 * seconds
        member.failures_in_a_row = 0
        member.probe_delay = 0.0  # a real answer: the next fall starts from a short probe again

    def _failed(self, member: _Member, error: TransientModelError) -> None:
        now = time.monotonic()
        member.stats.failures[error.reason] += 1
        member.failures_in_a_row += 1
        if error.reason in GONE or member.failures_in_a_row >= OUT_AFTER:
            self._take_out(member, now)
            return
        # A passing failure: a short rest, or what the member asked for (Retry-After).
        rest = min(self.probe_max, self.probe_base * 2 ** (member.failures_in_a_row - 1))
        if error.retry_after is not None:
            rest = max(rest, min(error.retry_after, self.probe_max * 6))
        member.ready_at = max(member.ready_at, now + rest)

    # --- rotation ----------------------------------------------------------------------------

    def _take_out(self, member: _Member, now: float) -> None:
        if member.out_since is not None:
            return
        member.out_since = now
        member.stats.taken_out += 1
        member.probe_delay = min(self.probe_max, max(self.probe_base, member.probe_delay * 2))
        member.next_probe_at = now + member.probe_delay

    def _put_back(self, member: _Member, now: float) -> None:
        if member.out_since is None:
            return
        member.stats.seconds_out_of_rotation += now - member.out_since
        member.out_since = None
        member.failures_in_a_row = 0
        member.ready_at = now

    def _start_due_probes(self, now: float) -> None:
        for member in self._members:
            if member.out_since is not None and not member.probing and member.next_probe_at <= now:
                member.probing = True
                task = asyncio.get_running_loop().create_task(self._probe(member))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)

    async def _probe(self, member: _Member) -> None:
        member.stats.probes += 1
        try:
            await asyncio.wait_for(member.model.probe(), self.probe_timeout)
        except (SelfInstructError, TimeoutError, OSError):
            # Still down (or not ours to judge yet): try again later, less often.
            now = time.monotonic()
            member.probe_delay = min(self.probe_max, max(self.probe_base, member.probe_delay * 2))
            member.next_probe_at = now + member.probe_delay
        else:
            self._put_back(member, time.monotonic())
        finally:
            member.probing = False

    # --- what run.json records ---------------------------------------------------------------

    def take_member_stats(self) -> dict[str, dict[str, Any]]:
        """Each member's counts since the last call (time out of rotation up to now)."""
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        for member in self._members:
            if member.out_since is not None:
                member.stats.seconds_out_of_rotation += now - member.out_since
                member.out_since = now
            out[member.label] = member.stats.to_dict()
            member.stats = MemberStats()
        return out

    async def aclose(self) -> None:
        for task in list(self._probes):
            task.cancel()
        if self._probes:
            await asyncio.gather(*self._probes, return_exceptions=True)
        for m in self._members:
            m.probing = False
        await asyncio.gather(*(m.model.aclose() for m in self._members))

    def close(self) -> None:
        for m in self._members:
            m.model.close()
