"""Crash-safe JSONL: append whole lines, read back, and repair a line torn by a crash.

Each record is written with a single `os.write` of its complete line, so a process killed at any
moment leaves at most one partial line, at the end of the file. Readers detect that line (it has
no final newline), report it, and with `repair=True` cut it off so later appends start clean.
Anything malformed before the last line is not a crash artefact: it is reported as an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfinstruct.errors import DataFileError

Warn = Callable[[str], None]


@dataclass(frozen=True)
class TornLine:
    path: str
    offset: int
    length: int

    def describe(self) -> str:
        return (
            f"{self.path}: dropped a torn last line ({self.length} bytes at offset {self.offset}),"
            " left by an interrupted write"
        )


def iter_jsonl(
    path: str | Path, *, repair: bool = False, warn: Warn | None = None
) -> Iterator[dict[str, Any]]:
    """Yield each JSON object of a JSONL file in order.

    A last line without its newline is a torn write: it is skipped (and cut from the file when
    `repair` is true), and `warn` is told. A malformed complete line raises DataFileError.
    """
    for number, line in iter_jsonl_lines(path, repair=repair, warn=warn):
        yield parse_jsonl_line(path, number, line)


def iter_jsonl_lines(
    path: str | Path, *, repair: bool = False, warn: Warn | None = None
) -> Iterator[tuple[int, bytes]]:
    """``iter_jsonl``'s lines unparsed, stripped, with their line numbers (blank lines and a
    torn last line left out), for a reader that needs only part of each."""
    path = Path(path)
    if not path.exists():
        return
    torn = find_torn_line(path)
    if torn is not None:
        if warn is not None:
            warn(torn.describe())
        if repair:
            with open(path, "r+b") as f:
                f.truncate(torn.offset)
    limit = torn.offset if torn is not None else None
    with open(path, "rb") as f:
        consumed = 0
        for number, raw in enumerate(f, start=1):
            if limit is not None and consumed >= limit:
                break
            consumed += len(raw)
            line = raw.strip()
            if line:
                yield number, line


def parse_jsonl_line(path: str | Path, number: int, line: bytes) -> dict[str, Any]:
    """One line of a JSONL file as its JSON object; DataFileError naming the line if not."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFileError(f"{path}:{number}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise DataFileError(f"{path}:{number}: expected a JSON object")
    return obj


def read_jsonl(
    path: str | Path, *, repair: bool = False, warn: Warn | None = None
) -> list[dict[str, Any]]:
    return list(iter_jsonl(path, repair=repair, warn=warn))


def find_torn_line(path: str | Path) -> TornLine | None:
    """The trailing bytes after the last newline, if any: what a killed writer leaves."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        # Walk back in blocks to the previous newline.
        block = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            k = chunk.rfind(b"\n")
            if k >= 0:
                offset = start + k + 1
                return TornLine(str(path), offset, size - offset)
            end = start
        return TornLine(str(path), 0, size)


def dumps_line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


class JsonlAppender:
    """Append records to a JSONL file, one complete line per `os.write`, visible at once.

    Opening repairs a torn last line first, so the next record never glues onto a fragment.
    """

    def __init__(self, path: str | Path, *, warn: Warn | None = None, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            torn = find_torn_line(self.path)
            if torn is not None:
                if warn is not None:
                    warn(torn.describe())
                with open(self.path, "r+b") as f:
                    f.truncate(torn.offset)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fsync = fsync
        self.written = 0

    def write(self, record: dict[str, Any]) -> None:
        data = dumps_line(record)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self._fsync:
            os.fsync(self._fd)
        self.written += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Replace a whole file at once: readers see the old or the new version, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    lines = [dumps_line(r) for r in records]
    write_atomic(path, b"".join(lines))
    return len(lines)
