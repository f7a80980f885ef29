"""One Ray replica against two, on the same run: steps 2 and 3 on the embedded SmolLM2 model.

Each configuration starts from the same step-1 file (the first N of our seed instructions,
written as machine instructions, so no configuration depends on what step 1 happened to keep)
and runs step 2 (classification) and step 3 (instances) through `Pipeline` with
`ReplicaSettings(replicas=R, num_cpus=1)`: R Ray actors of one llama.cpp thread each on a local
Ray started for the run. It prints the wall time of the two steps, requests per second, and the
ratio of the two configurations. Model loading and Ray start-up are timed apart (they are paid
once a run, not per request).

On a 2-core machine two one-thread replicas can at best halve the time; a machine shared with
other work (as ours is) gets less, and says so in the ratio.

    .venv/bin/python benchmarks/bench_replicas.py            # 16 instructions, a few minutes
    .venv/bin/python benchmarks/bench_replicas.py --quick    # 6 instructions

Needs the [ray] extra. Ray runs on this machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import selfinstruct as si  # noqa: E402
from selfinstruct.models import ReplicaSettings  # noqa: E402
from selfinstruct.runfolder import RunFolder  # noqa: E402


def step1_file(folder: RunFolder, n: int) -> None:
    folder.path.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, task in enumerate(si.seeds.default()[:n]):
        record = {
            "instruction": task.instruction,
            "most_similar": {},
            "avg_similarity_score": 0.0,
            "metadata": {},
            "request_idx": i,
        }
        lines.append(json.dumps(record) + "\n")
    folder.instructions.write_text("".join(lines))


def one(template: Path, replicas: int) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix=f"bench-r{replicas}-"))
    shutil.rmtree(out)
    shutil.copytree(template, out)
    settings = ReplicaSettings(replicas=replicas, num_cpus=1)
    start = time.perf_counter()
    with si.Pipeline(out, "local", seed=1, replicas=settings) as run:
        run.model  # noqa: B018 - Ray up, replicas placed, models loaded
        ready = time.perf_counter()
        classify = run.identify_classification()
        instances = run.generate_instances(max_instances_to_generate=3)
        done = time.perf_counter()
    requests = classify.usage.requests + instances.usage.requests
    shutil.rmtree(out, ignore_errors=True)
    return {
        "start_s": ready - start,
        "steps_s": done - ready,
        "requests": requests,
        "requests_per_s": requests / (done - ready),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 instructions instead of 16")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each configuration")
    args = parser.parse_args()
    n = 6 if args.quick else 16
    template = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    step1_file(RunFolder(template), n)
    print(f"steps 2 and 3 over {n} instructions, SmolLM2-135M, one llama.cpp thread a replica")
    print(f"machine: {os.cpu_count()} CPUs (shared with other work: figures are noisy)")
    results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for _ in range(args.repeat):
        for replicas in (1, 2):  # interleaved, so that load on the machine hits both alike
            results[replicas].append(one(template, replicas))
    shutil.rmtree(template, ignore_errors=True)
    print(f"{'replicas':>8} {'start s':>8} {'steps s':>8} {'requests':>8} {'req/s':>7}")
    med = {}
    for replicas, runs in results.items():
        med[replicas] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        m = med[replicas]
        print(
            f"{replicas:>8} {m['start_s']:>8.1f} {m['steps_s']:>8.1f} {m['requests']:>8.0f}"
            f" {m['requests_per_s']:>7.2f}"
        )
    ratio = med[1]["steps_s"] / med[2]["steps_s"]
    print(f"2 replicas vs 1: {ratio:.2f}x faster (ideal on 2 idle cores: 2.00x)")


if __name__ == "__main__":
    main()
