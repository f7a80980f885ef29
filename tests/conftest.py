"""Shared fixtures: the public scripted model for parsing and filtering tests, the real
embedded model, and a real llama.cpp OpenAI-compatible server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfinstruct.models.scripted import ScriptedModel

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PAPER_DATA = SHARED_DATA / "self-instruct"


def paper_data(name: str) -> Path:
    """A file of the original release beside the project, or skip the test."""
    path = PAPER_DATA / name
    if not path.exists():
        pytest.skip(f"{path} absent: the original release's data lies beside the project only")
    return path


@pytest.fixture
def scripted() -> type[ScriptedModel]:
    return ScriptedModel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """`python -m llama_cpp.server` on the embedded model, on loopback; yields its /v1 URL."""
    from selfinstruct.models.llamacpp import default_model_path

    port = free_port()
    log = (
        open(ROOT / ".pytest_cache" / "llama_server.log", "w")
        if (ROOT / ".pytest_cache").is_dir()
        else subprocess.DEVNULL
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(default_model_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
            "--model_alias",
            "smollm2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("llama_cpp.server did not start in 120 s") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr or "")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line saying how many tests skipped because the release's data is not beside us,
    after pytest's own summary (so just above its final counts)."""
    result = yield
    skipped = terminalreporter.stats.get("skipped", [])
    missing_data = sum("shared/data" in _skip_reason(r) for r in skipped)
    if missing_data:
        terminalreporter.write_line(
            f"{missing_data} skipped: the original release's data is not beside the project"
            " (../shared/data)"
        )
    return result
