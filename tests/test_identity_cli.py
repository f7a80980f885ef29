"""The run's identity and the run-following defaults from the command line, the original
release's shell scripts run verbatim, SIGTERM, and the seed tools' small promises."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from selfinstruct import seeds

try:
    from tests.helpers import toy_seeds
    from tests.servers.openai_fault_server import running_fault_server
except ImportError:  # pytest put tests/ itself on sys.path
    from helpers import toy_seeds
    from servers.openai_fault_server import running_fault_server

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from selfinstruct.cli import main; main()"]


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def generations(server) -> int:
    return sum(1 for r in server.read_log() if r.get("endpoint") != "/v1/models")


def test_a_changed_rerun_is_one_line_naming_each_flag_and_the_ways_out(tmp_path: Path) -> None:
    mine = tmp_path / "my_seeds.jsonl"
    seeds.write_seed_tasks(toy_seeds(12), mine)
    out = tmp_path / "run"
    with running_fault_server(seed=1, log_path=tmp_path / "log.jsonl") as server:
        common = ["--model", "openai:m", "--base-url", server.base_url, "--api-key", "k", "-q"]
        first = cli(
            "generate-instructions", "--out", str(out), "--num-instructions", "4",
            "--seed-tasks", str(mine), "--similarity-threshold", "0.7", *common,
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        sent = generations(server)
        again = cli("generate-instructions", "--out", str(out), "--num-instructions", "8",
                    "--similarity-threshold", "0.3", *common)  # fmt: skip
        assert generations(server) == sent  # refused before any model call
    assert again.returncode == 2
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1, again.stderr
    assert "--similarity-threshold 0.3 (the run: 0.7)" in lines[0]
    assert "--seed-tasks" not in lines[0]  # left out: the run's own seed tasks, not the default
    assert "--out" in lines[0] and "--continue-anyway" in lines[0]
    # The advice works: --continue-anyway carries on and the history says what changed.
    with running_fault_server(seed=2) as server:
        common = ["--model", "openai:m", "--base-url", server.base_url, "--api-key", "k", "-q"]
        mixed = cli("generate-instructions", "--out", str(out), "--num-instructions", "6",
                    "--similarity-threshold", "0.3", "--continue-anyway", *common)  # fmt: skip
    assert mixed.returncode == 0, mixed.stderr
    history = json.loads((out / "run.json").read_text())["history"]
    assert history[-1]["changed"][0]["setting"] == "similarity_threshold"


def test_run_takes_every_steps_data_options_and_ends_with_the_next_command(tmp_path) -> None:
    out = tmp_path / "run"
    with running_fault_server(seed=4) as server:
        result = cli(
            "run", "--out", str(out), "--model", "openai:m", "--base-url", server.base_url,
            "--api-key", "k", "--num-instructions", "6", "--similarity-threshold", "0.8",
            "--num-prompt-instructions", "6", "--max-instances-per-task", "2",
            "--no-decontaminate",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["instructions"]["similarity_threshold"] == 0.8
    assert config["instructions"]["num_prompt_instructions"] == 6
    assert config["prepare"]["max_instances_per_task"] == 2
    tail = result.stderr.strip().splitlines()
    assert any(
        re.match(r"training examples: \d+ generated, 239 from the seed tasks", t) for t in tail
    )
    assert any(t.startswith("wrote ") and t.endswith("alpaca_data.json") for t in tail)
    assert tail[-1].startswith(f"next: selfinstruct report {out}")


# The command lines of the release's scripts/*.sh (github.com/yizhongw/self-instruct), with
# ${batch_dir} expanded as the shell does, `python self_instruct/X.py` read as `selfinstruct
# X.py`, and step 1's 50000 made small.
BATCH_DIR = "data/gpt3_generations/"
RELEASE_COMMANDS = [
    f"bootstrap_instructions.py --batch_dir {BATCH_DIR} --num_instructions_to_generate 12"
    ' --seed_tasks_path data/seed_tasks.jsonl --engine "davinci"',
    f'identify_clf_or_not.py --batch_dir {BATCH_DIR} --engine "davinci" --request_batch_size 5',
    f"generate_instances.py --batch_dir {BATCH_DIR} --input_file"
    " machine_generated_instructions.jsonl --output_file machine_generated_instances.jsonl"
    ' --max_instances_to_gen 5 --engine "davinci" --request_batch_size 5',
    f"prepare_for_finetuning.py --instance_files {BATCH_DIR}/machine_generated_instances.jsonl"
    f" --classification_type_files {BATCH_DIR}/is_clf_or_not_davinci_template_1.jsonl"
    f" --output_dir {BATCH_DIR}/finetuning_data --include_seed_tasks"
    " --seed_tasks_path data/seed_tasks.jsonl",
]


def test_the_release_shell_scripts_run_verbatim(tmp_path: Path) -> None:
    """Run from the folder that holds data/, as the release's README says."""
    (tmp_path / "data").mkdir()
    seeds.write_seed_tasks(toy_seeds(12), tmp_path / "data" / "seed_tasks.jsonl")
    with running_fault_server(seed=5) as server:
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "k"}
        for line in RELEASE_COMMANDS:
            result = cli(*shlex.split(line), cwd=tmp_path, env=env)
            assert result.returncode == 0, f"{line}: {result.stderr}"
    batch = tmp_path / BATCH_DIR
    assert (batch / "is_clf_or_not_davinci_template_1.jsonl").exists()
    data = json.loads((batch / "run.json").read_text())
    assert data["identity"]["model"] == "openai:davinci?api=completions"
    assert data["steps"]["prepare"]["counts"]["seed_instances_included"] == 12
    assert (batch / "finetuning_data" / "alpaca_data.json").exists()
    assert not (batch / "data").exists()  # no batch_dir joined twice


def test_sigterm_ends_like_ctrl_c_with_one_line_and_the_usage_kept(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with running_fault_server(seed=6, latency=0.2, log_path=tmp_path / "log.jsonl") as server:
        proc = subprocess.Popen(
            [*CLI, "generate-instructions", "--out", str(out), "--model", "openai:m",
             "--base-url", server.base_url, "--api-key", "k", "--num-instructions", "500",
             "--concurrency", "2", "-q"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while generations(server) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert stderr.strip().splitlines() == [
        "terminated: interrupted: everything accepted so far is saved; rerun the same command"
        " to resume"
    ]
    step = json.loads((out / "run.json").read_text())["steps"]["instructions"]
    assert step["interrupted"] == 1
    assert step["usage"]["requests"] >= 5


def test_min_rating_any_case_and_judge_named_on_the_command_line(tmp_path: Path) -> None:
    from selfinstruct.records import example_key

    out = tmp_path / "run"
    with running_fault_server(seed=7) as server:
        made = cli(
            "run", "--out", str(out), "--model", "openai:m", "--base-url", server.base_url,
            "--api-key", "k", "--num-instructions", "4", "--no-decontaminate", "-q",
        )  # fmt: skip
    assert made.returncode == 0, made.stderr
    examples = [
        json.loads(x)
        for x in (out / "finetuning_data" / "all_generated_instances.jsonl")
        .read_text()
        .splitlines()
    ]
    with open(out / "judgments.jsonl", "w") as f:
        for judge in ("openai:a?api=chat", "openai:b?api=chat"):
            for e in examples:
                key = example_key(e["instruction"], e["input"], e["output"])
                f.write(json.dumps({"key": key, "rating": "A", "model": judge}) + "\n")
    two = cli("prepare", "--batch-dir", str(out), "--min-rating", "b", "--no-decontaminate")
    assert two.returncode == 2
    assert len(two.stderr.strip().splitlines()) == 1 and "--judge" in two.stderr
    ok = cli("prepare", "--batch-dir", str(out), "--min-rating", "b", "--judge", "a",
             "--no-decontaminate")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "seed-task examples are kept unrated" in ok.stderr


def test_seeds_validate_counts_blank_lines_and_export_asks_before_overwriting(tmp_path) -> None:
    txt = tmp_path / "seeds.txt"
    txt.write_text(
        "Write a limerick about tea\n\n\nExplain how tides work\nwrite a limerick about tea\n"
    )
    result = cli("seeds", "validate", str(txt))
    assert result.returncode == 1
    assert f"{txt}:5: field 'instruction': repeats line 1" in result.stderr
    target = tmp_path / "out.jsonl"
    target.write_text("mine\n")
    refused = cli("seeds", "export", str(target))
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert target.read_text() == "mine\n"
    assert cli("seeds", "export", str(target), "--force").returncode == 0
    assert len(target.read_text().splitlines()) == 175
