"""A real multi-node Ray cluster on loopback for tests and benchmarks (/work/shared's recipe:
token auth, each node on its own 127.x address, each with its own temp dir; nodes stopped by
the pids found under that temp dir, never with a global `ray stop`)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ray_env() -> dict[str, str]:
    """What every process of the cluster (and its drivers) runs with."""
    src = str(ROOT / "src")
    path = os.environ.get("PYTHONPATH", "")
    return {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": src + (os.pathsep + path if path else ""),
        # Notice a dead node within a few seconds, not the default half minute.
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
    }


@dataclass
class Node:
    ip: str
    temp_dir: Path

    def pids(self) -> list[int]:
        """Every process of this node: those whose command line names its temp dir or IP."""
        marks = (str(self.temp_dir), f"node_ip_address={self.ip}", f"node-ip-address={self.ip}")
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(m in cmd for m in marks):
                found.append(int(proc.name))
        return found

    def raylet_pid(self) -> int | None:
        for pid in self.pids():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "raylet" in cmd.split("\0")[0]:
                return pid
        return None

    def kill(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        time.sleep(0.2)
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)


def _ray(*args: str, env: dict[str, str]) -> None:
    ray_bin = Path(sys.executable).with_name("ray")
    result = subprocess.run(
        [str(ray_bin), *args], env=env, capture_output=True, text=True, timeout=180
    )
    if result.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def start_cluster(ips: tuple[str, ...] = ("127.0.0.42", "127.0.0.43"), cpus: int = 1) -> Cluster:
    """A head on ips[0] and a worker on each other IP, `cpus` CPUs each."""
    env = {**ray_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = _free_port(ips[0])
    cluster = Cluster(f"{ips[0]}:{port}", env)
    try:
        for i, ip in enumerate(ips):
            node = Node(ip, Path(tempfile.mkdtemp(prefix=f"sir{i}-")))
            cluster.nodes.append(node)
            common = [
                f"--node-ip-address={ip}",
                f"--num-cpus={cpus}",
                f"--temp-dir={node.temp_dir}",
            ]
            if i == 0:
                _ray(
                    "start",
                    "--head",
                    f"--port={port}",
                    "--include-dashboard=false",
                    *common,
                    env=env,
                )
            else:
                _ray("start", f"--address={cluster.address}", *common, env=env)
    except BaseException:
        cluster.stop()
        raise
    return cluster
