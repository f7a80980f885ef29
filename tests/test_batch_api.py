"""Batch API mode against a loopback server that implements /v1/files and /v1/batches as
OpenAI documents them (tests/servers/batch_server.py): the same files as the online mode for
the same answers; batches that complete late, fail partly, expire or lose their worker; a
run killed with kill -9 while a batch runs, then resumed: nothing paid twice, lost or
duplicated."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import selfinstruct as si
from selfinstruct.batchapi import BatchSettings
from selfinstruct.runfolder import RunFolder

pytest.importorskip("aiohttp")

try:
    from tests.servers.batch_server import running_batch_server
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from servers.batch_server import running_batch_server

MODEL = "openai:fault-server-model?api=completions"
FAST = BatchSettings(poll_seconds=0.05)


def pipeline(out: Path, url: str, *, batch: BatchSettings | None = FAST, **kw) -> si.Pipeline:
    return si.Pipeline(
        out,
        MODEL,
        base_url=url,
        api_key="k",
        engine=si.EngineSettings(concurrency=1, max_attempts=2, backoff_base=0.01),
        batch_api=batch or False,
        **kw,
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def answers(path: Path, field: str) -> list[tuple[str, str]]:
    """(instruction, answer) in file order: what must be the same online and in batches."""
    return [(r["instruction"], r[field]) for r in lines(path)]


def run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def step1_online(out: Path, url: str, n: int = 30) -> None:
    with pipeline(out, url, batch=None) as p:
        p.generate_instructions(n)


@pytest.fixture(scope="module")
def server():
    with running_batch_server(no_vary_repeats=True, seed=3) as srv:
        yield srv


def test_steps_2_and_3_in_batches_give_the_online_files(tmp_path: Path, server) -> None:
    online, batch = tmp_path / "online", tmp_path / "batch"
    step1_online(online, server.base_url)
    shutil.copytree(online, batch)
    with pipeline(online, server.base_url, batch=None) as p:
        p.identify_classification()
        p.generate_instances()
    before = len(server.batches())
    with pipeline(batch, server.base_url, price=(1.0, 2.0)) as p:
        p.identify_classification()
        p.generate_instances()
    folder = RunFolder(online)
    clf = folder.classification_file_for("fault-server-model").name
    assert answers(batch / clf, "is_classification") == answers(online / clf, "is_classification")
    assert answers(batch / folder.instances.name, "raw_instances") == answers(
        folder.instances, "raw_instances"
    )
    # One batch a step, its ids in the run folder and in run.json; the cost at half the price.
    assert len(server.batches()) - before == 2
    record = run_json(batch)
    for step in ("classify", "instances"):
        stats = record["steps"][step]["batch"]
        assert stats["batches_created"] == 1 and len(stats["batch_ids"]) == 1
        assert record["steps"][step]["price_per_million_tokens"]["mode"] == "batch"
        usage = record["steps"][step]["usage"]
        expected = usage["prompt_tokens"] * 0.5e-6 + usage["completion_tokens"] * 1.0e-6
        assert record["steps"][step]["cost_usd"] == pytest.approx(expected, abs=1e-6)
    logged = lines(RunFolder(batch).batches)
    assert [e["event"] for e in logged].count("created") == 2


def test_step_1_in_rounds_keeps_what_the_online_mode_keeps_at_the_same_lag(
    tmp_path: Path, server
) -> None:
    # The answer depends only on the prompt; online at concurrency 8 or in batches, with the
    # same lag (the round) the same instructions are kept in the same order.
    kept = {}
    for name, batch in (("online", None), ("batch", FAST)):
        with si.Pipeline(
            tmp_path / name,
            MODEL,
            base_url=server.base_url,
            api_key="k",
            engine=si.EngineSettings(concurrency=8),
            batch_api=batch or False,
        ) as p:
            report = p.generate_instructions(120, lag=3)
        assert report.complete
        kept[name] = answers(RunFolder(tmp_path / name).instructions, "candidate_idx")
    assert kept["batch"] == kept["online"] and len(kept["online"]) == 120
    stats = run_json(tmp_path / "batch")["steps"]["instructions"]["batch"]
    assert stats["rounds"] >= 2 and stats["batches_created"] == stats["rounds"]
    assert run_json(tmp_path / "batch")["config"]["instructions"]["lag"] == 3


def test_step_1_lag_in_batch_mode_is_the_round(tmp_path: Path, server) -> None:
    with pipeline(tmp_path, server.base_url) as p:
        p.generate_instructions(200)
    config = run_json(tmp_path)["config"]["instructions"]
    assert config["lag"] == si.batchapi.round_requests(200, 5) == 10


def test_files_are_split_at_the_limits(tmp_path: Path, server) -> None:
    step1_online(tmp_path, server.base_url, n=25)
    before = len(server.batches())
    with pipeline(
        tmp_path, server.base_url, batch=BatchSettings(poll_seconds=0.05, max_lines=2)
    ) as p:
        p.identify_classification()
    made = server.batches()[before:]
    assert len(made) == 3  # 25 instructions, 5 a request: 5 lines, 2 a file
    assert all(b["request_counts"]["total"] <= 2 for b in made)
    with pipeline(
        tmp_path, server.base_url, batch=BatchSettings(poll_seconds=0.05, max_bytes=40_000)
    ) as p:
        p.generate_instances()
    sizes = [b["request_counts"]["total"] for b in server.batches()[before + 3 :]]
    assert len(sizes) > 1 and sum(sizes) == 5


@pytest.mark.parametrize(
    "faults",
    [
        {"line_fail_rate": 0.3},
        {"lose_worker": 1, "expire_seconds": 1.0},
        {"validating_seconds": 0.6, "finalizing_seconds": 0.4},
    ],
    ids=["fail-partly", "lost-worker-expires", "late"],
)
def test_faulty_batches_end_complete_resubmitting_only_the_missing(
    tmp_path: Path, faults: dict
) -> None:
    with running_batch_server(no_vary_repeats=True, seed=5, **faults) as srv:
        step1_online(tmp_path, srv.base_url, n=40)
        settings = BatchSettings(poll_seconds=0.05, max_submissions=10)
        with pipeline(tmp_path, srv.base_url, batch=settings) as p:
            p.identify_classification(request_batch_size=1)
        made = srv.batches()
    folder = RunFolder(tmp_path)
    labels = lines(folder.classification_file_for("fault-server-model"))
    assert sorted(r["instruction"] for r in labels) == sorted(
        r["instruction"] for r in lines(folder.instructions)
    )
    stats = run_json(tmp_path)["steps"]["classify"]["batch"]
    first = made[0]["request_counts"]
    assert first["total"] == 40
    if faults.get("validating_seconds"):
        assert len(made) == 1 and not stats["failed_lines"]
        return
    # Each later batch holds exactly the lines the one before did not answer.
    for before, after in zip(made, made[1:], strict=False):
        counts = before["request_counts"]
        assert after["request_counts"]["total"] == counts["total"] - counts["completed"]
    failed = sum(b["request_counts"]["total"] - b["request_counts"]["completed"] for b in made)
    assert sum(stats["failed_lines"].values()) == failed > 0
    assert stats["lines_resubmitted"] == failed
    if faults.get("lose_worker"):
        assert made[0]["status"] == "expired" and "batch_expired" in stats["failed_lines"]
    else:
        assert set(stats["failed_lines"]) == {"500"}


def test_a_line_that_keeps_failing_is_counted_and_the_step_goes_on(tmp_path: Path) -> None:
    with running_batch_server(no_vary_repeats=True, line_fail_rate=1.0) as srv:
        step1_online(tmp_path, srv.base_url, n=10)
        with pipeline(
            tmp_path, srv.base_url, batch=BatchSettings(poll_seconds=0.02, max_submissions=2)
        ) as p:
            report = p.identify_classification()
        assert len(srv.batches()) == 2
    assert not report.complete
    assert report.dropped == {"request_failed_500": 10}
    assert run_json(tmp_path)["steps"]["classify"]["batch"]["failed_lines"] == {"500": 4}


# --- kill -9 while a batch runs ---------------------------------------------------------


def cli(out: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-c", "from selfinstruct.cli import main; main()",
        "run", "--out", str(out), "--model", MODEL, "--base-url", url, "--api-key", "k",
        "--num-instructions", "30", "--no-decontaminate", "--quiet", "--concurrency", "1",
        "--batch-api", "--batch-poll", "0.05", "--lag", "1", *extra,
    ]  # fmt: skip


def created_events(out: Path, step: str | None = None) -> int:
    path = RunFolder(out).batches
    if not path.exists():
        return 0
    events = [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]
    files = {e["file_id"] for e in events if e["event"] == "uploaded" and step in (None, e["step"])}
    return sum(e["event"] == "created" and e["file_id"] in files for e in events)


def test_kill_9_while_a_batch_runs_then_resume(tmp_path: Path) -> None:
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    # Slow lines: every batch is in progress for a while, so the kill lands inside one.
    with running_batch_server(no_vary_repeats=True, seed=9, line_seconds=0.03) as srv:
        subprocess.run(cli(clean, srv.base_url), check=True, timeout=300)
        clean_batches = len(srv.batches())
        rounds = created_events(clean, "instructions")  # step 1's batches, then one a step
        assert rounds >= 2
        kills = 0
        # In step 1's second round, in step 2's batch, in step 3's.
        for target in (2, rounds + 1, rounds + 2):
            proc = subprocess.Popen(cli(killed, srv.base_url))
            deadline = time.monotonic() + 120
            while created_events(killed) < target and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(0.1)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        subprocess.run(cli(killed, srv.base_url), check=True, timeout=300)
        killed_batches = len(srv.batches()) - clean_batches
    assert kills == 3
    assert killed_batches == clean_batches  # nothing paid twice
    a, b = RunFolder(clean), RunFolder(killed)
    assert answers(b.instructions, "instruction") == answers(a.instructions, "instruction")
    clf = a.classification_file_for("fault-server-model")
    got = answers(b.classification_file_for("fault-server-model"), "is_classification")
    assert sorted(got) == sorted(answers(clf, "is_classification"))
    assert len(got) == len(set(got))
    assert sorted(answers(b.instances, "raw_instances")) == sorted(
        answers(a.instances, "raw_instances")
    )
    reused = run_json(killed)["steps"]
    assert sum(s.get("batch", {}).get("lines_reused", 0) for s in reused.values()) > 0


# --- errors ---------------------------------------------------------------------------


def test_batch_api_needs_an_openai_model(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from selfinstruct.cli import main; main()", "run", "--out",
         str(tmp_path), "--batch-api", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: batch_api")


def test_help_says_the_batch_price_default() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from selfinstruct.cli import main; main()", "run", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    text = " ".join(result.stdout.split())
    assert "--batch-api" in text and "[default: half of --price" in text


def test_judge_in_one_batch_gives_the_online_ratings(tmp_path: Path, server) -> None:
    online, batch = tmp_path / "online", tmp_path / "batch"
    with pipeline(online, server.base_url, batch=None) as p:
        p.run(20, prepare={"decontaminate": []})
    shutil.copytree(online, batch)
    with pipeline(online, server.base_url, batch=None) as p:
        p.judge()
    before = len(server.batches())
    with pipeline(batch, server.base_url) as p:
        p.judge()
    assert len(server.batches()) - before == 1
    key = ("key", "rating")
    got = [tuple(r.get(k) for k in key) for r in lines(RunFolder(batch).judgments_file)]
    want = [tuple(r.get(k) for k in key) for r in lines(RunFolder(online).judgments_file)]
    assert got == want and len(got) > 0


def test_a_batch_refused_as_a_whole_stops_with_one_line(tmp_path: Path) -> None:
    with running_batch_server(no_vary_repeats=True, fail_validation=1) as srv:
        step1_online(tmp_path, srv.base_url, n=10)
        result = subprocess.run(
            [sys.executable, "-c", "from selfinstruct.cli import main; main()", "identify-clf",
             "--out", str(tmp_path), "--model", MODEL, "--base-url", srv.base_url,
             "--api-key", "k", "--batch-api", "--batch-poll", "0.05", "--quiet"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode != 0
    lines_out = result.stderr.strip().splitlines()
    assert len(lines_out) == 1 and "batch batch_000001 failed: invalid_request" in lines_out[0]
