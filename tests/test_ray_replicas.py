"""Model replicas on a real Ray cluster: two nodes on loopback, SmolLM2 replicas of one thread
each, a whole `run`, and a node killed with kill -9 in the middle of it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from selfinstruct.errors import ConfigError
from selfinstruct.io import read_jsonl
from selfinstruct.models import ReplicaSettings, load_model
from selfinstruct.models.ray_replicas import MicroBatcher
from selfinstruct.runfolder import RunFolder

try:
    from tests.ray_cluster import ray_env, start_cluster
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from ray_cluster import ray_env, start_cluster


def _ray_missing() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install 'selfinstruct[ray]'; make test installs it)"
    return None


needs_ray = pytest.mark.skipif(_ray_missing() is not None, reason=str(_ray_missing()))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from selfinstruct.cli import main; main()", *args]


def check_run(out: Path, n: int) -> dict:
    """Nothing lost, nothing twice: n instructions, one label and one instance record each,
    and the fine-tuning files written."""
    folder = RunFolder(out)
    instructions = [r["instruction"] for r in read_jsonl(folder.instructions)]
    assert len(instructions) == n and len(set(instructions)) == n
    labels = [
        json.loads(line)["instruction"]
        for line in folder.find_classification_file().read_text().splitlines()
    ]
    assert sorted(labels) == sorted(instructions)
    instances = [r["instruction"] for r in read_jsonl(folder.instances)]
    assert sorted(instances) == sorted(instructions)
    run = json.loads(folder.run_file.read_text())
    assert run["steps"]["prepare"]["complete"]
    return run


@pytest.mark.slow
@needs_ray
def test_two_node_cluster_survives_a_node_killed_mid_run(tmp_path: Path) -> None:
    cluster = start_cluster()
    out = tmp_path / "run"
    args = [
        "run", "--out", str(out), "--num-instructions", "20", "--model", "local",
        "--replicas", "2", "--replica-cpus", "1", "--ray-address", cluster.address,
        "--timeout", "300", "--seed", "7", "--no-decontaminate", "-q",
    ]  # fmt: skip
    killed: dict[str, float] = {}
    try:
        proc = subprocess.Popen(cli(*args), env=cluster.env, stderr=subprocess.PIPE, text=True)
        worker = cluster.nodes[1]

        def kill_worker_node() -> None:
            # Mid-run: once step 1 has kept a few instructions.
            kept = RunFolder(out).instructions
            while proc.poll() is None:
                if kept.exists() and len(kept.read_text().splitlines()) >= 4:
                    pid = worker.raylet_pid()
                    assert pid is not None, "the worker node's raylet is not running"
                    worker.kill()  # kill -9, raylet and its workers at once
                    killed["at"] = time.monotonic()
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_worker_node)
        killer.start()
        _, err = proc.communicate(timeout=900)
        killer.join()
        if proc.returncode != 0:
            # A clean stop is allowed: the same command resumes the run to the end.
            result = subprocess.run(
                cli(*args), env=cluster.env, capture_output=True, text=True, timeout=900
            )
            assert result.returncode == 0, err + result.stderr
    finally:
        cluster.stop()
    assert killed, "the run ended before the worker node could be killed"
    run = check_run(out, 20)
    assert run["model"]["backend"] == "local" and run["model"]["replicas"] == "2"
    members: dict[str, dict] = {}
    for step in run["steps"].values():
        for label, m in step.get("members", {}).items():
            total = members.setdefault(label, {"succeeded": 0, "failed": 0, "out": 0})
            total["succeeded"] += m["succeeded"]
            total["failed"] += sum(m["failures"].values())
            total["out"] += m["taken_out_of_rotation"]
    assert set(members) == {"replica 0", "replica 1"}
    assert members["replica 0"]["succeeded"] > 0 and members["replica 1"]["succeeded"] > 0
    # The replica on the dead node (Ray chose which one) failed its requests in flight and was
    # taken out of rotation.
    hit = [label for label, m in members.items() if m["failed"] >= 1 and m["out"] >= 1]
    assert hit, f"no replica saw the node die: {members}"


@pytest.mark.slow
@needs_ray
def test_a_local_ray_is_started_for_the_run_and_stopped_after(tmp_path: Path) -> None:
    """Without --ray-address: a Ray of our own for this process, gone when the model closes."""
    import ray

    code = (
        "import ray, selfinstruct as si\n"
        "from selfinstruct.models import ReplicaSettings\n"
        f"p = si.Pipeline({str(tmp_path / 'run')!r}, 'local', seed=1,\n"
        "    replicas=ReplicaSettings(replicas=2, num_cpus=1))\n"
        "with p:\n"
        "    m = p.model\n"
        "    assert ray.is_initialized() and len(m.labels) == 2\n"
        "    print(sorted(ray.cluster_resources().items()))\n"
        "assert not ray.is_initialized()\n"
        "print('closed')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=ray_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("closed")
    assert not ray.is_initialized()  # nothing leaked into this process


def test_replicas_of_a_server_model_are_refused() -> None:
    with pytest.raises(ConfigError, match="several `base_url`"):
        load_model("openai:m", base_url="http://127.0.0.1:9/v1", replicas=ReplicaSettings(2))


def test_bad_replica_settings_name_the_option() -> None:
    with pytest.raises(ConfigError, match="`replicas` 0"):
        ReplicaSettings(replicas=0)
    with pytest.raises(ConfigError, match="`replica_cpus`"):
        ReplicaSettings(num_cpus=0)


def _vllm_and_gpu_missing() -> str | None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vLLM is not installed here (no GPU); benchmarks/gpu_check.sh checks this path"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no GPU here; benchmarks/gpu_check.sh checks the vLLM path on a GPU machine"
    except ImportError:
        return "torch is not installed"
    return None


@pytest.mark.skipif(_vllm_and_gpu_missing() is None, reason="vLLM and a GPU are here")
def test_vllm_without_vllm_stops_with_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        cli("run", "--out", str(tmp_path / "run"), "--num-instructions", "5", "-q",
            "--model", "vllm:HuggingFaceTB/SmolLM2-135M-Instruct"),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and ("vLLM is not installed" in lines[0] or "GPU" in lines[0])
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@needs_ray
@pytest.mark.skipif(_vllm_and_gpu_missing() is not None, reason=str(_vllm_and_gpu_missing()))
def test_vllm_replica_runs_all_four_steps(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run(
        cli("run", "--out", str(out), "--model", "vllm:HuggingFaceTB/SmolLM2-135M-Instruct",
            "--replicas", "1", "--num-instructions", "10", "--no-decontaminate", "-q"),
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    check_run(out, 10)


def test_micro_batcher_hands_what_waits_to_one_call() -> None:
    """vLLM replicas batch concurrent calls; the batching is ours, so it is tested here."""
    gate = threading.Event()
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            gate.wait(5)  # the first call holds the worker while the others queue up
        return [x * 10 for x in items]

    batcher = MicroBatcher(run)
    results: dict[int, list[int]] = {}

    def submit(k: int) -> None:
        results[k] = batcher.submit([k, k + 100])

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    while not calls:
        time.sleep(0.01)
    others = [threading.Thread(target=submit, args=(k,)) for k in range(1, 6)]
    for t in others:
        t.start()
    while len(batcher._waiting) < 5:
        time.sleep(0.01)
    gate.set()
    for t in [first, *others]:
        t.join(5)
    assert batcher.batches == [2, 10]  # the five that waited went in one call
    assert all(results[k] == [k * 10, (k + 100) * 10] for k in range(6))


def test_micro_batcher_gives_every_waiting_caller_the_error() -> None:
    def run(items: list[int]) -> list[int]:
        raise RuntimeError("out of memory")

    batcher = MicroBatcher(run)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.submit([1])
