"""The OpenAI fine-tuning flow against a loopback server: success, a failed job, and reruns
that resume polling the job they created instead of paying for another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from selfinstruct.cli.train import finetune_command
from selfinstruct.errors import ModelError
from selfinstruct.finetune.openai_jobs import OpenAIConfig, run_openai_finetune

try:
    from tests.servers.finetune_server import FinetuneServer
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from servers.finetune_server import FinetuneServer

KEY = "test-key"


@pytest.fixture
def server():
    with FinetuneServer(api_key=KEY) as s:
        yield s


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """The GPT-3 prompt/completion format: converted to chat JSONL before upload."""
    path = tmp_path / "gpt3_finetuning_data_20.jsonl"
    lines = [
        {
            "prompt": f"Add one to the number.\nInput: {k}\nOutput:",
            "completion": f" {k + 1}<|endoftext|>",
        }
        for k in range(20)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _args(data: Path, out: Path, server: FinetuneServer, *extra: str) -> list[str]:
    return [
        str(data),
        "--out",
        str(out),
        "--backend",
        "openai",
        "--base-url",
        server.base_url,
        "--api-key",
        KEY,
        "--poll-interval",
        "0.02",
        "--quiet",
        *extra,
    ]


def test_success_prints_the_model_and_keeps_no_key(tmp_path: Path, server, data) -> None:
    out = tmp_path / "oai"
    result = CliRunner().invoke(
        finetune_command, _args(data, out, server, "--epochs", "2", "--suffix", "demo")
    )
    assert result.exit_code == 0, result.output
    model = result.stdout.strip()
    assert model == "ft:gpt-4o-mini-2024-07-18:org-test:demo:0001"
    assert (server.uploads, server.creations) == (2, 1)  # training and validation files
    job = server.jobs["ftjob-0001"]
    assert job.request["method"]["supervised"]["hyperparameters"] == {"n_epochs": 2}
    uploaded = server.files[job.training_file]["lines"]
    assert len(uploaded) == 19  # one of 20 held out (--eval-fraction 0.05)
    assert uploaded[0]["messages"][-1]["role"] == "assistant"
    assert uploaded[0]["messages"][0]["content"].startswith("Add one to the number.\n\n")
    assert job.validation_file is not None
    state = json.loads((out / "openai_job.json").read_text())
    assert state["status"] == "succeeded" and state["fine_tuned_model"] == model
    report = json.loads((out / "finetune.json").read_text())
    assert report["model_spec"] == f"openai:{model}"
    for path in out.iterdir():
        assert KEY not in path.read_text(), path


def test_a_failed_job_is_a_clear_error_also_on_rerun(tmp_path: Path, data) -> None:
    out = tmp_path / "oai"
    with FinetuneServer(api_key=KEY, outcome="failed") as server:
        result = CliRunner().invoke(finetune_command, _args(data, out, server))
        assert result.exit_code != 0
        assert isinstance(result.exception, ModelError)
        assert "ftjob-0001 failed: Training file has too few examples." in str(result.exception)
        again = CliRunner().invoke(finetune_command, _args(data, out, server))
        assert again.exit_code != 0 and "`restart`" in str(again.exception)
        assert server.creations == 1
        restarted = CliRunner().invoke(finetune_command, _args(data, out, server, "--restart"))
        assert restarted.exit_code != 0 and server.creations == 2


def test_no_wait_then_rerun_resumes_the_same_job(tmp_path: Path, server, data) -> None:
    out = tmp_path / "oai"
    server.polls_to_finish = 5
    first = CliRunner().invoke(finetune_command, _args(data, out, server, "--no-wait"))
    assert first.exit_code == 0, first.output
    assert first.stdout == "" and "rerun the same command" in first.stderr
    assert json.loads((out / "openai_job.json").read_text())["job_id"] == "ftjob-0001"
    second = CliRunner().invoke(finetune_command, _args(data, out, server))
    assert second.exit_code == 0, second.output
    assert second.stdout.strip().startswith("ft:gpt-4o-mini")
    assert (server.uploads, server.creations) == (2, 1)


def test_killed_while_polling_then_rerun_pays_once(tmp_path: Path, server, data) -> None:
    out = tmp_path / "oai"
    server.hold = True
    code = "from selfinstruct.cli.train import finetune_command as c; c.main()"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *_args(data, out, server)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while server.polls < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert server.polls >= 3, proc.stderr.read() if proc.poll() is not None else "no polls"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    server.hold = False
    result = run_openai_finetune(
        data,
        out,
        OpenAIConfig(poll_interval=0.02, eval_fraction=0.05),
        api_key=KEY,
        base_url=server.base_url,
    )
    assert result.status == "succeeded" and result.job_id == "ftjob-0001"
    assert (server.uploads, server.creations) == (2, 1)  # training + validation files, one job


def test_missing_key_and_unreachable_server(tmp_path: Path, data, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args = [str(data), "--out", str(tmp_path / "a"), "--backend", "openai", "--quiet"]
    no_key = CliRunner().invoke(finetune_command, args)
    assert no_key.exit_code != 0 and "OPENAI_API_KEY" in str(no_key.exception)
    closed = CliRunner().invoke(
        finetune_command, [*args, "--api-key", "k", "--base-url", "http://127.0.0.1:9/v1"]
    )
    assert closed.exit_code != 0 and isinstance(closed.exception, ModelError)
    assert "cannot reach the server" in str(closed.exception)
