"""How fast is the loopback fault server by itself? (so that it is never what a benchmark measures)

Starts `tests/servers/openai_fault_server.py` as a subprocess (no faults; latency 0.3 s, then 0)
and drives it over keep-alive connections from this process with a raw asyncio HTTP/1.1 client
(pre-encoded request, Content-Length framing: far cheaper per request than the aiohttp server it
measures). Every request is a realistic Self-Instruct bootstrap prompt (8 numbered instructions,
max_tokens 1024, the paper's stop strings) so the server does its full parse/generate/encode work.

For each concurrency it prints requests/s, p50/p99 latency, the server process's CPU time per
request (from /proc/PID/stat) and its CPU use, and this client's CPU use. With a fixed latency L
and c connections the ideal is c/L requests/s; at latency 0 the server's CPU per request gives
its ceiling on one core (1 / cpu_per_request).

    .venv/bin/python benchmarks/bench_server_alone.py                # ~35 s
    .venv/bin/python benchmarks/bench_server_alone.py --duration 2 --concurrency 1,64

Linux only (/proc). All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers.openai_fault_server import running_fault_server  # noqa: E402

SEED_INSTRUCTIONS = [
    "Give three tips for staying healthy.",
    "What are the three primary colors?",
    "Describe the structure of an atom.",
    "How can we reduce air pollution?",
    "Pretend you are a project manager of a construction company. Describe a time when you had "
    "to make a difficult decision.",
    "Write a short story in third person narration about a protagonist who has to make an "
    "important career decision.",
    "Explain why the following fraction is equivalent to 1/4",
    "Generate a list of ten items a person might need for a camping trip",
]


def bootstrap_prompt() -> str:
    lines = "".join(f"{i}. {text}\n" for i, text in enumerate(SEED_INSTRUCTIONS, 1))
    return f"Come up with a series of tasks:\n{lines}{len(SEED_INSTRUCTIONS) + 1}."


def build_request(port: int, prompts_per_request: int) -> bytes:
    body = json.dumps(
        {
            "model": "bench",
            "prompt": [bootstrap_prompt()] * prompts_per_request,
            "max_tokens": 1024,
            "temperature": 0.7,
            "top_p": 0.5,
            "stop": ["\n\n", "\n16", "16.", "16 ."],
        }
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nAuthorization: Bearer bench\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_connection(
    port: int, request: bytes, window: tuple[float, float], out: dict, delay: float = 0.0
):
    """Send requests back to back until the window closes; record those that end inside it."""
    await asyncio.sleep(delay)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start, end = window
    try:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            t1 = time.perf_counter()
            if start <= t1 <= end:
                if head[9:12] == b"200":
                    out["latencies"].append(t1 - t0)
                else:
                    out["errors"] += 1
    finally:
        writer.close()


async def sample_cpu(pid: int, window: tuple[float, float], out: dict) -> None:
    for edge, key in zip(window, ("begin", "end"), strict=True):
        await asyncio.sleep(max(0.0, edge - time.perf_counter()))
        out[key] = (time.perf_counter(), cpu_seconds(pid), time.process_time())


async def drive(
    pid: int, port: int, request: bytes, concurrency: int, duration: float, stagger: float
) -> dict:
    """Ramp up for `warmup` s, then measure over `duration` s of steady load.

    Connection i starts i/c * `stagger` s late: with a fixed server latency, connections that
    start together stay in lockstep, and every latency period the server must answer all c of
    them at once (a burst no real client produces once its own work has spread the requests).
    """
    warmup = 0.7 + stagger
    now = time.perf_counter()
    window = (now + warmup, now + warmup + duration)
    out: dict = {"latencies": [], "errors": 0}
    cpu: dict = {}
    await asyncio.gather(
        sample_cpu(pid, window, cpu),
        *(
            one_connection(port, request, window, out, stagger * i / concurrency)
            for i in range(concurrency)
        ),
    )
    (t0, server0, client0), (t1, server1, client1) = cpu["begin"], cpu["end"]
    lat = sorted(out["latencies"])
    n, wall = len(lat), t1 - t0
    return {
        "requests": n,
        "errors": out["errors"],
        "rps": n / wall,
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * lat[min(n - 1, int(0.99 * n))] if lat else float("nan"),
        "server_cpu_ms_per_req": 1000 * (server1 - server0) / max(n, 1),
        "server_cpu_pct": 100 * (server1 - server0) / wall,
        "client_cpu_pct": 100 * (client1 - client0) / wall,
    }


def measure(
    pid: int, port: int, request: bytes, concurrency: int, duration: float, stagger: float
) -> dict:
    return asyncio.run(drive(pid, port, request, concurrency, duration, stagger))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per concurrency level")
    ap.add_argument("--concurrency", default="1,4,16,64,128")
    ap.add_argument("--latencies", default="0.3,0", help="server latency settings, seconds")
    ap.add_argument("--prompts-per-request", type=int, default=1)
    ap.add_argument(
        "--burst",
        action="store_true",
        help="start all connections at once (lockstep bursts) instead of spread over a latency",
    )
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    mode = "lockstep bursts" if args.burst else "connections spread over one latency"
    print(f"load average before: {os.getloadavg()[0]:.2f}  cores: {os.cpu_count()}  ({mode})")
    header = (
        f"{'latency':>7} {'conc':>5} {'req/s':>8} {'ideal':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'srv cpu ms/req':>14} {'srv cpu%':>8} {'cli cpu%':>8} {'errors':>6}"
    )
    print(header)
    for latency in (float(x) for x in args.latencies.split(",")):
        with running_fault_server(latency=latency, seed=0) as server:
            request = build_request(server.port, args.prompts_per_request)
            for c in levels:
                stagger = 0.0 if args.burst else latency
                r = measure(server.pid, server.port, request, c, args.duration, stagger)
                ideal = f"{c / latency:7.0f}" if latency > 0 else f"{'-':>7}"
                print(
                    f"{latency:7.2f} {c:5d} {r['rps']:8.0f} {ideal} {r['p50_ms']:8.1f} "
                    f"{r['p99_ms']:8.1f} {r['server_cpu_ms_per_req']:14.3f} "
                    f"{r['server_cpu_pct']:8.0f} {r['client_cpu_pct']:8.0f} {r['errors']:6d}",
                    flush=True,
                )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
