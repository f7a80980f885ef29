"""Several endpoints, one run: real loopback servers of different speeds behind one `--base-url`
list. Each test checks what the run wrote (files, run.json's per-endpoint counts) against what
the servers logged."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from selfinstruct.errors import ModelUnreachable, TransientModelError
from selfinstruct.io import read_jsonl
from selfinstruct.models import base_urls, load_model
from selfinstruct.models.base import Completion, Model, ModelInfo, Sampling
from selfinstruct.models.fleet import FleetModel
from selfinstruct.runfolder import RunFolder

pytest.importorskip("aiohttp")

try:
    from tests.conftest import free_port
    from tests.servers.openai_fault_server import start_fault_server
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from conftest import free_port
    from servers.openai_fault_server import start_fault_server

GENERATION = ("/v1/completions", "/v1/chat/completions")
MODEL = "openai:fault-server-model?api=completions"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from selfinstruct.cli import main; main()", *args]


def answered(server) -> list[dict]:
    return [e for e in server.read_log() if e["endpoint"] in GENERATION and e["status"] == 200]


def members_of(run: dict) -> dict[str, dict]:
    """Each endpoint's counts summed over the steps of run.json."""
    total: dict[str, Counter] = {}
    for step in run["steps"].values():
        for label, m in step.get("members", {}).items():
            c = total.setdefault(label, Counter())
            for key, value in m.items():
                if key == "failures":
                    c.update({f"failed:{k}": v for k, v in value.items()})
                else:
                    c[key] += value
    return total


def test_three_endpoints_one_killed_another_started_on_a_spare_port(tmp_path: Path) -> None:
    """All three used, the fast one most; one killed mid-run and a server started on a port of
    the list that was dead at the start: the run finishes, nothing lost or duplicated, and
    run.json's counts say what happened."""
    logs = {name: tmp_path / f"{name}.jsonl" for name in ("fast", "medium", "slow", "spare")}
    fast = start_fault_server(latency=0.05, log_path=logs["fast"], seed=1)
    medium = start_fault_server(latency=0.15, log_path=logs["medium"], seed=1)
    slow = start_fault_server(latency=0.4, log_path=logs["slow"], seed=1)
    spare_port = free_port()
    spare_url = f"http://127.0.0.1:{spare_port}/v1"
    servers = [fast, medium, slow]
    out = tmp_path / "run"
    try:
        args = ["run", "--out", str(out), "--model", MODEL, "--num-instructions", "300"]
        for url in (fast.base_url, medium.base_url, slow.base_url, spare_url):
            args += ["--base-url", url]
        args += ["--concurrency", "4", "--request-batch-size", "1", "--seed", "3", "-q"]
        args += ["--no-decontaminate"]
        proc = subprocess.Popen(cli(*args), stderr=subprocess.PIPE, text=True)

        def kill_and_restart() -> None:
            while len(answered(medium)) < 8 and proc.poll() is None:
                time.sleep(0.02)
            medium.kill()
            servers.append(start_fault_server(port=spare_port, log_path=logs["spare"], seed=1))

        changer = threading.Thread(target=kill_and_restart)
        changer.start()
        _, err = proc.communicate(timeout=240)
        changer.join()
        assert proc.returncode == 0, err
    finally:
        for s in servers:
            s.stop()

    folder = RunFolder(out)
    instructions = [r["instruction"] for r in read_jsonl(folder.instructions)]
    assert len(instructions) == 300 and len(set(instructions)) == 300
    served = {t for s in (fast, medium, slow) for e in s.read_log() for t in e["texts"]}
    served |= {t for e in servers[-1].read_log() for t in e["texts"]}
    assert all(any(i in t for t in served) for i in instructions)  # nothing made up
    labels = [
        json.loads(line) for line in folder.find_classification_file().read_text().splitlines()
    ]
    assert sorted(r["instruction"] for r in labels) == sorted(instructions)
    instances = list(read_jsonl(folder.instances))
    assert sorted(r["instruction"] for r in instances) == sorted(instructions)

    run = json.loads(folder.run_file.read_text())
    members = members_of(run)
    label = {name: s.base_url for name, s in zip(("fast", "medium", "slow"), servers, strict=False)}
    label["spare"] = spare_url
    assert set(members) == set(label.values())
    fast_m, medium_m, slow_m, spare_m = (
        members[label[k]] for k in ("fast", "medium", "slow", "spare")
    )
    for m in members.values():
        assert m["succeeded"] > 0  # all used, the restarted one too
    assert fast_m["succeeded"] > medium_m["succeeded"] and fast_m["succeeded"] > slow_m["succeeded"]
    assert fast_m["succeeded"] > slow_m["succeeded"]
    # The killed one failed (refused or cut connections) and went out of rotation for good.
    assert medium_m["failed:connection"] >= 1 and medium_m["taken_out_of_rotation"] >= 1
    # The spare was out from the start until it answered a probe.
    assert spare_m["taken_out_of_rotation"] >= 1 and spare_m["seconds_out_of_rotation"] > 0
    assert spare_m["probes"] >= 1
    # The survivors' logs agree with run.json to the request.
    assert fast_m["succeeded"] == len(answered(fast))
    assert spare_m["succeeded"] == len(answered(servers[-1]))
    # Every request the engine counted went to an endpoint, or waited for one, once.
    for step in ("instructions", "classify", "instances"):
        s = run["steps"][step]
        sent = sum(m["requests"] for m in s["members"].values())
        waited = s["engine"]["retries"].get("no_member_available", 0) + s["engine"]["failures"].get(
            "no_member_available", 0
        )
        assert s["engine"]["requests"] == sent + waited
        assert sum(m["succeeded"] for m in s["members"].values()) == s["usage"]["requests"]
    tokens = sum(m["completion_tokens"] for m in members.values())
    assert tokens == run["usage"]["completion_tokens"]


def test_a_refused_key_on_one_endpoint_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    good = start_fault_server(log_path=tmp_path / "good.jsonl")
    strict = start_fault_server(api_key="the-right-key")
    try:
        result = subprocess.run(
            cli(
                "generate-instructions", "--out", str(tmp_path / "run"), "--model", MODEL,
                "--base-url", f"{good.base_url},{strict.base_url}", "--api-key", "sk-wrong-key",
                "--num-instructions", "40", "--request-batch-size", "1", "--concurrency", "4",
                "-q",
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    finally:
        good.stop()
        strict.stop()
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and strict.base_url in lines[0] and "API key" in lines[0]
    assert "sk-wrong-key" not in result.stderr
    kept = RunFolder(tmp_path / "run").instructions.read_text().splitlines()
    assert len(kept) < 40  # stopped at once; what was accepted before stays


def test_openai_base_url_may_list_servers_and_the_key_never_reaches_run_json(
    tmp_path: Path,
) -> None:
    a = start_fault_server(latency=0.05, log_path=tmp_path / "a.jsonl")
    b = start_fault_server(latency=0.05, log_path=tmp_path / "b.jsonl")
    try:
        result = subprocess.run(
            cli("generate-instructions", "--out", str(tmp_path / "run"), "--model", MODEL,
                "--num-instructions", "40", "--concurrency", "4", "-q"),
            capture_output=True,
            text=True,
            timeout=120,
            env={
                **os.environ,
                "OPENAI_BASE_URL": f"{a.base_url}, {b.base_url}",
                "OPENAI_API_KEY": "sk-hunter2-secret",
            },
        )  # fmt: skip
    finally:
        a.stop()
        b.stop()
    assert result.returncode == 0, result.stderr
    run_text = (tmp_path / "run" / "run.json").read_text()
    assert "hunter2" not in run_text
    members = members_of(json.loads(run_text))
    assert set(members) == {a.base_url, b.base_url}
    assert members[a.base_url]["succeeded"] == len(answered(a)) > 0
    assert members[b.base_url]["succeeded"] == len(answered(b)) > 0


def test_base_urls_are_split_on_commas_and_deduplicated(monkeypatch) -> None:
    assert base_urls(["http://a/v1, http://b/v1", "http://a/v1"]) == ["http://a/v1", "http://b/v1"]
    monkeypatch.setenv("OPENAI_BASE_URL", "http://x/v1,http://y/v1")
    assert base_urls(None) == ["http://x/v1", "http://y/v1"]
    model = load_model(MODEL, base_url=None)
    assert isinstance(model, FleetModel) and model.labels == ["http://x/v1", "http://y/v1"]
    monkeypatch.setenv("OPENAI_BASE_URL", "http://x/v1")
    assert not isinstance(load_model(MODEL), FleetModel)


class _Flaky(Model):
    """A member the test switches between answering and failing (the router's logic alone)."""

    def __init__(self, name: str):
        self.name = name
        self.down = False
        self.calls = 0

    @property
    def info(self) -> ModelInfo:
        return ModelInfo("scripted", self.name, "completions")

    async def check(self) -> None:
        if self.down:
            raise ModelUnreachable(f"{self.name}: down")

    async def complete(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        self.calls += 1
        await asyncio.sleep(0.001)
        if self.down:
            raise TransientModelError(f"{self.name}: 503", reason="503")
        return [Completion(p, "stop", 1, 1) for p in prompts]


def test_a_member_that_keeps_failing_goes_out_and_comes_back_after_a_probe() -> None:
    a, b = _Flaky("a"), _Flaky("b")
    fleet = FleetModel([a, b], ["a", "b"], probe_base=0.05, probe_max=0.2)

    async def scenario() -> dict:
        b.down = True
        errors = 0
        for _ in range(60):  # about 0.7 s: b rests after each failure, then is out for good
            try:
                await fleet.complete(["x"], Sampling())
            except TransientModelError:
                errors += 1
            await asyncio.sleep(0.01)
        # Three failures in a row put b out: probes (not requests) ask after it from then on.
        assert b.calls == 3 and errors == 3 and a.calls == 57
        b.down = False
        deadline = time.monotonic() + 2
        while b.calls == 3 and time.monotonic() < deadline:
            await fleet.complete(["x"], Sampling())
            await asyncio.sleep(0.02)
        assert b.calls > 3  # back in rotation after a probe answered
        return fleet.take_member_stats()

    stats = asyncio.run(scenario())
    assert stats["b"]["failures"] == {"503": 3} and stats["b"]["taken_out_of_rotation"] == 1
    assert stats["b"]["probes"] >= 2 and stats["b"]["seconds_out_of_rotation"] > 0.1
    assert stats["a"]["failures"] == {} and stats["a"]["succeeded"] == a.calls


def test_a_single_failure_rests_the_member_so_the_retry_goes_elsewhere() -> None:
    a, b = _Flaky("a"), _Flaky("b")
    fleet = FleetModel([a, b], ["a", "b"], probe_base=5.0)

    async def scenario() -> None:
        a.down = True
        with pytest.raises(TransientModelError):
            await fleet.complete(["x"], Sampling())  # goes to a (first of two idle members)
        a.down = False
        await fleet.complete(["x"], Sampling())  # the retry: a rests, so b answers
        assert (a.calls, b.calls) == (1, 1)

    asyncio.run(scenario())
