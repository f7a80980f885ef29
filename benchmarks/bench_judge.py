"""The judge (`selfinstruct judge`) through the engine, against the loopback fault server.

The fault server (tests/servers/openai_fault_server.py) runs as its own process with a fixed
0.3 s latency and no faults, and answers the judge's prompt with a verdict. This process runs
`judge_run` in-process through the real `openai` client on a run folder of synthetic examples.
Each level starts from an empty judgments file and runs for a fixed number of requests (the
--max-requests budget: `window * c / latency`, so every level lasts about `window` seconds when
it keeps up), then reports examples rated per minute, requests per second, the speed-up over
concurrency 1 (one request at a time, as the paper's scripts sent them: the baseline), the
target (0.8 x c up to 16, 0.6 x c at 64, as for generation), and this process's CPU time per
example. One more level sends 5 prompts a request (the completions API's list prompt), and a
last one measures the judge's own work per example (prompt, parsing, writing) with a fake model
that answers at once.

    .venv/bin/python benchmarks/bench_judge.py            # about 1 minute
    .venv/bin/python benchmarks/bench_judge.py --quick    # about 30 seconds

All traffic goes to 127.0.0.1. Linux or macOS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfinstruct.engine import EngineSettings  # noqa: E402
from selfinstruct.judge import JudgeSettings, judge_run  # noqa: E402
from selfinstruct.models.base import Completion, Model, ModelInfo, Sampling  # noqa: E402
from selfinstruct.models.openai import OpenAIModel  # noqa: E402
from selfinstruct.runfolder import RunFolder  # noqa: E402
from selfinstruct.steps import StepContext  # noqa: E402
from tests.servers.openai_fault_server import running_fault_server  # noqa: E402

LATENCY = 0.3


def target_speedup(c: int) -> float:
    return 0.8 * c if c <= 16 else 0.6 * c


@dataclass
class Level:
    label: str
    concurrency: int
    requests: int
    rated: int
    wall: float
    cpu: float

    @property
    def rps(self) -> float:
        return self.requests / self.wall

    @property
    def per_minute(self) -> float:
        return 60 * self.rated / self.wall

    @property
    def cpu_ms_per_example(self) -> float:
        return 1000 * self.cpu / max(self.rated, 1)


def make_run(folder: Path, n: int) -> RunFolder:
    """A run folder with `n` distinct step-4 examples of a few dozen words each."""
    rf = RunFolder(folder)
    rf.all_instances.parent.mkdir(parents=True, exist_ok=True)
    with open(rf.all_instances, "w") as f:
        for i in range(n):
            record = {
                "instruction": f"Summarize the following note about shipment {i} in one sentence.",
                "input": f"Shipment {i} left the harbor on Monday with {i % 97} crates of pears, "
                "was delayed by fog near the coast, and reached the warehouse two days late.",
                "output": f"Shipment {i} of pears arrived two days late because of fog.",
            }
            f.write(json.dumps(record) + "\n")
    return rf


def run_level(
    base_url: str, folder: Path, n_examples: int, concurrency: int, budget: int, api: str
) -> Level:
    rf = make_run(folder, n_examples)
    batch = 5 if api == "completions" else 1
    model = OpenAIModel("judge", api=api, base_url=base_url, api_key="bench", timeout=60)
    ctx = StepContext(
        model=model, engine=EngineSettings(concurrency=concurrency, max_requests=budget)
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    report = judge_run(ctx, rf, JudgeSettings(request_batch_size=batch))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert report.engine is not None
    assert report.engine.budget_stop == "max_requests", report.engine.to_dict()
    assert not report.engine.retries and not report.engine.failures, report.engine.to_dict()
    assert not report.dropped, report.dropped  # every answer read
    label = f"c={concurrency}" + (f", {batch} prompts/request" if batch > 1 else "")
    return Level(label, concurrency, report.engine.requests, report.counts["rated_now"], wall, cpu)


class InstantJudge(Model):
    """Answers every prompt at once with a verdict (no HTTP)."""

    default_concurrency = 64

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(backend="fake", name="instant", api="chat")

    async def complete(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        text = "Valid task: yes\nInput fits: yes\nOutput correct: no\nRating: C"
        return [Completion(text, "stop", 400, 14) for _ in prompts]


def judge_without_http(folder: Path, n: int) -> Level:
    rf = make_run(folder, n)
    ctx = StepContext(model=InstantJudge(), engine=EngineSettings(concurrency=64))
    cpu0, t0 = time.process_time(), time.perf_counter()
    report = judge_run(ctx, rf)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert report.complete
    return Level("no HTTP", 64, report.engine.requests, report.counts["rated_now"], wall, cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 s per level instead of 8")
    ap.add_argument("--window", type=float, default=None, help="seconds per level")
    ap.add_argument("--concurrency", default="1,4,16,64")
    args = ap.parse_args()
    window = args.window or (3.0 if args.quick else 8.0)
    levels_c = [int(c) for c in args.concurrency.split(",")]
    print(
        f"load average before: {os.getloadavg()[0]:.2f}  cores: {os.cpu_count()}  "
        f"server latency {LATENCY} s, no faults, window {window} s"
    )
    levels: list[Level] = []
    with tempfile.TemporaryDirectory(prefix="bench_judge_") as tmp:
        root = Path(tmp)
        with running_fault_server(latency=LATENCY, seed=0) as server:
            for c in levels_c:
                budget = max(c, round(window * c / LATENCY))
                level = run_level(server.base_url, root / f"c{c}", budget + c, c, budget, "chat")
                levels.append(level)
                done = f"{level.requests} requests in {level.wall:.1f} s"
                print(f"  {level.label}: {done}", flush=True)
            c = 16
            budget = round(window * c / LATENCY)
            batched = run_level(
                server.base_url, root / "batched", 5 * budget + 5, c, budget, "completions"
            )
            print(f"  {batched.label}: {batched.requests} requests in {batched.wall:.1f} s")
        local = judge_without_http(root / "local", 5000)

    base = next(lv for lv in levels if lv.concurrency == 1)
    print()
    print("Judge through the engine and the openai client (0.3 s latency per request):")
    print()
    print(
        "| level | requests | examples rated | examples/min | req/s | ideal req/s | speed-up "
        "| target | pass | CPU ms/example |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|:---:|---:|")
    ok = True
    for lv in levels:
        speedup = lv.rps / base.rps
        target = target_speedup(lv.concurrency)
        passed = speedup >= target
        ok &= passed
        print(
            f"| {lv.label} | {lv.requests:,} | {lv.rated:,} | {lv.per_minute:,.0f} "
            f"| {lv.rps:.1f} | {lv.concurrency / LATENCY:.1f} | {speedup:.1f}x | {target:.1f}x "
            f"| {'pass' if passed else 'FAIL'} | {lv.cpu_ms_per_example:.2f} |"
        )
    print(
        f"| {batched.label} | {batched.requests:,} | {batched.rated:,} "
        f"| {batched.per_minute:,.0f} | {batched.rps:.1f} | {batched.concurrency / LATENCY:.1f} "
        f"| {batched.per_minute / base.per_minute:.1f}x (examples) | | | "
        f"{batched.cpu_ms_per_example:.2f} |"
    )
    print()
    print(
        f"The judge's own work, no HTTP (fake model answering at once, c=64, {local.rated:,}"
        f" examples: prompt, parsing, one JSONL line each): {local.cpu_ms_per_example:.2f} ms"
        f" CPU per example, {local.per_minute:,.0f} examples/min"
    )
    print("Baseline: concurrency 1, one request at a time (the paper's scripts' way).")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("targets: all met" if ok else "targets: NOT all met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
