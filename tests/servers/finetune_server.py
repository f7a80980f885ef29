"""A loopback stand-in for the OpenAI files and fine-tuning jobs API, for tests.

    POST /v1/files                    multipart: file, purpose ("fine-tune"); the file must be
                                      chat JSONL, or the answer is HTTP 400
    POST /v1/fine_tuning/jobs         JSON: model, training_file (an uploaded id), ...
    GET  /v1/fine_tuning/jobs/{id}    the job; it moves validating_files -> queued -> running
                                      over the polls, then to the scripted outcome
    GET  /v1/models                   a model list (some clients check the key with it)

Every request needs ``Authorization: Bearer <key>``. The server counts uploads, job creations
and polls, so a test can assert that a resumed run paid for exactly one job. Runs on 127.0.0.1
with port 0 (a free port) in a thread of its own; ``python finetune_server.py`` serves until
interrupted.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PROGRESSION = ("validating_files", "queued", "running")


@dataclass
class Job:
    id: str
    model: str
    training_file: str
    validation_file: str | None
    request: dict[str, Any]
    created_at: int
    polls: int = 0
    status: str = "validating_files"
    fine_tuned_model: str | None = None
    error: dict[str, Any] | None = None
    trained_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        hyper = (self.request.get("method") or {}).get("supervised", {}).get("hyperparameters")
        return {
            "object": "fine_tuning.job",
            "id": self.id,
            "model": self.model,
            "created_at": self.created_at,
            "finished_at": int(time.time()) if self.status in ("succeeded", "failed") else None,
            "fine_tuned_model": self.fine_tuned_model,
            "organization_id": "org-test",
            "result_files": [],
            "status": self.status,
            "validation_file": self.validation_file,
            "training_file": self.training_file,
            "hyperparameters": hyper or {"n_epochs": "auto"},
            "trained_tokens": self.trained_tokens,
            "error": self.error,
            "seed": self.request.get("seed", 0),
        }


@dataclass
class FinetuneServer:
    """Scripted behaviour: `outcome` ("succeeded" or "failed") after `polls_to_finish` polls;
    `hold` keeps every job running until a test clears it."""

    api_key: str = "test-key"
    outcome: str = "succeeded"
    polls_to_finish: int = 2
    failure_message: str = "Training file has too few examples."
    hold: bool = False
    uploads: int = 0
    creations: int = 0
    polls: int = 0
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FinetuneServer:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="finetune-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fine-tuning test server did not start")
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_post("/v1/fine_tuning/jobs", self._create)
        app.router.add_get("/v1/fine_tuning/jobs/{job_id}", self._retrieve)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FinetuneServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- handlers ------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    @staticmethod
    def _error(status: int, message: str, code: str = "invalid_request_error") -> web.Response:
        body = {"error": {"message": message, "type": code, "param": None, "code": None}}
        return web.json_response(body, status=status)

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "Incorrect API key provided.", "invalid_api_key")
        return web.json_response({"object": "list", "data": []})

    async def _upload(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "Incorrect API key provided.", "invalid_api_key")
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "fine-tune" or not isinstance(upload, web.FileField):
            return self._error(400, "expected a file with purpose 'fine-tune'")
        content = upload.file.read()
        try:
            lines = [json.loads(x) for x in content.decode("utf-8").splitlines() if x.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return self._error(400, f"the file is not JSONL: {e}")
        for k, line in enumerate(lines, start=1):
            roles = [m.get("role") for m in line.get("messages", [])]
            if not roles or roles[-1] != "assistant" or "user" not in roles:
                return self._error(400, f"line {k}: not a chat fine-tuning example")
        with self._lock:
            self.uploads += 1
            file_id = f"file-{self.uploads:04d}"
            self.files[file_id] = {"bytes": content, "lines": lines, "name": upload.filename}
        return web.json_response(
            {
                "object": "file",
                "id": file_id,
                "bytes": len(content),
                "created_at": int(time.time()),
                "filename": upload.filename,
                "purpose": "fine-tune",
                "status": "processed",
            }
        )

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "Incorrect API key provided.", "invalid_api_key")
        body = await request.json()
        for key in ("training_file", "validation_file"):
            if body.get(key) is not None and body[key] not in self.files:
                return self._error(400, f"{key} {body[key]!r} does not exist")
        if not body.get("model") or not body.get("training_file"):
            return self._error(400, "model and training_file are required")
        with self._lock:
            self.creations += 1
            job = Job(
                id=f"ftjob-{self.creations:04d}",
                model=body["model"],
                training_file=body["training_file"],
                validation_file=body.get("validation_file"),
                request=body,
                created_at=int(time.time()),
            )
            self.jobs[job.id] = job
        return web.json_response(job.to_dict())

    async def _retrieve(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "Incorrect API key provided.", "invalid_api_key")
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return self._error(404, "No such fine-tuning job", "not_found")
        with self._lock:
            self.polls += 1
            job.polls += 1
            if job.status in PROGRESSION:
                if self.hold or job.polls < self.polls_to_finish:
                    job.status = PROGRESSION[min(job.polls, len(PROGRESSION) - 1)]
                elif self.outcome == "succeeded":
                    job.status = "succeeded"
                    suffix = job.request.get("suffix") or "selfinstruct"
                    job.fine_tuned_model = f"ft:{job.model}:org-test:{suffix}:{job.id[-4:]}"
                    n = len(self.files[job.training_file]["lines"])
                    job.trained_tokens = 40 * n
                else:
                    job.status = "failed"
                    job.error = {
                        "code": "invalid_training_file",
                        "message": self.failure_message,
                        "param": "training_file",
                    }
        return web.json_response(job.to_dict())


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outcome", choices=["succeeded", "failed"], default="succeeded")
    parser.add_argument("--polls", type=int, default=2, help="polls before the outcome")
    args = parser.parse_args()
    server = FinetuneServer(outcome=args.outcome, polls_to_finish=args.polls).start()
    print(f"serving on {server.base_url} (key: {server.api_key}); Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
