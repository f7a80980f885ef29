"""The pipeline against a real OpenAI-compatible server that misbehaves on purpose.

The fault server (tests/servers/openai_fault_server.py) runs as its own process on loopback and
logs every answer it gives (status, injected fault, texts). Each test checks the pipeline's own
account (reports, run.json) against that log: every fault the server injected is a retry counted
under its reason, and nothing the pipeline kept was made up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from selfinstruct.engine import EngineSettings
from selfinstruct.io import read_jsonl
from selfinstruct.models.openai import OpenAIModel
from selfinstruct.runfolder import RunFolder
from selfinstruct.seeds import default as default_seeds
from selfinstruct.steps import StepContext
from selfinstruct.steps.classify import ClassifySettings, identify_classification
from selfinstruct.steps.instances import InstanceSettings, generate_instances
from selfinstruct.steps.instructions import InstructionSettings, generate_instructions
from selfinstruct.steps.prepare import PrepareSettings, prepare_finetuning

pytest.importorskip("aiohttp")

try:
    from tests.servers.openai_fault_server import running_fault_server
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from servers.openai_fault_server import running_fault_server

GENERATION = ("/v1/completions", "/v1/chat/completions")
# About 30 % of requests fail, in every way the server knows.
FAULTS = {
    "rate_429": 0.08,
    "retry_after": 0.2,
    "rate_500": 0.05,
    "rate_503": 0.06,
    "rate_malformed": 0.05,
    "rate_empty_choices": 0.04,
    "rate_hang": 0.03,
    "hang_seconds": 30.0,
}
FAST_RETRIES = {"max_attempts": 12, "backoff_base": 0.05, "backoff_max": 0.5}


def selfinstruct(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from selfinstruct.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def generation_log(server, expected: int | None = None, timeout: float = 5.0) -> list[dict]:
    """The server's log of generation requests; waits until `expected` entries are in (a
    request whose client timed out is logged when the server notices the disconnect)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = [e for e in server.read_log() if e["endpoint"] in GENERATION]
        if expected is None or len(entries) >= expected or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def failure_reason(entry: dict) -> str | None:
    """What the client should call a logged answer: None for a usable one, else the reason
    under which the engine counts its retry."""
    if entry["status"] == 499:  # the client gave up waiting (a hang past --timeout)
        return "timeout"
    if entry["status"] != 200:
        return str(entry["status"])
    if entry["fault"] in ("malformed", "empty_choices"):
        return entry["fault"]
    return None


def logged_blob(entries: list[dict]) -> str:
    return "\n".join(t for e in entries for t in e["texts"])


def check_instructions(out: Path, n: int, entries: list[dict]) -> list[str]:
    records = read_jsonl(RunFolder(out).instructions)
    texts = [r["instruction"] for r in records]
    assert len(texts) == n and len(set(texts)) == n
    blob = logged_blob(entries)
    for record in records:
        assert set(record) == {
            "instruction",
            "most_similar",
            "avg_similarity_score",
            "metadata",
            "request_idx",
            "candidate_idx",
        }
        # Kept only what the server really answered (never a fragment of a broken body).
        assert record["instruction"] in blob
        assert record["instruction"] in record["metadata"]["response"]["choices"][0]["text"]
    return texts


# -- (a) every step completes through ~30 % injected faults ----------------------------------


def test_all_steps_complete_through_injected_faults(tmp_path):
    log = tmp_path / "server.jsonl"
    out = tmp_path / "run"
    seeds = default_seeds()
    with running_fault_server(seed=11, latency=0.02, log_path=log, **FAULTS) as server:
        model = OpenAIModel("m", api="chat", base_url=server.base_url, api_key="k", timeout=1.0)
        ctx = StepContext(model=model, engine=EngineSettings(concurrency=8, **FAST_RETRIES))
        t0 = time.monotonic()
        reports = [
            generate_instructions(ctx, seeds, out, InstructionSettings(num_instructions=40)),
            identify_classification(ctx, out, ClassifySettings()),
            generate_instances(ctx, out, InstanceSettings(max_instances_to_generate=2)),
        ]
        elapsed = time.monotonic() - t0
        sent = sum(r.engine.requests for r in reports)
        entries = generation_log(server, expected=sent)
    prepared = prepare_finetuning(out, PrepareSettings(include_seed_tasks=False))

    assert all(r.complete for r in reports), [r.counts for r in reports]
    assert prepared.complete
    texts = check_instructions(out, 40, entries)
    labels = read_jsonl(next(out.glob("is_clf_or_not_*.jsonl")))
    assert sorted(r["instruction"] for r in labels) == sorted(texts)
    assert {r["is_classification"].strip() for r in labels} <= {"Yes", "No"}
    instances = read_jsonl(RunFolder(out).instances)
    assert sorted(r["instruction"] for r in instances) == sorted(texts)
    assert all(r["raw_instances"].strip() for r in instances)
    assert (out / "finetuning_data" / "alpaca_data.json").exists()

    # The engine's account matches the server's, fault by fault.
    assert len(entries) == sent
    injected = Counter(failure_reason(e) for e in entries)
    answered = injected.pop(None)
    retries = sum((r.engine.retries for r in reports), Counter())
    failures = sum((r.engine.failures for r in reports), Counter())
    assert failures == Counter()  # 12 attempts were always enough
    assert retries == injected
    assert set(retries) == {"429", "500", "503", "malformed", "empty_choices", "timeout"}
    assert sum(retries.values()) >= 0.2 * sent
    assert answered == sum(r.usage.requests for r in reports)
    assert elapsed < 60


def test_cli_run_through_a_few_faults_records_retries_in_run_json(tmp_path):
    log = tmp_path / "server.jsonl"
    out = tmp_path / "run"
    faults = {"rate_429": 0.06, "retry_after": 0.2, "rate_503": 0.06, "rate_malformed": 0.04}
    with running_fault_server(seed=5, latency=0.02, log_path=log, **faults) as server:
        result = selfinstruct(
            "run", "--out", str(out), "--model", "openai:m?api=completions",
            "--base-url", server.base_url, "--api-key", "sk-cli-key-0123456789",
            "--num-instructions", "30", "--max-instances", "2", "--concurrency", "8",
            "--timeout", "5", "--quiet",
        )  # fmt: skip
        entries = generation_log(server)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    texts = check_instructions(out, 30, entries)
    run = json.loads((out / "run.json").read_text())
    assert set(run["steps"]) == {"instructions", "classify", "instances", "prepare"}
    assert all(step["complete"] for step in run["steps"].values())
    steps = [run["steps"][s]["engine"] for s in ("instructions", "classify", "instances")]
    retries = sum((Counter(s["retries"]) for s in steps), Counter())
    injected = Counter(failure_reason(e) for e in entries)
    answered = injected.pop(None)
    assert retries == injected and retries and set(retries) <= {"429", "503", "malformed"}
    assert sum(s["requests"] for s in steps) == len(entries)
    assert run["usage"]["requests"] == answered
    # The completions API got the paper's list prompts: 5 to a step-1 request.
    step1 = [e for e in entries if e["status"] == 200 and e["fault"] is None]
    assert any(len(e["texts"]) == 5 for e in step1)
    assert len(read_jsonl(RunFolder(out).instances)) == len(texts)
    assert "sk-cli-key-0123456789" not in (out / "run.json").read_text()


# -- (b) a refused key stops at once -----------------------------------------------------------


def test_refused_key_stops_at_once_with_one_line(tmp_path):
    log = tmp_path / "server.jsonl"
    out = tmp_path / "run"
    wrong = "sk-wrong-key-9876543210"
    with running_fault_server(api_key="sk-right-key-0123456789", log_path=log) as server:
        t0 = time.monotonic()
        result = selfinstruct(
            "run", "--out", str(out), "--model", "openai:m", "--base-url", server.base_url,
            "--api-key", wrong, "--num-instructions", "50", "--concurrency", "4", "--quiet",
        )  # fmt: skip
        elapsed = time.monotonic() - t0
        entries = generation_log(server)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "refused the API key" in lines[0]
    assert "--api-key" in lines[0]
    assert wrong not in result.stderr + result.stdout
    assert "sk-right-key" not in result.stderr + result.stdout
    # At once: no retry of a 401, nothing beyond the first requests in flight.
    assert 1 <= len(entries) <= 4 and all(e["status"] == 401 for e in entries)
    assert elapsed < 30
    for path in out.rglob("*"):
        if path.is_file():
            assert wrong not in path.read_text(errors="replace")
    assert read_jsonl(RunFolder(out).instructions) == []


# -- (c) a budget stop leaves a folder that resumes --------------------------------------------


def test_budget_stop_leaves_a_resumable_folder(tmp_path):
    log = tmp_path / "server.jsonl"
    out = tmp_path / "run"
    with running_fault_server(seed=3, latency=0.02, log_path=log) as server:
        command = [
            "run", "--out", str(out), "--model", "openai:m", "--base-url", server.base_url,
            "--api-key", "k", "--num-instructions", "30", "--max-instances", "2",
            "--concurrency", "4", "--quiet",
        ]  # fmt: skip
        stopped = selfinstruct(*command, "--max-requests", "3")
        first_entries = generation_log(server)
        before = (RunFolder(out).instructions).read_bytes()
        resumed = selfinstruct(*command)
        entries = generation_log(server)

    assert stopped.returncode == 4, stopped.stderr
    assert "--max-requests budget" in stopped.stderr and "Traceback" not in stopped.stderr
    # The budget is a hard cap on requests sent, whatever the concurrency.
    assert len(first_entries) == 3
    kept_at_stop = [json.loads(line) for line in before.decode().splitlines()]
    assert 0 < len(kept_at_stop) <= 3 * 5

    assert resumed.returncode == 0, resumed.stderr
    after = (RunFolder(out).instructions).read_bytes()
    assert after.startswith(before)  # nothing kept before the stop was lost or rewritten
    texts = check_instructions(out, 30, entries)
    labels = read_jsonl(next(out.glob("is_clf_or_not_*.jsonl")))
    assert sorted(r["instruction"] for r in labels) == sorted(texts)
    instances = read_jsonl(RunFolder(out).instances)
    assert sorted(r["instruction"] for r in instances) == sorted(texts)
    run = json.loads((out / "run.json").read_text())
    step1 = run["steps"]["instructions"]
    assert step1["invocations"] == 2 and step1["complete"]
    assert step1["engine"]["last_budget_stop"] is None
    steps = ("instructions", "classify", "instances")
    assert sum(run["steps"][s]["engine"]["requests"] for s in steps) == len(entries)


# -- (d) both APIs, list prompts, and servers that refuse them --------------------------------


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_step_one_on_either_api(tmp_path, api):
    log = tmp_path / "server.jsonl"
    with running_fault_server(seed=2, latency=0.01, log_path=log) as server:
        model = OpenAIModel("m", api=api, base_url=server.base_url, api_key="k", timeout=5)
        ctx = StepContext(model=model, engine=EngineSettings(concurrency=4))
        settings = InstructionSettings(num_instructions=30, request_batch_size=5)
        report = generate_instructions(ctx, default_seeds(), tmp_path, settings)
        entries = generation_log(server)
    assert report.complete and report.engine.requests == len(entries)
    check_instructions(tmp_path, 30, entries)
    assert {e["endpoint"] for e in entries} == {
        f"/v1/{'chat/' if api == 'chat' else ''}completions"
    }
    sizes = {len(e["texts"]) for e in entries}
    assert sizes == ({5} if api == "completions" else {1})


class _NoListProxy:
    """A server in front of the fault server that refuses a list of prompts, as llama.cpp's and
    Ollama's do, and passes everything else through."""

    def __init__(self, upstream: str, status: int):
        self.upstream = upstream.rstrip("/")
        self.status = status
        self.refused = 0
        self.passed: list[int] = []  # prompts per passed completions request
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, method: str, body: bytes | None) -> None:
                request = urllib.request.Request(
                    proxy.upstream + self.path.removeprefix("/v1"),
                    data=body,
                    method=method,
                    headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        self._send(response.status, response.read())
                except urllib.error.HTTPError as e:
                    self._send(e.code, e.read())

            def do_GET(self):
                self._forward("GET", None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                prompt = json.loads(body).get("prompt")
                if isinstance(prompt, list) and len(prompt) > 1:
                    proxy.refused += 1
                    error = {"error": {"message": "prompt must be a string", "type": "invalid"}}
                    self._send(proxy.status, json.dumps(error).encode())
                    return
                if self.path.endswith("/completions") and "chat" not in self.path:
                    proxy.passed.append(1)
                self._forward("POST", body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> _NoListProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("status", [400, 422, 500])
def test_server_refusing_list_prompts_gets_one_prompt_per_request(tmp_path, status):
    with (
        running_fault_server(seed=4, latency=0.01) as server,
        _NoListProxy(server.base_url, status) as proxy,
    ):
        model = OpenAIModel("m", api="completions", base_url=proxy.base_url, api_key="k", timeout=5)
        assert model.max_batch > 1
        ctx = StepContext(model=model, engine=EngineSettings(concurrency=1))
        settings = InstructionSettings(num_instructions=40, request_batch_size=5)
        report = generate_instructions(ctx, default_seeds(), tmp_path, settings)
    assert report.complete and not report.engine.retries and not report.engine.failures
    assert model.max_batch == 1  # remembered: later requests never try a list again
    assert proxy.refused == 2  # the list is tried twice before prompts go one by one
    # The refused request's 5 prompts went one by one, and so did every later prompt.
    assert len(proxy.passed) == 5 * report.engine.requests
    texts = [r["instruction"] for r in read_jsonl(RunFolder(tmp_path).instructions)]
    assert len(texts) == 40 == len(set(texts))


def test_a_passing_server_error_does_not_turn_batching_off(tmp_path):
    log_path = tmp_path / "server.jsonl"
    with running_fault_server(
        seed=5, latency=0.01, fail_first=1, fail_status="500", log_path=log_path
    ) as server:
        model = OpenAIModel(
            "m", api="completions", base_url=server.base_url, api_key="k", timeout=5
        )
        ctx = StepContext(model=model, engine=EngineSettings(concurrency=1))
        settings = InstructionSettings(num_instructions=20, request_batch_size=5)
        report = generate_instructions(ctx, default_seeds(), tmp_path / "run", settings)
        log = server.read_log()
    assert report.complete
    assert model.max_batch > 1
    assert [r["status"] for r in log[:2]] == [500, 200]
    assert len(log[1]["texts"]) == 5  # the list went through on its second try
