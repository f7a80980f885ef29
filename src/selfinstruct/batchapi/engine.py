"""`BatchEngine`: the engine's interface (`run(source, on_result, on_failure)`) over the
OpenAI Batch API, at half the price, answers within 24 hours.

It asks the source for requests until the source says WAIT or None, or a round is full; sends
them as one batch (several files where the documented limits, 50,000 lines or 200 MB a file,
require), polls until every batch is finished, downloads the output and error files, and calls
the handlers in custom_id order, which is the order the source gave the requests. A step that
builds its requests from what it has decided (step 1) thus runs in rounds: a round is what the
source gives before it must wait for answers.

Nothing is paid for twice. Every file and batch is written to the run folder the moment its id
exists; a request whose body was already sent in an earlier batch (a killed run, rerun) waits
for that batch, or is answered from its downloaded file, instead of being sent again. A line
that failed in a way another try may fix (expired, 429, 5xx, a lost worker, missing from both
files) is sent again in a new batch of only the missing lines, up to `max_submissions` times; a
line refused as a bad request is reported to the step as failed. Every failed line is counted
by its error code.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selfinstruct.batchapi.client import BatchClient, BatchState
from selfinstruct.batchapi.settings import BatchSettings
from selfinstruct.batchapi.store import BatchLog, LineResult, StoredBatch, digest
from selfinstruct.engine import (
    WAIT,
    EngineSettings,
    EngineStats,
    OnFailure,
    OnResult,
    Request,
    RequestFailed,
    Source,
    _supplier,
)
from selfinstruct.errors import ConfigError, ModelError, TransientModelError
from selfinstruct.models.base import Completion, Model, Usage
from selfinstruct.models.openai import OpenAIModel
from selfinstruct.progress import Reporter
from selfinstruct.runfolder import RunFolder

#: line errors that another try cannot fix: the request itself is refused
FATAL_STATUS = frozenset({400, 401, 403, 404, 413, 422})


@dataclass
class BatchStats:
    """What the Batch API did for one step in one invocation (run.json's `batch`)."""

    batches_created: int = 0
    batch_ids: list[str] = field(default_factory=list)
    lines_submitted: int = 0
    lines_resubmitted: int = 0
    lines_reused: int = 0  # answered by a batch paid for earlier (a resumed run)
    rounds: int = 0
    failed_lines: Counter = field(default_factory=Counter)  # every failed line, by error code
    statuses: Counter = field(default_factory=Counter)  # batches by final status

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches_created": self.batches_created,
            "batch_ids": list(self.batch_ids),
            "lines_submitted": self.lines_submitted,
            "lines_resubmitted": self.lines_resubmitted,
            "lines_reused": self.lines_reused,
            "rounds": self.rounds,
            "failed_lines": dict(self.failed_lines),
            "statuses": dict(self.statuses),
        }


@dataclass
class BatchEngineStats(EngineStats):
    batch: BatchStats = field(default_factory=BatchStats)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "batch": self.batch.to_dict()}


@dataclass
class _Line:
    """One request of a round, and where its answer will come from."""

    custom_id: str
    request: Request
    body: dict[str, Any]
    digest: str
    outcome: list[Completion] | RequestFailed | None = None
    at: tuple[StoredBatch, str] | None = None  # the batch and custom_id it waits on
    sent: int = 0
    last_code: str = "missing"


class BatchEngine:
    """Drives a step's requests through the Batch API; same interface as `engine.Engine`."""

    def __init__(
        self,
        model: Model,
        settings: EngineSettings | None,
        folder: str | RunFolder,
        *,
        step: str,
        batch: BatchSettings | None = None,
        usage: Usage | None = None,
        reporter: Reporter | None = None,
    ):
        if not isinstance(model, OpenAIModel):
            raise ConfigError(
                f"batch_api: the Batch API needs an OpenAI-compatible model ('openai:MODEL'),"
                f" not {model.info.backend}"
            )
        self.model = model
        self.settings = settings or EngineSettings()
        self.batch = batch or BatchSettings()
        self.folder = RunFolder.of(folder)
        self.step = step
        self.usage = usage if usage is not None else Usage()
        self.reporter = reporter or Reporter(quiet=True)
        self.stats = BatchEngineStats()
        self.client = BatchClient(model)
        self._log: BatchLog | None = None
        self._claimed: set[tuple[str, str]] = set()  # (file id, custom_id) answers taken
        self._failed: set[tuple[str, str]] = set()  # lines known not to hold an answer
        self._results: dict[str, dict[str, LineResult]] = {}  # by file id
        self._seq = 0

    # --- the engine's interface ---------------------------------------------------------------

    async def run(
        self, source: Source, on_result: OnResult, on_failure: OnFailure | None = None
    ) -> EngineStats:
        """Rounds until the source is empty, a budget is reached or a fatal error."""
        self._log = BatchLog.read(self.folder, warn=self.reporter.warn)
        next_request = _supplier(source)
        while True:
            requests, exhausted = self._collect(next_request)
            if not requests:
                break
            self.stats.batch.rounds += 1
            lines = [self._line(r) for r in requests]
            await self._answer(lines)
            self._deliver(lines, on_result, on_failure)
            if exhausted or self.stats.budget_stop:
                break
            if self._budget_reached():
                self.stats.budget_stop = self._budget_reached()
                break
        return self.stats

    def _collect(self, next_request: Callable[[], Any]) -> tuple[list[Request], bool]:
        """A round: requests until the source waits or ends, a budget or a round is full."""
        requests: list[Request] = []
        while len(requests) < self.batch.max_lines:
            stop = self._budget_reached(len(requests))
            if stop is not None:
                self.stats.budget_stop = stop
                return requests, True
            request = next_request()
            if request is None:
                return requests, True
            if request is WAIT:
                return requests, False
            requests.append(request)
        return requests, False

    def _budget_reached(self, planned: int = 0) -> str | None:
        s = self.settings
        if s.max_requests is not None and self.stats.requests + planned >= s.max_requests:
            return "max_requests"
        if s.max_tokens_total is not None and self.usage.total_tokens >= s.max_tokens_total:
            return "max_tokens_total"
        return None

    def _line(self, request: Request) -> _Line:
        url, body = self.model.request_body(request.prompts, request.sampling)
        custom_id = f"{self.step}-{self._seq:09d}"
        self._seq += 1
        return _Line(custom_id, request, body, digest("/v1" + url, body))

    def _deliver(
        self, lines: list[_Line], on_result: OnResult, on_failure: OnFailure | None
    ) -> None:
        for line in sorted(lines, key=lambda x: x.custom_id):
            if isinstance(line.outcome, RequestFailed):
                self.stats.failed += 1
                self.stats.failures[line.outcome.reason] += 1
                if on_failure is not None:
                    on_failure(line.request, line.outcome)
            else:
                assert line.outcome is not None
                self.stats.succeeded += 1
                self.usage.add(line.outcome)
                on_result(line.request, line.outcome)

    # --- one round ------------------------------------------------------------------------

    async def _answer(self, lines: list[_Line]) -> None:
        """Every line answered or failed for good, sending only what is not paid for yet."""
        while pending := [x for x in lines if x.outcome is None]:
            for line in pending:
                if line.at is None:
                    line.at = self._claim(line.digest)
                    if line.at is not None:
                        self.stats.batch.lines_reused += 1
            await self._submit([x for x in pending if x.at is None])
            await self._finish({x.at[0].file_id: x.at[0] for x in pending if x.at is not None})
            for line in pending:
                if line.outcome is None and line.at is not None:
                    self._read(line)

    def _claim(self, line_digest: str) -> tuple[StoredBatch, str] | None:
        """A line of an earlier batch with the same request, not yet taken, not failed."""
        assert self._log is not None
        for batch, custom_id in self._log.lines_of(line_digest):
            key = (batch.file_id, custom_id)
            if key not in self._claimed and key not in self._failed:
                if batch.status is not None and custom_id not in self._results_of(batch):
                    continue
                self._claimed.add(key)
                return batch, custom_id
        return None

    async def _submit(self, lines: list[_Line]) -> None:
        """New batches for the lines, split at the file limits; failed for good past the
        number of tries."""
        todo = []
        for line in lines:
            if line.sent >= self.batch.max_submissions or self._budget_reached():
                reason = line.last_code if line.sent else "budget"
                error = TransientModelError(f"batch line {line.custom_id}: {reason}", reason=reason)
                line.outcome = RequestFailed(error, line.sent)
            else:
                todo.append(line)
        for chunk in self._files(todo):
            await self._send(chunk)

    def _files(self, lines: list[_Line]) -> list[list[tuple[_Line, bytes]]]:
        files: list[list[tuple[_Line, bytes]]] = []
        size = 0
        for line in lines:
            data = _jsonl(
                {
                    "custom_id": line.custom_id,
                    "method": "POST",
                    "url": self.client.endpoint,
                    "body": line.body,
                }
            )
            if len(data) > self.batch.max_bytes:
                raise ConfigError(f"{line.custom_id}: one request is larger than a batch file")
            if (
                not files
                or len(files[-1]) >= self.batch.max_lines
                or size + len(data) > (self.batch.max_bytes)
            ):
                files.append([])
                size = 0
            files[-1].append((line, data))
            size += len(data)
        return files

    async def _send(self, chunk: list[tuple[_Line, bytes]]) -> None:
        assert self._log is not None
        name = f"selfinstruct-{self.step}-{int(time.time())}-{chunk[0][0].custom_id}.jsonl"
        file_id = await self.client.upload(name, b"".join(data for _, data in chunk))
        # Written before the batch exists: a crash in between leaves a file the next run finds
        # the batch of (or creates it), never a second batch of the same lines.
        stored = self._log.uploaded(file_id, self.step, {x.custom_id: x.digest for x, _ in chunk})
        await self._create(stored)
        for line, _ in chunk:
            if line.sent:
                self.stats.batch.lines_resubmitted += 1
                self.stats.retries[line.last_code] += 1
            line.sent += 1
            line.at = (stored, line.custom_id)
            self._claimed.add((file_id, line.custom_id))
        self.stats.requests += len(chunk)
        self.stats.batch.lines_submitted += len(chunk)

    async def _create(self, stored: StoredBatch) -> None:
        assert self._log is not None
        state = await self.client.create(
            stored.file_id, {"selfinstruct_step": self.step, "run": self.folder.path.name}
        )
        self._log.created(stored.file_id, state.id)
        self.stats.batch.batches_created += 1
        self.stats.batch.batch_ids.append(state.id)

    async def _finish(self, batches: dict[str, StoredBatch]) -> None:
        """Poll every unfinished batch until it ends, then keep its files."""
        assert self._log is not None
        running = [b for b in batches.values() if b.status is None]
        for stored in running:
            if stored.batch_id is None:  # uploaded, then the process died
                found = await self.client.find(stored.file_id)
                if found is None:
                    await self._create(stored)
                else:
                    self._log.created(stored.file_id, found.id)
        if not running:
            return
        total = sum(len(b.lines) for b in running)
        with self.reporter.bar(f"{self.step}: batch", total) as bar:
            shown = 0
            while running:
                states = [await self.client.retrieve(b.batch_id or "", b.file_id) for b in running]
                done = sum(s.completed + s.failed for s in states)
                done += sum(len(b.lines) for b in batches.values() if b.status is not None)
                bar.advance(max(0, min(done, total) - shown))
                shown = max(shown, min(done, total))
                bar.note(Counter(s.status for s in states))
                for stored, state in zip(list(running), states, strict=True):
                    if state.done:
                        await self._download(stored, state)
                        running.remove(stored)
                if running:
                    await asyncio.sleep(self.batch.poll_seconds)

    async def _download(self, stored: StoredBatch, state: BatchState) -> None:
        assert self._log is not None
        if state.status == "failed" and not (state.output_file_id or state.error_file_id):
            # Refused as a whole (validation): the same file would be refused again.
            self._log.finished(stored, state.status, None, None)
            raise ModelError(
                f"{self.model.base_url}: batch {state.id} failed: "
                + ("; ".join(state.errors) or "no reason given")
            )
        output = await self.client.download(state.output_file_id) if state.output_file_id else None
        errors = await self.client.download(state.error_file_id) if state.error_file_id else None
        self._log.finished(stored, state.status, output or b"", errors)
        self.stats.batch.statuses[state.status] += 1

    def _results_of(self, batch: StoredBatch) -> dict[str, LineResult]:
        assert self._log is not None
        if batch.file_id not in self._results:
            self._results[batch.file_id] = self._log.results(batch)
        return self._results[batch.file_id]

    def _read(self, line: _Line) -> None:
        """The line's answer from its finished batch; or why not, and it goes again."""
        assert line.at is not None
        batch, custom_id = line.at
        result = self._results_of(batch).get(custom_id, LineResult(code=_missing(batch)))
        if result.body is not None:
            try:
                line.outcome = self.model.read_body(result.body, len(line.request.prompts))
                return
            except TransientModelError as e:
                result = LineResult(code=e.reason)
        code = result.code or "unknown"
        self.stats.batch.failed_lines[code] += 1
        self._failed.add((batch.file_id, custom_id))
        line.at, line.last_code = None, code
        if result.status in FATAL_STATUS:
            error = TransientModelError(f"batch line {custom_id}: {code}", reason=code)
            line.outcome = RequestFailed(error, max(1, line.sent))


def _missing(batch: StoredBatch) -> str:
    """The code of a line in neither file: the batch's end says why."""
    return {"expired": "batch_expired", "cancelled": "batch_cancelled", "lost": "batch_lost"}.get(
        batch.status or "", "missing"
    )


def _jsonl(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
