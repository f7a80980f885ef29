"""kill -9 at random moments, then resume: nothing accepted is ever lost, duplicated or made up.

`selfinstruct generate-instructions` runs against the fault server (random latency, a few
faults, concurrency 8) and is killed with SIGKILL at random moments while it is writing, at
least five times, each time resumed with the same command. Between kills the test reads the
output file: every whole record there must still be there, unchanged and in place, after every
later run. At the end the file must be valid JSONL, reach the target, hold no duplicate, keep the
paper's rule (ROUGE-L F1 <= 0.7 to every earlier instruction and every seed, checked with
rouge-score itself), and hold only instructions the server really sent. A run that never stopped
must end the same way.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from rouge_score import rouge_scorer, tokenizers

from selfinstruct.runfolder import RunFolder
from selfinstruct.seeds import default as default_seeds

pytest.importorskip("aiohttp")

try:
    from tests.servers.openai_fault_server import running_fault_server
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from servers.openai_fault_server import running_fault_server

TARGET = 800  # room for 6 kills: the writer thread writes decided requests in bursts
KILLS = 6
SERVER = {
    "seed": 21,
    "latency": 0.05,
    "latency_jitter": 0.15,
    "rate_429": 0.04,
    "retry_after": 0.2,
    "rate_503": 0.03,
    "rate_malformed": 0.02,
    "rate_empty_choices": 0.02,
}
FIELDS = {"instruction", "most_similar", "avg_similarity_score", "metadata", "request_idx"}
FIELDS |= {"candidate_idx"}  # the order of step 1's decisions, shared with rejected records


def command(out: Path, base_url: str) -> list[str]:
    return [
        sys.executable, "-c", "from selfinstruct.cli import main; main()",
        "generate-instructions", "--batch-dir", str(out), "--model", "openai:m",
        "--base-url", base_url, "--api-key", "k", "--num-instructions", str(TARGET),
        "--concurrency", "8", "--timeout", "10", "--quiet",
    ]  # fmt: skip


def whole_lines(data: bytes) -> bytes:
    """The complete lines of a file's bytes (what a killed writer's file holds for sure)."""
    return data[: data.rfind(b"\n") + 1]


def records_of(data: bytes) -> list[dict]:
    return [json.loads(line) for line in whole_lines(data).decode().splitlines()]


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def assert_rouge_rule(texts: list[str], seeds: list[str], threshold: float = 0.7) -> None:
    """Every text has ROUGE-L F1 <= threshold to each seed and each earlier text, by rouge-score.

    F1 = 2 * LCS / (m + n) and LCS <= the multiset overlap of the two token lists, so a pair
    whose overlap bound is at most the threshold cannot break the rule; every other pair is
    scored exactly by rouge-score.
    """
    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = [(s, Counter(tokenizer.tokenize(s))) for s in seeds]
    for text in texts:
        tokens = Counter(tokenizer.tokenize(text))
        m = sum(tokens.values())
        for other, other_tokens in pool:
            n = sum(other_tokens.values())
            overlap = sum((tokens & other_tokens).values())
            if m + n == 0 or 2 * overlap / (m + n) <= threshold:
                continue
            score = scorer.score(other, text)["rougeL"].fmeasure
            assert score <= threshold, (text, other, score)
        pool.append((text, tokens))


def check_final(path: Path, seeds: list[str], served: str) -> list[str]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    records = [json.loads(line) for line in data.decode().splitlines()]  # valid JSONL
    assert all(set(r) == FIELDS for r in records)
    texts = [r["instruction"] for r in records]
    assert len(texts) == TARGET
    assert len(set(texts)) == TARGET
    for text in texts:
        assert text in served, text  # the server really sent it
    assert_rouge_rule(texts, seeds)
    return texts


def served_texts(server) -> str:
    return "\n".join(t for e in server.read_log() for t in e["texts"])


def test_kill_nine_at_random_moments_then_resume(tmp_path):
    seeds = [t.instruction for t in default_seeds()]
    rng = random.Random(20240607)
    out = tmp_path / "killed"
    path = RunFolder(out).instructions
    t0 = time.monotonic()
    with running_fault_server(log_path=tmp_path / "server.jsonl", **SERVER) as server:
        cmd = command(out, server.base_url)
        snapshots: list[bytes] = []
        while len(snapshots) < KILLS:
            assert time.monotonic() - t0 < 120, f"only {len(snapshots)} kills in 120 s"
            start_lines = count_lines(path)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                # Kill while it writes: after its first new record, at a random moment.
                deadline = time.monotonic() + 20
                while count_lines(path) <= start_lines and proc.poll() is None:
                    assert time.monotonic() < deadline, "no progress in 20 s"
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.25))
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.fail(
                        f"finished before kill {len(snapshots) + 1} ({proc.returncode}) {err}"
                    )
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if proc.stderr:
                    proc.stderr.close()
            assert proc.returncode == -signal.SIGKILL
            snapshot = path.read_bytes()
            # What the last kill left is still all there: no record lost, moved or changed.
            if snapshots:
                assert snapshot.startswith(whole_lines(snapshots[-1]))
            previous = records_of(snapshots[-1]) if snapshots else []
            assert len(records_of(snapshot)) > len(previous)  # it made progress before the kill
            snapshots.append(snapshot)
            if len(snapshots) == 3:
                # A kill in the middle of a write leaves a torn last line; the next run must
                # cut it off and go on (the original scripts stop with a JSON error).
                with open(path, "ab") as f:
                    f.write(b'{"instruction": "Half a reco')

        final = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert final.returncode == 0, final.stderr
        served = served_texts(server)

        data = path.read_bytes()
        for snapshot in snapshots:
            assert data.startswith(whole_lines(snapshot))
        killed_texts = check_final(path, seeds, served)
        # No kill ever happened after the target was reached.
        assert all(len(records_of(s)) < TARGET for s in snapshots)

        # A run that never stopped ends the same way: as many records, all distinct.
        straight_out = tmp_path / "straight"
        cmd = command(straight_out, server.base_url)
        straight = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert straight.returncode == 0, straight.stderr
        served = served_texts(server)
    straight_texts = check_final(RunFolder(straight_out).instructions, seeds, served)
    assert len(straight_texts) == len(killed_texts) == TARGET
    assert len(set(straight_texts)) == len(set(killed_texts)) == TARGET


LARGE_POOL = 34_000  # past similarity._PREFIX_MIN_TEXTS: decisions go through the prefix index


def test_kill_nine_and_resume_at_a_large_pool(tmp_path):
    """A folder already holding 34,000 instructions: a run is killed with SIGKILL once it has
    added some, then resumed; nothing written is lost, and every new instruction has F1 <= 0.7
    to every seed and every earlier instruction (the new ones scored against the whole pool
    by the index's exact whole-posting path, which the similarity tests check against
    rouge-score)."""
    from selfinstruct.similarity import RougeLIndex

    data = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    corpus = data / "bench_instructions_52k.jsonl"
    if not corpus.exists():
        pytest.skip(f"../shared/data absent: {corpus} lies beside the project only")
    with corpus.open(encoding="utf-8") as fh:
        lines = [line for _, line in zip(range(LARGE_POOL), fh, strict=False)]
    pool = [json.loads(line)["instruction"] for line in lines]
    seeds = [t.instruction for t in default_seeds()]
    out = tmp_path / "large"
    path = RunFolder(out).instructions
    out.mkdir()
    with path.open("w", encoding="utf-8") as fh:
        for i, text in enumerate(pool):
            record = {"instruction": text, "most_similar": {}, "avg_similarity_score": 0.0}
            fh.write(json.dumps({**record, "metadata": {}, "request_idx": i}) + "\n")
    target = LARGE_POOL + 60
    with running_fault_server(seed=5, latency=0.05) as server:
        cmd = command(out, server.base_url)
        cmd[cmd.index(str(TARGET))] = str(target)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while count_lines(path) < LARGE_POOL + 10 and proc.poll() is None:
                assert time.monotonic() < deadline, "no progress in 300 s"
                time.sleep(0.01)
            assert proc.poll() is None, "finished before the kill"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        snapshot = path.read_bytes()
        final = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, final.stderr
    data_after = path.read_bytes()
    assert data_after.startswith(whole_lines(snapshot))
    texts = [r["instruction"] for r in records_of(data_after)]
    assert len(texts) == target and texts[:LARGE_POOL] == pool
    index = RougeLIndex(seeds + pool)
    for text in texts[LARGE_POOL:]:
        assert float(index.scores(text).max()) <= 0.7, text
        index.add(text)
