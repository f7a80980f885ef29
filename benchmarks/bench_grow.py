"""Step 1 grown from the seeds to 52,000 instructions at concurrency 64 against a 300 ms server:
ours beside a baseline commit, in one run.

The fault server (tests/servers/openai_fault_server.py) runs as its own process with a fixed
0.3 s latency and no faults. Each contender runs `generate_instructions` in a child process of
its own (its own interpreter, so the baseline imports the baseline's package), through the real
`openai` client and the completions API with the paper's 5 prompts a request, into a fresh
folder, until the pool holds the target. The baseline is the package as it was at a git commit
(`--baseline-ref`, default: the last commit before step 1 decided in send order), taken with
`git archive` into a temporary folder.

Printed for each: wall time, requests, the latency floor (requests x latency / concurrency: the
time the server alone needs at that concurrency), the child's CPU time and its CPU use (CPU
seconds per wall second: above 100 % means the second core worked too).

    .venv/bin/python benchmarks/bench_grow.py                  # about 3 minutes
    .venv/bin/python benchmarks/bench_grow.py --n 10000        # a shorter run

All traffic goes to 127.0.0.1. Linux or macOS; needs git for the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LATENCY = 0.3
#: step 1 before its answers were decided in send order (the parent of the ordered window)
BASELINE_REF = "bf068ed"


def child(src: str, url: str, out: str, n: int, concurrency: int) -> None:
    """One contender's run, printing one JSON line of figures."""
    sys.path.insert(0, src)
    import selfinstruct
    from selfinstruct.engine import EngineSettings
    from selfinstruct.models.openai import OpenAIModel
    from selfinstruct.seeds import default as default_seeds
    from selfinstruct.steps import StepContext
    from selfinstruct.steps.instructions import InstructionSettings, generate_instructions

    assert selfinstruct.__file__.startswith(src), selfinstruct.__file__
    model = OpenAIModel("bench", api="completions", base_url=url, api_key="bench", timeout=120)
    ctx = StepContext(model=model, engine=EngineSettings(concurrency=concurrency))
    settings = InstructionSettings(num_instructions=n, max_stalled_requests=10**9)
    cpu0, t0 = time.process_time(), time.perf_counter()
    report = generate_instructions(ctx, default_seeds(), out, settings)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert report.engine is not None and report.complete, report.to_dict()
    figures = {
        "wall": wall,
        "cpu": cpu,
        "requests": report.engine.requests,
        "accepted": report.counts["accepted_now"],
        "too_similar": report.dropped.get("too_similar", 0),
    }
    print("RESULT " + json.dumps(figures), flush=True)


def baseline_src(ref: str, into: Path) -> Path:
    """The package's source as it was at `ref`."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run_child(src: Path, url: str, out: Path, n: int, concurrency: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [sys.executable, __file__, "--child", str(src), url, str(out)]
    args += ["--n", str(n), "--concurrency", str(concurrency)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, cwd=out.parent)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=52_000, help="instructions to grow to")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--baseline-ref", default=BASELINE_REF, help="git commit of the baseline")
    ap.add_argument("--rounds", type=int, default=1, help="baseline and ours, alternated")
    ap.add_argument("--child", nargs=3, metavar=("SRC", "URL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, n=args.n, concurrency=args.concurrency)
        return 0

    sys.path.insert(0, str(ROOT))
    from tests.servers.openai_fault_server import running_fault_server

    print(
        f"load average before: {os.getloadavg()[0]:.2f}  cores: {os.cpu_count()}  "
        f"server latency {LATENCY} s, completions API (5 prompts a request), "
        f"concurrency {args.concurrency}, grow to {args.n:,} instructions"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_grow_") as tmp:
        root = Path(tmp)
        contenders = {
            f"baseline {args.baseline_ref}": baseline_src(args.baseline_ref, root / "baseline"),
            "ours (working tree)": ROOT / "src",
        }
        with running_fault_server(latency=LATENCY, seed=0) as server:
            for k in range(args.rounds):
                for name, src in contenders.items():
                    out = root / f"run{k}_{len(rows)}"
                    r = run_child(src, server.base_url, out, args.n, args.concurrency)
                    r["name"] = name
                    rows.append(r)
                    print(f"  {name}: {r['wall']:.1f} s, {r['requests']:,} requests", flush=True)
    print()
    print(
        "| contender | wall s | requests | latency floor s | wall / floor | instr/min "
        "| CPU s | CPU use |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        floor = r["requests"] * LATENCY / args.concurrency
        print(
            f"| {r['name']} | {r['wall']:.1f} | {r['requests']:,} | {floor:.1f} "
            f"| {r['wall'] / floor:.2f} | {60 * r['accepted'] / r['wall']:,.0f} "
            f"| {r['cpu']:.1f} | {100 * r['cpu'] / r['wall']:.0f} % |"
        )
    base = [r["wall"] for r in rows if r["name"].startswith("baseline")]
    ours = [r["wall"] for r in rows if r["name"].startswith("ours")]
    print()
    ratio = sorted(ours)[len(ours) // 2] / sorted(base)[len(base) // 2]
    print(f"ours / baseline wall time (medians): {ratio:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
