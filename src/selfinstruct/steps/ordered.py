"""Answers decided in the order their requests were sent, on a worker thread.

Answers arrive in whatever order the servers finish them; a step that must make the same data at
any concurrency hands each outcome to `InOrder.put` with its request index, and `InOrder` calls
the step's `decide(index, outcome)` for index 0, 1, 2, ... on one worker thread, holding an
early answer until every earlier one has been decided. The worker is where the CPU-heavy part
of a decision runs (step 1's ROUGE-L filter), so the event loop keeps the HTTP traffic moving
on the other core meanwhile: rapidfuzz and numpy release the GIL for their long loops.

`AnswerLog` keeps each answer on disk from the moment it arrives until it is decided, so that a
run killed with answers in hand decides them on resume instead of asking (and paying) again,
and so that a decision cut short by a kill can be told apart and made again from the same answer.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfinstruct.io import JsonlAppender, iter_jsonl, write_jsonl_atomic
from selfinstruct.models.base import Completion

#: What one request came to: its completions, or the reason it failed for good.
Outcome = list[Completion] | str


class InOrder:
    """Calls `decide(index, item)` on a worker thread, strictly in index order from `start`.

    `decide` returns False to stop: nothing after that index is decided (the pool is full).
    `decided` is the index of the next decision: every index below it is decided. Only the
    thread that calls `put` may call `put`; any thread may read `decided` and `wait`.
    """

    def __init__(
        self, decide: Callable[[int, Any], bool], start: int = 0, name: str = "selfinstruct-decide"
    ):
        self._decide = decide
        self.decided = start
        self.handed = start  # every index below this one went to the worker
        self.stopped = False
        self.error: BaseException | None = None
        self._early: dict[int, Any] = {}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def put(self, index: int, item: Any) -> None:
        """The outcome of request `index`; it is decided once every earlier one is."""
        self._early[index] = item
        while self.handed in self._early:
            self._queue.put((self.handed, self._early.pop(self.handed)))
            self.handed += 1

    def check(self) -> None:
        """Raise, in the caller's thread, what made the worker fail."""
        if self.error is not None:
            raise self.error

    def wait(self, decided: int) -> None:
        """Block until a decision after `decided` is made, the worker stops or fails."""
        with self._changed:
            while self.decided == decided and not self.stopped and self.error is None:
                self._changed.wait(0.1)  # a timeout, so that Ctrl-C is seen while waiting

    def close(self, *, drain: bool = True) -> None:
        """End the worker: after deciding everything handed to it (`drain`), or after the
        decision it is making now. Raises what made it fail."""
        if not drain:
            self.stopped = True
        self._queue.put(None)
        self._thread.join()
        self.check()

    def throttle(self, backlog: int) -> None:
        """Block the caller of `put` while more than `backlog` items wait to be decided; raise
        what made the worker fail."""
        while self.handed - self.decided > backlog and not self.stopped:
            self.check()
            self.wait(self.decided)
        self.check()

    @property
    def left_undecided(self) -> int:
        """Outcomes put here that were not decided (the worker stopped first)."""
        return self.handed - self.decided + len(self._early)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.stopped or self.error is not None:
                continue  # drain the queue; a stopped run decides nothing more
            index, outcome = item
            try:
                go_on = self._decide(index, outcome)
            except BaseException as e:  # handed to the event loop's thread by check()
                self.error = e
                go_on = False
            with self._changed:
                if self.error is None:
                    self.decided = index + 1
                self.stopped = self.stopped or not go_on
                self._changed.notify_all()


def prompts_digest(prompts: list[str]) -> str:
    """A short fingerprint of a request's prompts: a saved answer is reused only for the very
    prompts it answered (settings or seeds changed between runs make other prompts)."""
    h = hashlib.blake2b(digest_size=12)
    for prompt in prompts:
        h.update(prompt.encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class SavedAnswer:
    digest: str
    outcome: Outcome


class AnswerLog:
    """The answer journal: `{"request_idx", "prompts", "completions" | "failed"}` lines as
    answers arrive, and `{"decided": i}` once request i's records are all written.

    Opening it reads what an earlier run left: the answers it never decided, and the requests
    whose decision a kill cut short (an answer without its "decided" line); then it rewrites
    the file with the undecided answers only, so that it never grows beyond one run's worth.
    """

    def __init__(self, path: Path, *, warn: Callable[[str], None]):
        self.path = path
        self.saved: dict[int, SavedAnswer] = {}
        decided: set[int] = set()
        for record in iter_jsonl(path, repair=True, warn=warn):
            if isinstance(record.get("decided"), int):
                decided.add(record["decided"])
            elif isinstance(record.get("request_idx"), int):
                self.saved[record["request_idx"]] = _saved(record)
        for index in decided:
            self.saved.pop(index, None)
        self._out: JsonlAppender | None = None
        self._warn = warn

    def unfinished(self, recorded: set[int]) -> set[int]:
        """Of the requests with records on disk, those whose decision was cut short."""
        return recorded & set(self.saved)

    def open(self, first_undecided: int) -> None:
        """Keep only the answers from `first_undecided` on, and start appending."""
        self.saved = {i: a for i, a in self.saved.items() if i >= first_undecided}
        write_jsonl_atomic(self.path, (_record(i, a) for i, a in sorted(self.saved.items())))
        self._out = JsonlAppender(self.path, warn=self._warn)

    def take(self, index: int, prompts: list[str]) -> Outcome | None:
        """The saved outcome of request `index` if it answered these prompts."""
        saved = self.saved.pop(index, None)
        if saved is None or saved.digest != prompts_digest(prompts):
            return None
        return saved.outcome

    def arrived(self, index: int, prompts: list[str], outcome: Outcome) -> None:
        assert self._out is not None
        self._out.write(_record(index, SavedAnswer(prompts_digest(prompts), outcome)))

    def decided(self, index: int) -> None:
        assert self._out is not None
        self._out.write({"decided": index})

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _record(index: int, answer: SavedAnswer) -> dict[str, Any]:
    record: dict[str, Any] = {"request_idx": index, "prompts": answer.digest}
    if isinstance(answer.outcome, str):
        record["failed"] = answer.outcome
    else:
        record["completions"] = [
            [c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens] for c in answer.outcome
        ]
    return record


def _saved(record: dict[str, Any]) -> SavedAnswer:
    digest = str(record.get("prompts"))
    if isinstance(record.get("failed"), str):
        return SavedAnswer(digest, record["failed"])
    completions = [Completion(*c) for c in record.get("completions") or []]
    return SavedAnswer(digest, completions)
