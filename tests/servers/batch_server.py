"""The fault server plus OpenAI's Batch API, for the Batch API mode's tests.

Besides everything `openai_fault_server` answers, it implements, as OpenAI documents them:

    POST /v1/files                      multipart upload (purpose "batch"): a file object
    GET  /v1/files/{id}                 the file object
    GET  /v1/files/{id}/content         the file's bytes
    POST /v1/batches                    {input_file_id, endpoint, completion_window, metadata}
    GET  /v1/batches                    the list, newest first (limit, after)
    GET  /v1/batches/{id}               the batch, with status and request_counts
    POST /v1/batches/{id}/cancel        cancelling, then cancelled

A batch goes validating -> in_progress -> finalizing -> completed, its lines answered by the
same content generator as the online endpoints (so with `--no-vary-repeats` an answer depends
only on its prompt, online or in a batch). Faults, all from seeded streams: batches that complete
late (`--validating-seconds`, `--line-seconds`, `--finalizing-seconds`), lines that fail
(`--line-fail-rate`, with `--line-fail-status`, written to the error file), batches that lose
their worker half-way (`--lose-worker N`: the first N batches stop and stay in_progress until
their window ends), batches that expire (`--expire-seconds`, the completion window: done
lines go to the output file, the rest to the error file as `batch_expired`) and batches refused
as a whole (`--fail-validation N`: status failed, with the validation errors).

    python -m tests.servers.batch_server --port 0 --no-vary-repeats --line-fail-rate 0.1
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from openai_fault_server import (  # noqa: E402
    FaultConfig,
    FaultServerApp,
    _error_body,
    _parser,
    config_from_args,
)


@dataclass(frozen=True)
class BatchConfig:
    validating_seconds: float = 0.05
    line_seconds: float = 0.0
    finalizing_seconds: float = 0.05
    #: share of lines answered with an error (in the error file); another try may succeed
    line_fail_rate: float = 0.0
    line_fail_status: int = 500
    #: the first N batches created stop half-way and stay in_progress until they expire
    lose_worker: int = 0
    #: the completion window, in seconds here (24 h at OpenAI)
    expire_seconds: float = 3600.0
    #: the first N batches created fail validation as a whole (status failed, with errors)
    fail_validation: int = 0


class BatchServerApp(FaultServerApp):
    def __init__(self, config: FaultConfig, batch: BatchConfig, log_path: Any = None) -> None:
        super().__init__(config, log_path)
        self.batch = batch
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._outputs: dict[str, dict[str, list[bytes]]] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self._line_rng = random.Random(f"lines:{config.seed}")
        r = self.app.router
        r.add_post("/v1/files", self._upload)
        r.add_get("/v1/files/{id}", self._file)
        r.add_get("/v1/files/{id}/content", self._content)
        r.add_post("/v1/batches", self._create)
        r.add_get("/v1/batches", self._list)
        r.add_get("/v1/batches/{id}", self._retrieve)
        r.add_post("/v1/batches/{id}/cancel", self._cancel)

    # -- files -----------------------------------------------------------------------------

    def _new_file(self, name: str, data: bytes, purpose: str) -> dict[str, Any]:
        file_id = f"file-{len(self.files) + 1:06d}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "status": "processed",
        }
        self.contents[file_id] = data
        return self.files[file_id]

    async def _upload(self, request: Any) -> Any:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "batch" or upload is None or not hasattr(upload, "file"):
            return self._json(_error_body(400, "a file and purpose 'batch' are required"), 400)
        data = upload.file.read()
        self._log(0, "/v1/files", 200, None, [])
        return self._json(self._new_file(upload.filename, data, "batch"))

    async def _file(self, request: Any) -> Any:
        found = self.files.get(request.match_info["id"])
        return self._json(found) if found else self._not_found("file")

    async def _content(self, request: Any) -> Any:
        data = self.contents.get(request.match_info["id"])
        if data is None:
            return self._not_found("file")
        return self._web.Response(body=data, content_type="application/octet-stream")

    # -- batches ---------------------------------------------------------------------------

    async def _create(self, request: Any) -> Any:
        body = await request.json()
        file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
        if file_id not in self.contents:
            return self._not_found("file")
        if endpoint not in ("/v1/completions", "/v1/chat/completions"):
            return self._json(_error_body(400, f"unsupported endpoint {endpoint}"), 400)
        if body.get("completion_window") != "24h":
            return self._json(_error_body(400, "completion_window must be 24h"), 400)
        batch_id = f"batch_{len(self.batches) + 1:06d}"
        now = int(time.time())
        lines = self.contents[file_id].splitlines()
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + int(self.batch.expire_seconds),
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata") or {},
        }
        self._outputs[batch_id] = {"output": [], "error": []}
        lose = len(self.batches) <= self.batch.lose_worker
        if len(self.batches) <= self.batch.fail_validation:
            lines = [b"not json"]  # what a malformed file would be refused for
        self._workers[batch_id] = asyncio.ensure_future(self._work(batch_id, lines, lose))
        self._workers[batch_id].deadline = time.monotonic() + self.batch.expire_seconds  # type: ignore[attr-defined]
        self._log(0, "/v1/batches", 200, "lose_worker" if lose else None, [batch_id])
        return self._json(self.batches[batch_id])

    async def _list(self, request: Any) -> Any:
        items = [self._check(b) for b in reversed(self.batches.values())]
        after = request.query.get("after")
        if after:
            ids = [b["id"] for b in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query.get("limit", 20))
        page = items[:limit]
        return self._json(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )

    async def _retrieve(self, request: Any) -> Any:
        batch = self.batches.get(request.match_info["id"])
        return self._json(self._check(batch)) if batch else self._not_found("batch")

    async def _cancel(self, request: Any) -> Any:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return self._not_found("batch")
        if batch["status"] in ("validating", "in_progress"):
            batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
            self._workers[batch["id"]].cancel()
            self._end(batch, "cancelled", "batch_cancelled")
        return self._json(batch)

    # -- the worker ------------------------------------------------------------------------

    async def _work(self, batch_id: str, lines: list[bytes], lose: bool) -> None:
        cfg, batch = self.batch, self.batches[batch_id]
        await asyncio.sleep(cfg.validating_seconds)
        parsed = []
        for number, raw in enumerate(lines, start=1):
            problem = self._invalid(raw, batch["endpoint"])
            if problem:
                batch["status"], batch["failed_at"] = "failed", int(time.time())
                batch["errors"] = {
                    "object": "list",
                    "data": [{"code": "invalid_request", "message": problem, "line": number}],
                }
                return
            parsed.append(json.loads(raw))
        batch["status"], batch["in_progress_at"] = "in_progress", int(time.time())
        for k, line in enumerate(parsed):
            if lose and k >= len(parsed) // 2:
                return  # the worker is gone; the batch stays in_progress until it expires
            if cfg.line_seconds:
                await asyncio.sleep(cfg.line_seconds)
            self._answer_line(batch, line)
        batch["status"], batch["finalizing_at"] = "finalizing", int(time.time())
        await asyncio.sleep(cfg.finalizing_seconds)
        self._end(batch, "completed", None)

    def _invalid(self, raw: bytes, endpoint: str) -> str | None:
        try:
            line = json.loads(raw)
        except ValueError:
            return "line is not JSON"
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            return "custom_id missing"
        if line.get("method") != "POST" or line.get("url") != endpoint:
            return f"method must be POST and url {endpoint}"
        if not isinstance(line.get("body"), dict):
            return "body missing"
        return None

    def _answer_line(self, batch: dict[str, Any], line: dict[str, Any]) -> None:
        out = self._outputs[batch["id"]]
        self._seq += 1
        request_id = f"req_{self._seq:012x}"
        record: dict[str, Any] = {
            "id": f"batch_req_{self._seq:08d}",
            "custom_id": line["custom_id"],
        }
        if self._line_rng.random() < self.batch.line_fail_rate:
            status = self.batch.line_fail_status
            record["response"] = {
                "status_code": status,
                "request_id": request_id,
                "body": _error_body(status),
            }
            record["error"] = None
            out["error"].append(_dump(record))
            batch["request_counts"]["failed"] += 1
            return
        body = dict(line["body"])
        if batch["endpoint"] == "/v1/completions" and isinstance(body.get("prompt"), str):
            body["prompt"] = [body["prompt"]]
        body["stop"] = (
            [body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop") or []
        )
        payload, texts = self._answer(body, batch["endpoint"], self._seq)
        self._log(self._seq, batch["endpoint"] + "#batch", 200, None, texts)
        record["response"] = {"status_code": 200, "request_id": request_id, "body": payload}
        record["error"] = None
        out["output"].append(_dump(record))
        batch["request_counts"]["completed"] += 1

    def _check(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch past its window expires when looked at."""
        worker = self._workers.get(batch["id"])
        if (
            batch["status"] in ("validating", "in_progress", "finalizing")
            and worker is not None
            and time.monotonic() > worker.deadline  # type: ignore[attr-defined]
        ):
            worker.cancel()
            self._end(batch, "expired", "batch_expired")
        return batch

    def _end(self, batch: dict[str, Any], status: str, missing_code: str | None) -> None:
        """Write the output and error files; lines never run get `missing_code`."""
        out = self._outputs[batch["id"]]
        if missing_code is not None:
            done = {json.loads(x)["custom_id"] for x in out["output"] + out["error"]}
            for raw in self.contents[batch["input_file_id"]].splitlines():
                custom_id = json.loads(raw)["custom_id"]
                if custom_id not in done:
                    message = f"not executed: {missing_code}"
                    out["error"].append(
                        _dump(
                            {
                                "id": f"batch_req_x{custom_id}",
                                "custom_id": custom_id,
                                "response": None,
                                "error": {"code": missing_code, "message": message},
                            }
                        )
                    )
        now = int(time.time())
        name = batch["id"]
        if out["output"]:
            batch["output_file_id"] = self._new_file(
                f"{name}_output.jsonl", b"".join(out["output"]), "batch_output"
            )["id"]
        if out["error"]:
            batch["error_file_id"] = self._new_file(
                f"{name}_error.jsonl", b"".join(out["error"]), "batch_output"
            )["id"]
        batch["status"], batch[f"{status}_at"] = status, now

    # -- helpers ---------------------------------------------------------------------------

    def _json(self, data: Any, status: int = 200) -> Any:
        return self._web.json_response(data, status=status)

    def _not_found(self, what: str) -> Any:
        return self._json(_error_body(404, f"No such {what}", "not_found"), 404)


def _dump(record: dict[str, Any]) -> bytes:
    return (json.dumps(record) + "\n").encode()


# --------------------------------------------------------------------------------------------
# process entry point and the test helper


async def serve(config: FaultConfig, batch: BatchConfig, host: str, port: int, log: Any) -> None:
    import os
    import signal

    from aiohttp import web

    server = BatchServerApp(config, batch, log)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    sys.stdout.write(f"LISTENING http://{host}:{runner.addresses[0][1]}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            if os.getppid() != parent:
                break
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    parser.prog = "python -m tests.servers.batch_server"
    for f in dataclasses.fields(BatchConfig):
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=type(f.default), default=f.default
        )
    ns = parser.parse_args(argv)
    batch = BatchConfig(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(BatchConfig)})
    asyncio.run(serve(config_from_args(ns), batch, ns.host, ns.port, ns.log_path))
    return 0


@dataclass
class BatchServer:
    process: subprocess.Popen
    base_url: str
    log_path: Path | None

    def read_log(self) -> list[dict]:
        if self.log_path is None or not self.log_path.exists():
            return []
        return [json.loads(x) for x in self.log_path.read_text().splitlines() if x.strip()]

    def batches(self) -> list[dict]:
        """Every batch the server has created, oldest first (the paid-for count)."""
        import urllib.request

        with urllib.request.urlopen(self.base_url + "/batches?limit=100000", timeout=10) as r:
            return list(reversed(json.load(r)["data"]))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()


@contextlib.contextmanager
def running_batch_server(log_path: Path | None = None, **options: Any) -> Iterator[BatchServer]:
    """`with running_batch_server(no_vary_repeats=True, line_fail_rate=0.1) as srv: ...`"""
    args = [sys.executable, str(Path(__file__).resolve()), "--port", "0"]
    if log_path is not None:
        args += ["--log", str(log_path)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    line = process.stdout.readline() if process.stdout else ""
    match = re.match(r"LISTENING (http://\S+)\s*$", line)
    if not match:
        process.kill()
        raise RuntimeError(f"batch server did not start: {line!r}")
    server = BatchServer(process, match.group(1) + "/v1", log_path)
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
