"""A person's review of step 4's examples, on a local web page.

`make_server(run, ...)` serves a page on 127.0.0.1 that shows a seeded random sample of the run's
examples (`RunFolder.read_examples()`). For each example the reviewer gives the paper's
four-level rating (A-D) and answers its three quality questions (valid instruction? fitting
input? correct output?). Every click is saved before the server answers: one JSONL line in
`RunFolder.reviews_file` carrying the whole state of that example, appended with a single
`os.write` under a lock. The last line per key is the current state, so `RunFolder.reviews()`
(which the report and the judge calibration read too) returns each example's latest answers.

The page binds to loopback only, checks the Host header of every request, and takes answers
only as `application/json` from its own origin, so neither another machine nor another web site
open in the same browser can read or change the reviews.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError, DataFileError, RunLockedError
from selfinstruct.io import JsonlAppender
from selfinstruct.judge.rubric import QUESTION_TEXT, QUESTIONS, RATING_GUIDE, RATING_ORDER
from selfinstruct.records import Example, Rating
from selfinstruct.runfolder import RunFolder

Warn = Callable[[str], None]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_SAMPLE = 50
DEFAULT_SEED = 0
# The only address the page is served on; "localhost" is accepted as another name for it.
LOOPBACK_NAMES = ("127.0.0.1", "localhost")

ANSWER_FIELDS = ("rating", *QUESTIONS)
RECORD_FIELDS = ("key", "instruction", "input", "output", *ANSWER_FIELDS, "at")

MAX_BODY = 16 * 1024  # bytes in one POST: a click is a few dozen
_DRAIN_LIMIT = 1 << 20  # an oversized body up to this is read and dropped before the 413
_STATIC = {
    "/": ("review.html", "text/html; charset=utf-8"),
    "/index.html": ("review.html", "text/html; charset=utf-8"),
    "/review.js": ("review.js", "text/javascript; charset=utf-8"),
    "/review.css": ("review.css", "text/css; charset=utf-8"),
}
# Only the page's own files and its own API: no other origin, no inline script.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _ignore(_: str) -> None:
    pass


def is_reviewed(review: Rating | None) -> bool:
    """Whether an example has its rating and all three answers."""
    return (
        review is not None
        and review.rating is not None
        and all(v is not None for v in review.answers.values())
    )


@dataclass(frozen=True)
class SampleRow:
    """One example of the sample and its position in the examples file (first of its key)."""

    index: int
    example: Example

    @property
    def key(self) -> str:
        return self.example.key


def unique_rows(run: RunFolder, *, warn: Warn = _ignore) -> list[SampleRow]:
    """Step 4's examples once each (by key), in file order, with their positions."""
    rows: dict[str, SampleRow] = {}
    for index, example in enumerate(run.read_examples(warn=warn)):
        rows.setdefault(example.key, SampleRow(index, example))
    if not rows:
        raise DataFileError(f"{run.all_instances}: no examples to review (step 4 kept none)")
    return list(rows.values())


def sample_examples(
    examples: list[SampleRow], size: int = DEFAULT_SAMPLE, seed: int = DEFAULT_SEED
) -> list[SampleRow]:
    """`size` examples drawn with `random.Random(seed)`, shown in file order; all if fewer.

    The same examples and seed always give the same sample, so a restarted page shows the
    rows already reviewed.
    """
    if size < 1:
        raise ConfigError(f"`sample` {size}: must be at least 1")
    chosen = random.Random(seed).sample(range(len(examples)), min(size, len(examples)))
    return [examples[i] for i in sorted(chosen)]


class ReviewInputError(ValueError):
    """A POST body the server refuses; the message is sent back as a 400's JSON error."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ReviewSession:
    """The sample, the saved answers and the writer: everything the page's server does,
    without HTTP. Safe to call from several threads: writes are serialised by a lock."""

    def __init__(
        self,
        run: RunFolder | str | Path,
        sample: int = DEFAULT_SAMPLE,
        seed: int = DEFAULT_SEED,
        *,
        warn: Warn = _ignore,
    ):
        self.run = run if isinstance(run, RunFolder) else RunFolder(run)
        if not self.run.path.is_dir():
            raise ConfigError(f"{self.run.path}: no such run folder")
        self.seed = seed
        examples = unique_rows(self.run, warn=warn)
        self.total_examples = len(examples)
        self.rows = sample_examples(examples, sample, seed)
        self._by_key = {row.key: row for row in self.rows}
        self._lock = threading.Lock()
        self._hold = self._hold_reviews_file()
        try:
            self._reviews = self.run.reviews(repair=True, warn=warn)
            self._appender: JsonlAppender | None = JsonlAppender(self.run.reviews_file, fsync=True)
        except BaseException:
            os.close(self._hold)
            raise

    def _hold_reviews_file(self) -> int:
        """One review page per run: a second would merge clicks into stale answers. The lock
        (flock on reviews.jsonl) goes with the process, however it ends."""
        fd = os.open(self.run.reviews_file, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"{self.run.reviews_file}: another 'selfinstruct review' is serving this run;"
                " use its page, or stop it first"
            ) from None
        return fd

    def close(self) -> None:
        with self._lock:
            if self._appender is not None:
                self._appender.close()
                self._appender = None
                os.close(self._hold)

    def reviewed(self) -> int:
        """How many sampled examples have their rating and all three answers."""
        return sum(is_reviewed(self._reviews.get(row.key)) for row in self.rows)

    def state(self) -> dict[str, Any]:
        """What the page shows: the rubric, the questions, the sample with saved answers."""
        with self._lock:
            rows = []
            for row in self.rows:
                found = self._reviews.get(row.key)
                saved = found.record if found is not None else {}
                rows.append(
                    {
                        "key": row.key,
                        "index": row.index,
                        "instruction": row.example.instruction,
                        "input": row.example.input,
                        "output": row.example.output,
                        **{field: saved.get(field) for field in ANSWER_FIELDS},
                        "at": saved.get("at"),
                    }
                )
            return {
                "run": str(self.run.path),
                "seed": self.seed,
                "examples": self.total_examples,
                "sample": len(self.rows),
                "reviewed": self.reviewed(),
                "rubric": [{"rating": r, "text": RATING_GUIDE[r]} for r in RATING_ORDER],
                "questions": [{"field": f, "text": q} for f, q in QUESTION_TEXT.items()],
                "rows": rows,
            }

    def update(self, body: Any) -> dict[str, Any]:
        """Apply one click: {"key": ..., and any of rating / the three answers}.

        The fields not in the body keep their saved value; the whole state of the row is
        appended as one line before this returns. Raises ReviewInputError on a bad body.
        """
        changes = self._validate(body)
        with self._lock:
            if self._appender is None:
                raise ReviewInputError("the review server is stopping")
            row = self._by_key[body["key"]]
            found = self._reviews.get(row.key)
            saved = found.record if found is not None else {}
            record = {
                "key": row.key,
                "instruction": row.example.instruction,
                "input": row.example.input,
                "output": row.example.output,
                **{field: saved.get(field) for field in ANSWER_FIELDS},
            }
            record.update(changes)
            record["at"] = _now()
            self._appender.write(record)
            self._reviews[row.key] = Rating.from_dict(record)
            return {"review": record, "reviewed": self.reviewed(), "sample": len(self.rows)}

    def _validate(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ReviewInputError("expected a JSON object")
        unknown = sorted(set(body) - {"key", *ANSWER_FIELDS})
        if unknown:
            raise ReviewInputError(f"unknown field {unknown[0]!r}")
        key = body.get("key")
        if not isinstance(key, str) or key not in self._by_key:
            raise ReviewInputError(f"unknown key {key!r}: not an example of this sample")
        changes = {field: body[field] for field in ANSWER_FIELDS if field in body}
        if not changes:
            raise ReviewInputError("nothing to save: give a rating or an answer")
        rating = changes.get("rating")
        if "rating" in changes and rating is not None and rating not in RATING_ORDER:
            raise ReviewInputError(f"rating {rating!r}: expected one of A, B, C, D or null")
        for field in QUESTIONS:
            value = changes.get(field)
            if field in changes and value is not None and not isinstance(value, bool):
                raise ReviewInputError(f"{field} {value!r}: expected true, false or null")
        return changes


def check_host(host: str) -> str:
    """The address to bind: 127.0.0.1, whatever loopback name was given; else ConfigError."""
    if host not in LOOPBACK_NAMES:
        raise ConfigError(
            f"`host` {host!r}: the review page is served on 127.0.0.1 only"
            " (it has no login; reach it from elsewhere through an SSH tunnel)"
        )
    return DEFAULT_HOST


class ReviewServer(ThreadingHTTPServer):
    """The review page's HTTP server on 127.0.0.1; `url` is where to point a browser."""

    daemon_threads = True
    request_queue_size = 64  # a page reloaded mid-save opens a few connections at once

    def __init__(self, session: ReviewSession, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
        self.session = session
        address = check_host(host)
        try:
            super().__init__((address, port), _Handler)
        except OSError as e:
            session.close()
            if port and e.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"`port` {port}: already in use on {address}; choose another"
                    " (`port` 0 takes any free port)"
                ) from None
            raise ConfigError(f"cannot listen on {address}:{port}: {e.strerror or e}") from None
        self.port = self.server_address[1]
        self.allowed_hosts = {f"{name}:{self.port}" for name in LOOPBACK_NAMES}
        self.allowed_origins = {f"http://{h}" for h in self.allowed_hosts}

    @property
    def url(self) -> str:
        return f"http://{DEFAULT_HOST}:{self.port}/"

    def server_close(self) -> None:
        super().server_close()
        self.session.close()


def make_server(
    run: RunFolder | str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    sample: int = DEFAULT_SAMPLE,
    seed: int = DEFAULT_SEED,
    *,
    warn: Warn = _ignore,
) -> ReviewServer:
    """A review server for `run`, bound and ready: call `serve_forever()`, then `server_close()`.

    `port` 0 takes any free port (see `server.url`). A torn last line of reviews.jsonl is cut
    off and reported to `warn`. Raises ConfigError (bad host, port in use, no run folder) or
    DataFileError (no examples file, no examples, a malformed file).
    """
    check_host(host)
    return ReviewServer(ReviewSession(run, sample, seed, warn=warn), host, port)


def _static(name: str) -> bytes:
    return resources.files("selfinstruct.static").joinpath(name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "selfinstruct-review"

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one person's clicks: no access log on the terminal

    # --- answers --------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        # A DNS-rebinding page reaches 127.0.0.1 under its own host name: refuse it.
        if self.headers.get("Host", "") not in self.server.allowed_hosts:
            self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
            return False
        return True

    # --- routes ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        try:
            if not self._host_ok():
                return
            path = self.path.split("?", 1)[0]
            if path == "/api/state":
                self._json(HTTPStatus.OK, self.server.session.state())
            elif path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            elif path in _STATIC:
                name, content_type = _STATIC[path]
                self._send(HTTPStatus.OK, _static(name), content_type)
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        except Exception as e:  # never let one request take the page down
            self._fail(e)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        try:
            body = self._read_body()
            if body is None or not self._host_ok():
                return
            if self.path != "/api/review":
                self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {self.path}")
                return
            origin = self.headers.get("Origin")
            if origin is not None and origin not in self.server.allowed_origins:
                self._error(HTTPStatus.FORBIDDEN, f"requests from {origin} are not accepted")
                return
            # JSON only: a form or a text/plain post from another site cannot be sent as it.
            content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if content_type != "application/json":
                self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "expected application/json")
                return
            try:
                data = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                self._error(HTTPStatus.BAD_REQUEST, f"not valid JSON: {e}")
                return
            try:
                result = self.server.session.update(data)
            except ReviewInputError as e:
                self._error(HTTPStatus.BAD_REQUEST, str(e))
                return
            self._json(HTTPStatus.OK, result)
        except Exception as e:
            self._fail(e)

    def _read_body(self) -> bytes | None:
        """The request body, read whole before answering (an unread body would make closing
        the connection reset it under the answer); None once an error has been sent."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            return None
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            left = min(max(length, 0), _DRAIN_LIMIT)
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
            return None
        return self.rfile.read(length)

    def _fail(self, e: Exception) -> None:
        try:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")
        except OSError:
            pass  # the browser went away
