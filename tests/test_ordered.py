"""The same data at any concurrency: step 1 decides answers in send order, prompts come from
the pool as it stood `lag` requests earlier with a random stream per request, and step 4 reads
step 3's answers in step 1's order.

Every run here talks to the loopback fault server with `vary_repeats=False`, so an answer
depends only on its prompt, and with random latency, so answers arrive out of order.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import selfinstruct as si
from selfinstruct.io import read_jsonl
from selfinstruct.progress import Reporter
from selfinstruct.runfolder import RunFolder

pytest.importorskip("aiohttp")

try:
    from tests.servers.openai_fault_server import running_fault_server
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from servers.openai_fault_server import running_fault_server

# Answers depend on the prompt only; a third of them repeat one of the prompt's instructions,
# so that which instruction is in the pool first decides what is kept.
SERVER = {"seed": 5, "latency": 0.01, "latency_jitter": 0.06, "vary_repeats": False}
SERVER |= {"copy_rate": 0.35}


def grow(out: Path, url: str, concurrency: int, target: int, **settings) -> None:
    engine = si.EngineSettings(concurrency=concurrency, max_attempts=2, backoff_base=0.01)
    with si.Pipeline(out, "openai:m", base_url=url, api_key="k", engine=engine, seed=7) as p:
        p.generate_instructions(target, **settings)


def kept(out: Path) -> list[str]:
    return [r["instruction"] for r in read_jsonl(RunFolder(out).instructions)]


def decisions(out: Path) -> list[tuple]:
    """Every decision in order: what, kept or why not, and for which request."""
    return [
        (d["instruction"], d.get("reason", "kept"), d["request_idx"], d["candidate_idx"])
        for d in RunFolder(out).read_decisions()
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "log.jsonl"
    with running_fault_server(**SERVER, log_path=log) as srv:
        yield srv


def generation_requests(server) -> int:
    return sum(r["endpoint"] != "/v1/models" for r in server.read_log())


def test_same_instructions_in_the_same_order_at_any_concurrency(tmp_path, server):
    for c in (1, 8, 64):
        grow(tmp_path / f"c{c}", server.base_url, c, 250)
    reference = decisions(tmp_path / "c1")
    assert len(kept(tmp_path / "c1")) == 250
    assert sum(d[1] == "too_similar" for d in reference) >= 10  # the filter had work
    for c in (8, 64):
        assert decisions(tmp_path / f"c{c}") == reference, f"concurrency {c}"
    run = json.loads(RunFolder(tmp_path / "c64").run_file.read_text())
    assert run["config"]["instructions"]["lag"] == 64


def test_the_lag_is_what_the_data_depends_on(tmp_path, server):
    grow(tmp_path / "serial", server.base_url, 1, 60, lag=1)
    grow(tmp_path / "serial_c8", server.base_url, 8, 60, lag=1)  # concurrency above the lag waits
    grow(tmp_path / "lag8", server.base_url, 8, 60, lag=8)
    assert decisions(tmp_path / "serial_c8") == decisions(tmp_path / "serial")
    assert kept(tmp_path / "lag8") != kept(tmp_path / "serial")


def test_the_same_failures_give_the_same_run(tmp_path):
    # One prompt in six always gets a 500: with two attempts those requests fail for good.
    with running_fault_server(**SERVER, rate_fail_prompt=0.15) as srv:
        for c in (1, 16):
            grow(tmp_path / f"c{c}", srv.base_url, c, 120)
    reference = decisions(tmp_path / "c1")
    failed = [d for d in reference if d[1] == "request_failed_500"]
    assert len(failed) >= 3 and all(d[0] is None for d in failed)
    assert decisions(tmp_path / "c16") == reference
    assert len(kept(tmp_path / "c16")) == 120


def test_one_or_three_endpoints_keep_the_same_instructions(tmp_path, server):
    pytest.importorskip("selfinstruct.models.fleet", reason="several endpoints: branch fleet")
    grow(tmp_path / "one", server.base_url, 1, 200)
    speeds = ({"latency": 0.0}, {"latency": 0.02}, {"latency": 0.08})
    with (
        running_fault_server(**{**SERVER, **speeds[0]}) as a,
        running_fault_server(**{**SERVER, **speeds[1]}) as b,
        running_fault_server(**{**SERVER, **speeds[2]}) as c,
    ):
        engine = si.EngineSettings(concurrency=32)
        urls = [a.base_url, b.base_url, c.base_url]
        with si.Pipeline(
            tmp_path / "three", "openai:m", base_url=urls, api_key="k", engine=engine, seed=7
        ) as p:
            p.generate_instructions(200)
    assert decisions(tmp_path / "three") == decisions(tmp_path / "one")


def _command(out: Path, url: str, concurrency: int, target: int) -> list[str]:
    return [
        sys.executable, "-c", "from selfinstruct.cli import main; main()",
        "generate-instructions", "--batch-dir", str(out), "--model", "openai:m",
        "--base-url", url, "--api-key", "k", "--num-instructions", str(target),
        "--concurrency", str(concurrency), "--seed", "7", "--quiet",
    ]  # fmt: skip


def test_kill_nine_and_resume_keep_the_same_instructions(tmp_path):
    """Killed at random moments at concurrency 64, resumed each time: the same decisions, in the
    same order, as one run at concurrency 1 (against a fast server with the same answers)."""
    target = 500
    ref, out = tmp_path / "reference", tmp_path / "killed"
    with running_fault_server(**{**SERVER, "latency": 0.0, "latency_jitter": 0.0}) as fast:
        subprocess.run(_command(ref, fast.base_url, 1, target), check=True, timeout=300)
    slow = {**SERVER, "latency": 0.1, "latency_jitter": 0.4}
    rng = random.Random(3)
    kills = 0
    with running_fault_server(**slow) as srv:
        for _ in range(4):
            start = len(_lines(out))
            proc = subprocess.Popen(_command(out, srv.base_url, 64, target))
            wanted = start + rng.randrange(20, 100)  # kill mid-run, after some progress
            while proc.poll() is None and len(_lines(out)) < wanted:
                time.sleep(0.02)
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        subprocess.run(_command(out, srv.base_url, 64, target), check=True, timeout=300)
    assert kills >= 3
    assert len(kept(out)) == target
    assert decisions(out) == decisions(ref)


def _lines(out: Path) -> list[str]:
    path = RunFolder(out).instructions
    return path.read_text().splitlines() if path.exists() else []


def test_a_decision_cut_short_is_made_again_from_the_saved_answer(tmp_path, server):
    """What a kill between two writes of one decision leaves: part of a request's records and
    no "decided" line. The rerun decides it again from the saved answer, asking nothing, and
    writes the records that were missing."""
    out = tmp_path / "run"
    grow(out, server.base_url, 8, 40)
    rf = RunFolder(out)
    before = decisions(out)
    whole = kept(out)
    journal = rf.instruction_answers.read_text().splitlines()
    last = max(json.loads(line).get("decided", -1) for line in journal)
    journal = [line for line in journal if json.loads(line).get("decided") != last]
    rf.instruction_answers.write_text("".join(line + "\n" for line in journal))
    records = read_jsonl(rf.instructions)
    assert records[-1]["request_idx"] == last
    rf.instructions.write_text("".join(json.dumps(r) + "\n" for r in records[:-1]))
    rejected = [r for r in read_jsonl(rf.rejected) if r["request_idx"] != last]
    rf.rejected.write_text("".join(json.dumps(r) + "\n" for r in rejected))

    asked = generation_requests(server)
    warnings: list[str] = []
    reporter = Reporter(quiet=True)
    reporter.warn = warnings.append  # type: ignore[method-assign]
    engine = si.EngineSettings(concurrency=8)
    with si.Pipeline(
        out,
        "openai:m",
        base_url=server.base_url,
        api_key="k",
        engine=engine,
        seed=7,
        reporter=reporter,
    ) as p:
        report = p.generate_instructions(40)
    assert kept(out) == whole
    assert decisions(out) == before
    assert report.counts["saved_answers_decided"] >= 1
    assert any(f"decision on request {last}" in w for w in warnings)
    assert generation_requests(server) == asked  # nothing was asked again


def test_step4_files_are_the_same_at_any_concurrency(tmp_path, server):
    for c in (1, 8):
        engine = si.EngineSettings(concurrency=c)
        out = tmp_path / f"c{c}"
        with si.Pipeline(
            out, "openai:m", base_url=server.base_url, api_key="k", engine=engine, seed=7
        ) as p:
            p.run(40, prepare={"decontaminate": []})
    one, eight = RunFolder(tmp_path / "c1"), RunFolder(tmp_path / "c8")
    # Step 3's file is in arrival order, and step 4's files are byte for byte the same.
    order = [r["instruction"] for r in read_jsonl(eight.instances)]
    assert sorted(order) == sorted(r["instruction"] for r in read_jsonl(one.instances))
    files = sorted(p.name for p in one.finetuning_dir.iterdir())
    assert files == sorted(p.name for p in eight.finetuning_dir.iterdir())
    assert len(files) >= 4
    for name in files:
        assert (one.finetuning_dir / name).read_bytes() == (
            eight.finetuning_dir / name
        ).read_bytes(), name


def test_in_order_decides_in_index_order_whatever_the_arrival_order():
    from selfinstruct.steps.ordered import InOrder

    seen: list[int] = []
    order = InOrder(lambda i, item: seen.append(item) or i < 6, start=2)
    for i in (4, 3, 9, 2, 5, 7, 6, 8):
        order.put(i, i)
    order.close()
    assert seen == [2, 3, 4, 5, 6]  # 6 said stop: 7, 8, 9 are left undecided
    assert order.decided == 7 and order.left_undecided == 3


def test_in_order_hands_a_failed_decision_to_the_caller():
    from selfinstruct.steps.ordered import InOrder

    def decide(i: int, item: object) -> bool:
        raise OSError("disk full")

    order = InOrder(decide)
    order.put(0, None)
    order.wait(0)
    with pytest.raises(OSError, match="disk full"):
        order.check()
    with pytest.raises(OSError):
        order.close()


def test_throttle_holds_the_caller_until_the_backlog_is_small():
    import threading

    from selfinstruct.steps.ordered import InOrder

    gate = threading.Event()
    order = InOrder(lambda i, item: gate.wait(10) or True, name="test-writer")
    for i in range(5):
        order.put(i, i)
    released = threading.Event()

    def caller() -> None:
        order.throttle(1)
        released.set()

    threading.Thread(target=caller, daemon=True).start()
    assert not released.wait(0.3)  # 5 handed, none decided: more than 1 waiting
    gate.set()
    assert released.wait(10) and order.handed - order.decided <= 1
    order.close()
    assert order.decided == 5
