"""Step 1 (bootstrap instructions) through the engine, against the loopback fault server.

The fault server (tests/servers/openai_fault_server.py) runs as its own process with a fixed
0.3 s latency and no faults; this process runs `generate_instructions` in-process through the
real `openai` client and the chat API, so every request is one prompt (8 instructions shown,
5 new ones answered). Each concurrency level starts from the seeds in a fresh folder and runs
for a fixed number of requests (the --max-requests budget: `window * c / latency`, so every
level lasts about `window` seconds when it keeps up), then reports:

* instructions accepted per minute and requests per second;
* speed-up over concurrency 1 (the sequential baseline), in requests per second (the work the
  engine does; acceptance per request falls as a pool grows, and the faster levels grow theirs
  further in the same window), and the target: 0.8 x c up to 16, 0.6 x c at 64;
* this process's CPU time (time.process_time: engine, step, openai client, HTTP) per request,
  and its CPU use (CPU seconds per wall second: 100 % is one whole core, the most one Python
  process's event loop can use).

Then it separates the costs per request:

* the engine alone: trivial requests through `Engine.run` to a fake model that answers at once;
* the engine and the openai client, no step work: the top level's concurrency against the same
  server, one fixed prompt, results thrown away;
* step 1 without HTTP: the same step, as many requests as the top level, with a fake model
  replaying pre-made server answers at once: prompt building, parsing, the ROUGE-L filter, the
  similarity figures stored with each record (`most_similar`, `avg_similarity_score`: scored
  against the whole pool) and the JSONL writes, but no client;

and measures how step 1 holds up as the pool grows: concurrency 16 from a pre-filled pool of
5K and 20K instructions (made by the server's own generator and deduplicated at ROUGE-L 0.7, so
candidates compete with a pool like the one a long run builds), reporting the cost per accepted
instruction once the pool is loaded.

The baseline figures of ANCHORS.md (the original scripts and distilabel, measured on this kind
of machine against the same kind of server) are printed beside ours.

    .venv/bin/python benchmarks/bench_throughput.py            # about 2.5 minutes
    .venv/bin/python benchmarks/bench_throughput.py --quick    # about 1.5 minutes

All traffic goes to 127.0.0.1. Linux or macOS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfinstruct.engine import Engine, EngineSettings, Request  # noqa: E402
from selfinstruct.models.base import Completion, Model, ModelInfo, Sampling  # noqa: E402
from selfinstruct.models.openai import OpenAIModel  # noqa: E402
from selfinstruct.prompts import bootstrap_prompt  # noqa: E402
from selfinstruct.runfolder import RunFolder  # noqa: E402
from selfinstruct.seeds import default as default_seeds  # noqa: E402
from selfinstruct.similarity import greedy_dedup  # noqa: E402
from selfinstruct.steps import StepContext  # noqa: E402
from selfinstruct.steps.instructions import (  # noqa: E402
    PAPER_SAMPLING,
    InstructionSettings,
    generate_instructions,
)
from tests.servers.openai_fault_server import (  # noqa: E402
    ContentGenerator,
    running_fault_server,
)

LATENCY = 0.3
UNLIMITED = 10**9

ANCHORS = [
    "original Self-Instruct scripts (openai 0.28, rouge-score): 967 instr/min at pool 200;"
    " 39 ms per accepted instruction at pool 200, 103 ms at 1K, 167 ms at 3K (546/min);"
    " engine CPU < 25 ms per request",
    "distilabel 1.5.3 SelfInstruct: 8-9K instr/min at batch 50 (no similarity filter);"
    " 17-24 ms CPU per request incl. start-up",
]


def target_speedup(c: int) -> float:
    return 0.8 * c if c <= 16 else 0.6 * c


@dataclass
class Level:
    label: str
    concurrency: int
    requests: int
    accepted: int
    wall: float
    cpu: float
    pool_start: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.wall

    @property
    def per_minute(self) -> float:
        return 60 * self.accepted / self.wall

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu / max(self.requests, 1)

    @property
    def cpu_ms_per_accepted(self) -> float:
        return 1000 * self.cpu / max(self.accepted, 1)


# -- step 1 against the server -----------------------------------------------------------------


def run_step(
    base_url: str, out_dir: Path, concurrency: int, budget: int, seeds, pool: int = 0
) -> Level:
    """Step 1 in `out_dir` at `concurrency` for `budget` requests (after loading any pool)."""
    model = OpenAIModel("bench", api="chat", base_url=base_url, api_key="bench", timeout=60)
    settings = InstructionSettings(num_instructions=UNLIMITED, max_stalled_requests=UNLIMITED)
    load_wall = load_cpu = 0.0
    if pool:
        # Loading the pool (read the file, index every instruction) happens once per run, not
        # per request: time it alone, with a run that has nothing left to do, and subtract it.
        done = InstructionSettings(num_instructions=pool)
        ctx = StepContext(model=model, engine=EngineSettings(concurrency=concurrency))
        cpu0, t0 = time.process_time(), time.perf_counter()
        generate_instructions(ctx, seeds, out_dir, done)
        load_wall, load_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    engine = EngineSettings(concurrency=concurrency, max_requests=budget)
    ctx = StepContext(model=model, engine=engine)
    cpu0, t0 = time.process_time(), time.perf_counter()
    report = generate_instructions(ctx, seeds, out_dir, settings)
    wall, cpu = time.perf_counter() - t0 - load_wall, time.process_time() - cpu0 - load_cpu
    assert report.engine is not None
    assert report.engine.budget_stop == "max_requests", report.engine.to_dict()
    assert not report.engine.retries and not report.engine.failures, report.engine.to_dict()
    return Level(
        label=f"c={concurrency}" + (f", pool {pool:,}" if pool else ""),
        concurrency=concurrency,
        requests=report.engine.requests,
        accepted=report.counts["accepted_now"],
        wall=wall,
        cpu=cpu,
        pool_start=pool,
    )


# -- in-process fakes: the engine's and the step's own cost ----------------------------------


class InstantModel(Model):
    """Answers at once with texts made beforehand (no HTTP, no content generation)."""

    default_concurrency = 64

    def __init__(self, answers: list[str]):
        self._answers = answers
        self._next = 0

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(backend="fake", name="instant", api="chat")

    async def complete(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        out = []
        for _ in prompts:
            text = self._answers[self._next % len(self._answers)]
            self._next += 1
            out.append(Completion(text, "stop", 100, 60))
        return out


def engine_alone(n: int, concurrency: int) -> tuple[float, float]:
    """CPU and wall seconds per request of the engine with a model that answers at once."""
    model = InstantModel(["x"])
    sampling = Sampling(max_tokens=16)
    requests = [Request(["p"], sampling, key=i) for i in range(n)]
    engine = Engine(model, EngineSettings(concurrency=concurrency))
    cpu0, t0 = time.process_time(), time.perf_counter()
    asyncio.run(engine.run(requests, lambda r, c: None))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    assert engine.stats.succeeded == n
    return cpu / n, wall / n


def engine_with_client(base_url: str, n: int, concurrency: int, seeds: list[str]) -> float:
    """CPU seconds per request of the engine driving the openai client, with no step work."""
    model = OpenAIModel("bench", api="chat", base_url=base_url, api_key="bench", timeout=60)
    prompt = bootstrap_prompt(seeds[:8])
    requests = [Request([prompt], PAPER_SAMPLING, key=i) for i in range(n)]
    engine = Engine(model, EngineSettings(concurrency=concurrency))

    async def go() -> None:
        await engine.run(requests, lambda r, c: None)
        await model.aclose()

    cpu0 = time.process_time()
    asyncio.run(go())
    cpu = time.process_time() - cpu0
    assert engine.stats.succeeded == n
    return cpu / n


def server_answers(n: int, seed: int) -> list[str]:
    """Bootstrap answers as the server makes them (5 new instructions continuing "9.")."""
    content = ContentGenerator(seed)
    rng = random.Random(seed)
    prompt = "Come up with a series of tasks:\n" + "".join(f"{i}. x\n" for i in range(1, 9)) + "9."
    return [content.bootstrap(prompt, rng, 5, 0.0) for _ in range(n)]


def step_without_http(out_dir: Path, n_requests: int, concurrency: int, seeds) -> Level:
    model = InstantModel(server_answers(n_requests, seed=77))
    ctx = StepContext(
        model=model, engine=EngineSettings(concurrency=concurrency, max_requests=n_requests)
    )
    settings = InstructionSettings(num_instructions=UNLIMITED, max_stalled_requests=UNLIMITED)
    cpu0, t0 = time.process_time(), time.perf_counter()
    report = generate_instructions(ctx, seeds, out_dir, settings)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert report.engine is not None
    return Level(
        label=f"c={concurrency}, no HTTP",
        concurrency=concurrency,
        requests=report.engine.requests,
        accepted=report.counts["accepted_now"],
        wall=wall,
        cpu=cpu,
    )


# -- a pre-filled pool --------------------------------------------------------------------------


def make_pool(size: int, seeds: list[str], seed: int = 1234) -> list[str]:
    """`size` instructions from the server's generator, kept greedily at ROUGE-L <= 0.7 to the
    seeds and to each other (as a pool built by step 1 would be)."""
    content = ContentGenerator(seed)
    rng = random.Random(seed)
    candidates = [content.instruction(rng) for _ in range(int(size * 1.3) + 100)]
    result = greedy_dedup(candidates, 0.7, initial=seeds)
    kept = [candidates[i] for i in result.kept]
    if len(kept) < size:
        raise RuntimeError(f"only {len(kept)} of {size} survived dedup; raise the margin")
    return kept[:size]


def write_pool(out_dir: Path, pool: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(RunFolder(out_dir).instructions, "w") as f:
        for i, text in enumerate(pool):
            record = {
                "instruction": text,
                "most_similar": {},
                "avg_similarity_score": 0.0,
                "metadata": {},
                "request_idx": i // 5,
            }
            f.write(json.dumps(record) + "\n")


# -- report -------------------------------------------------------------------------------------


def print_table(levels: list[Level], base: Level) -> bool:
    print(
        "| concurrency | requests | instr accepted | instr/min | req/s | ideal req/s "
        "| speed-up | target | pass | CPU ms/req | CPU use |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|")
    ok = True
    for lv in levels:
        speedup = lv.rps / base.rps
        target = target_speedup(lv.concurrency)
        passed = speedup >= target
        ok &= passed
        print(
            f"| {lv.concurrency} | {lv.requests:,} | {lv.accepted:,} | {lv.per_minute:,.0f} "
            f"| {lv.rps:.1f} | {lv.concurrency / LATENCY:.1f} | {speedup:.1f}x "
            f"| {target:.1f}x | {'pass' if passed else 'FAIL'} | {lv.cpu_ms_per_request:.2f} "
            f"| {100 * lv.cpu / lv.wall:.0f} % |"
        )
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 s per level, a 5K pool only")
    ap.add_argument("--window", type=float, default=None, help="seconds per level (default 12)")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--pools", default=None, help="pre-filled pool sizes (default 5000,20000)")
    args = ap.parse_args()
    window = args.window or (4.0 if args.quick else 12.0)
    pools = [int(p) for p in (args.pools or ("5000" if args.quick else "5000,20000")).split(",")]
    levels_c = [int(c) for c in args.concurrency.split(",")]
    seeds = default_seeds()
    seed_texts = [t.instruction for t in seeds]

    print(
        f"load average before: {os.getloadavg()[0]:.2f}  cores: {os.cpu_count()}  "
        f"server latency {LATENCY} s, no faults, chat API (1 prompt/request), window {window} s"
    )
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        root = Path(tmp)
        levels: list[Level] = []
        pool_levels: list[Level] = []
        with running_fault_server(latency=LATENCY, seed=0) as server:
            for c in levels_c:
                budget = max(c, round(window * c / LATENCY))
                level = run_step(server.base_url, root / f"c{c}", c, budget, seeds)
                levels.append(level)
                print(
                    f"  c={c}: {level.requests} requests in {level.wall:.1f} s, "
                    f"{level.accepted} accepted",
                    flush=True,
                )
            pool_c = 16
            for size in pools:
                t0 = time.perf_counter()
                pool = make_pool(size, seed_texts)
                folder = root / f"pool{size}"
                write_pool(folder, pool)
                made = time.perf_counter() - t0
                budget = round(window * pool_c / LATENCY)
                level = run_step(server.base_url, folder, pool_c, budget, seeds, pool=size)
                pool_levels.append(level)
                print(
                    f"  pool {size:,} (made in {made:.0f} s): {level.requests} requests in "
                    f"{level.wall:.1f} s, {level.accepted} accepted",
                    flush=True,
                )
            top = levels[-1]
            n_client = round(window / 2 * top.concurrency / LATENCY)
            client_cpu = engine_with_client(server.base_url, n_client, top.concurrency, seed_texts)
        alone_cpu, alone_wall = engine_alone(20_000, 64)
        # The same requests as the top level, so that the pool grows as much.
        no_http = step_without_http(root / "nohttp", top.requests, top.concurrency, seeds)

    base = next((lv for lv in levels if lv.concurrency == 1), levels[0])
    print()
    print("Step 1 through the engine and the openai client (chat API, 0.3 s latency):")
    print()
    ok = print_table(levels, base)
    print()
    print("Cost as the pool grows (concurrency 16; pool load time and CPU excluded):")
    print()
    print(
        "| pool at start | requests | instr accepted | instr/min | req/s "
        "| CPU ms/req | CPU ms/accepted instr |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rows = [lv for lv in levels if lv.concurrency == 16] + pool_levels
    for lv in rows:
        print(
            f"| {lv.pool_start:,} (+{lv.accepted:,}) | {lv.requests:,} | {lv.accepted:,} "
            f"| {lv.per_minute:,.0f} | {lv.rps:.1f} | {lv.cpu_ms_per_request:.2f} "
            f"| {lv.cpu_ms_per_accepted:.2f} |"
        )
    print()
    print("Where the CPU goes, per request (in-process models that answer at once):")
    print()
    full = levels[-1]
    c = full.concurrency
    print("| what | CPU per request |")
    print("|---|---:|")
    what = "engine alone (Engine.run, fake model, c=64, 20,000 requests)"
    print(f"| {what} | {1e3 * alone_cpu:.3f} ms |")
    print(
        f"| engine + openai client + HTTP, no step work (c={c}, {n_client:,} requests) "
        f"| {1e3 * client_cpu:.2f} ms |"
    )
    print(
        f"| step 1 without HTTP (fake model replaying server answers; c={c}, "
        f"{no_http.requests:,} requests, {no_http.accepted:,} accepted: prompts, parsing, "
        f"ROUGE-L filter and scores, writes) | {no_http.cpu_ms_per_request:.2f} ms |"
    )
    print(
        f"| step 1 through the openai client and HTTP (the c={c} level above) "
        f"| {full.cpu_ms_per_request:.2f} ms |"
    )
    print()
    print("Baselines (ANCHORS.md, same kind of machine and server):")
    for line in ANCHORS:
        print(f"  - {line}")
    print()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("targets: all met" if ok else "targets: NOT all met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
