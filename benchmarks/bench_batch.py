"""Step 2 through the Batch API beside the online engine, against one loopback server.

The batch server (tests/servers/batch_server.py, its own process) answers both the online
endpoints and /v1/files + /v1/batches with the same content, no latency and no faults. A run
folder gets N synthetic instructions; step 2 (classification, 5 prompts a request, the
completions API) runs once online at concurrency 64 and once in Batch API mode (one batch,
polled every 0.05 s), each in a fresh copy. Printed side by side: requests, wall time, this
process's CPU per request (engine, client, step, and for the batch: building the file,
digests, batches.jsonl, reading the output), and the cost of the tokens used at gpt-4o-mini's
list price online (0.15, 0.60 USD per million) beside the batch price (half). The online
engine is the baseline: the batch path must not cost more CPU per request than it does.
The labels written are compared too (the same lines; online they are in arrival order).

    .venv/bin/python benchmarks/bench_batch.py            # 20,000 instructions, about 2 min
    .venv/bin/python benchmarks/bench_batch.py --quick    # 4,000 instructions
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from servers.batch_server import running_batch_server  # noqa: E402

import selfinstruct as si  # noqa: E402
from selfinstruct.runfolder import RunFolder  # noqa: E402

MODEL = "openai:fault-server-model?api=completions"
PRICE = (0.15, 0.60)


def make_folder(path: Path, n: int) -> None:
    path.mkdir(parents=True)
    with open(RunFolder(path).instructions, "w") as f:
        for i in range(n):
            f.write(json.dumps({"instruction": f"Describe case {i} of the plan in a short note."}))
            f.write("\n")


def run(folder: Path, url: str, batch: bool) -> dict:
    pipeline = si.Pipeline(
        folder,
        MODEL,
        base_url=url,
        api_key="k",
        engine=si.EngineSettings(concurrency=64),
        batch_api=si.BatchSettings(poll_seconds=0.05) if batch else False,
        price=PRICE,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    with pipeline:
        report = pipeline.identify_classification()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    step = json.loads(RunFolder(folder).run_file.read_text())["steps"]["classify"]
    return {
        "requests": report.usage.requests,
        "wall": wall,
        "cpu_ms": 1000 * cpu / max(1, report.usage.requests),
        "cost": step["cost_usd"],
        # online, labels are written as answers arrive: compare them as sets
        "labels": sorted(
            RunFolder(folder).classification_file_for("fault-server-model").read_text().splitlines()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", type=int, default=None)
    args = parser.parse_args()
    n = args.n or (4_000 if args.quick else 20_000)
    with tempfile.TemporaryDirectory() as tmp, running_batch_server(no_vary_repeats=True) as srv:
        base = Path(tmp) / "base"
        make_folder(base, n)
        results = {}
        for name, batch in (("online, concurrency 64", False), ("Batch API", True)):
            folder = Path(tmp) / name.replace(" ", "_").replace(",", "")
            shutil.copytree(base, folder)
            results[name] = run(folder, srv.base_url, batch)
    online, batched = results["online, concurrency 64"], results["Batch API"]
    print(f"step 2 on {n:,} instructions ({online['requests']:,} requests of 5 prompts)")
    print(f"{'':24}{'requests':>10}{'wall s':>9}{'CPU ms/request':>16}{'cost USD':>11}")
    for name, r in results.items():
        print(
            f"{name:24}{r['requests']:>10,}{r['wall']:>9.1f}{r['cpu_ms']:>16.2f}{r['cost']:>11.4f}"
        )
    print(f"batch / online: CPU per request x{batched['cpu_ms'] / online['cpu_ms']:.2f},"
          f" cost x{batched['cost'] / online['cost']:.2f}")  # fmt: skip
    print("same labels:", online["labels"] == batched["labels"])


if __name__ == "__main__":
    main()
