"""What a run folder remembers of the Batch API: every file uploaded and batch created (one
line of `batches.jsonl` each, written the moment the id exists), and every finished batch's
downloaded output and error files. From these a rerun knows which answers are paid for, which
batches are still running, and which lines failed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from selfinstruct.io import JsonlAppender, iter_jsonl, write_atomic
from selfinstruct.runfolder import RunFolder


def digest(url: str, body: dict[str, Any]) -> str:
    """A request's identity: the same endpoint and body get the same answer from the batch."""
    text = json.dumps({"url": url, "body": body}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class StoredBatch:
    """One uploaded file and the batch made of it (once created)."""

    file_id: str
    step: str
    lines: dict[str, str]  # custom_id -> request digest
    batch_id: str | None = None
    status: str | None = None  # the terminal status, once its files are downloaded


@dataclass
class LineResult:
    """One line of a finished batch: an answer body, or an error code."""

    body: dict[str, Any] | None = None
    code: str | None = None  # None when answered
    status: int | None = None  # the line's HTTP status, where it had a response


@dataclass
class BatchLog:
    """The run folder's `batches.jsonl`, read once and appended to."""

    folder: RunFolder
    batches: dict[str, StoredBatch] = field(default_factory=dict)  # by file id
    # every line ever uploaded, by its request's digest, oldest first
    _by_digest: dict[str, list[tuple[StoredBatch, str]]] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: RunFolder, warn: Any = None) -> BatchLog:
        log = cls(folder)
        for record in iter_jsonl(folder.batches, repair=True, warn=warn):
            log._apply(record)
        return log

    def _apply(self, record: dict[str, Any]) -> None:
        event, file_id = record.get("event"), record.get("file_id")
        if event == "uploaded":
            batch = StoredBatch(file_id, record["step"], dict(record["lines"]))
            self.batches[file_id] = batch
            for custom_id, line_digest in batch.lines.items():
                self._by_digest.setdefault(line_digest, []).append((batch, custom_id))
        elif file_id in self.batches and event == "created":
            self.batches[file_id].batch_id = record["batch_id"]
        elif file_id in self.batches and event == "finished":
            self.batches[file_id].status = record["status"]

    def _append(self, record: dict[str, Any]) -> None:
        record["time"] = datetime.now(UTC).isoformat(timespec="seconds")
        with JsonlAppender(self.folder.batches, fsync=True) as out:
            out.write(record)
        self._apply(record)

    def uploaded(self, file_id: str, step: str, lines: dict[str, str]) -> StoredBatch:
        self._append({"event": "uploaded", "file_id": file_id, "step": step, "lines": lines})
        return self.batches[file_id]

    def created(self, file_id: str, batch_id: str) -> None:
        self._append({"event": "created", "file_id": file_id, "batch_id": batch_id})

    def finished(
        self, batch: StoredBatch, status: str, output: bytes | None, errors: bytes | None
    ) -> None:
        """Keep the downloaded files, then say the batch is done (in that order, so a line
        saying "finished" always has its files beside it)."""
        assert batch.batch_id is not None
        for kind, data in (("output", output), ("error", errors)):
            if data is not None:
                if data and not data.endswith(b"\n"):
                    data += b"\n"  # a last line without one would read as torn
                write_atomic(self.folder.batch_output(batch.batch_id, kind), data)
        self._append(
            {
                "event": "finished",
                "file_id": batch.file_id,
                "batch_id": batch.batch_id,
                "status": status,
            }
        )

    def results(self, batch: StoredBatch) -> dict[str, LineResult]:
        """A finished batch's lines by custom_id (lines in neither file are absent)."""
        assert batch.batch_id is not None and batch.status is not None
        out: dict[str, LineResult] = {}
        for kind in ("error", "output"):  # an answer wins over an error for the same line
            path = self.folder.batch_output(batch.batch_id, kind)
            if path.exists():
                for line in iter_jsonl(path, repair=True):
                    if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                        out[line["custom_id"]] = read_line(line)
        return out

    def lines_of(self, line_digest: str) -> list[tuple[StoredBatch, str]]:
        """(batch, custom_id) of every line ever uploaded with this request, oldest first."""
        return self._by_digest.get(line_digest, [])


def read_line(line: dict[str, Any]) -> LineResult:
    """An output or error file line as OpenAI documents it: `response` (status_code, body) and
    `error` (code, message)."""
    response = line.get("response") if isinstance(line.get("response"), dict) else None
    error = line.get("error") if isinstance(line.get("error"), dict) else None
    status = response.get("status_code") if response else None
    body = response.get("body") if response else None
    if error is None and status == 200 and isinstance(body, dict):
        return LineResult(body=body, status=200)
    code = error.get("code") if error else None
    if code is None and isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code") or (str(status) if status else None)
    return LineResult(code=str(code or status or "unknown"), status=status)
