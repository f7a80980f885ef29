"""The library's entrance: the public names, the Pipeline over a run folder (same files, budget
and run.json as the CLI), the run folder's lock, and the shared options of every command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import click
import pytest

import selfinstruct as si
from selfinstruct.cli import cli

try:
    from tests.servers.openai_fault_server import running_fault_server
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from servers.openai_fault_server import running_fault_server

PUBLIC = {
    "TransientModelError",
    "ScriptedModel",
    "Scores",
    "PrepareSettings",
    "JudgeSettings",
    "InstructionSettings",
    "InstanceSettings",
    "EvalResult",
    "ClassifySettings",
    "BatchSettings",
    "BudgetExhausted",
    "Completion",
    "ConfigError",
    "DataFileError",
    "EngineSettings",
    "MissingExtraError",
    "Model",
    "ModelError",
    "ModelInfo",
    "Pipeline",
    "RougeLIndex",
    "RunFolder",
    "RunIdentityError",
    "RunLockedError",
    "Sampling",
    "SeedFileError",
    "SeedTask",
    "SelfInstructError",
    "StepReport",
    "Example",
    "Rating",
    "RunRecord",
    "__version__",
    "evaluate",
    "load_model",
    "rouge_l",
    "seeds",
}


def test_public_names_are_exactly_these() -> None:
    assert set(si.__all__) == PUBLIC
    assert len(si.__all__) == len(PUBLIC)
    for name in si.__all__:
        assert getattr(si, name) is not None
    # Nothing else public: every other attribute is a module (an implementation detail).
    extra = {
        name for name, value in vars(si).items() if not name.startswith("_") and name not in PUBLIC
    }
    assert all(isinstance(getattr(si, name), types.ModuleType) for name in extra), extra
    assert callable(si.evaluate) and not isinstance(si.evaluate, types.ModuleType)


def test_every_public_error_is_a_selfinstruct_error() -> None:
    for name in PUBLIC:
        value = getattr(si, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, si.SelfInstructError), name


def _no_timestamps(record: dict) -> dict:
    record = json.loads(json.dumps(record))
    for key in ("metadata", "instance_metadata", "instruction_metadata"):
        meta = record.get(key)
        if isinstance(meta, dict):
            meta.pop("created_at", None)
    return record


def _read(path: Path) -> list[dict]:
    return [_no_timestamps(json.loads(line)) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_pipeline_makes_the_same_files_as_the_cli(tmp_path: Path) -> None:
    """The four steps from Python and `selfinstruct run` give the same records."""
    # A fresh server for each run: its answers depend on the order of the requests it sees.
    lib = tmp_path / "lib"
    with running_fault_server(seed=3, latency=0.0) as server:
        common = {"base_url": server.base_url, "api_key": "k"}
        with si.Pipeline(lib, "openai:m", engine=one_at_a_time(), **common) as run:
            run.generate_instructions(12, request_batch_size=5)
            run.identify_classification()
            run.generate_instances()
            report = run.prepare(include_seed_tasks=True)
        assert report.counts["finetuning_examples"] > 0
    cli_out = tmp_path / "cli"
    with running_fault_server(seed=3, latency=0.0) as server:
        subprocess.run(
            [
                sys.executable, "-c", "from selfinstruct.cli import main; main()", "run",
                "--out", str(cli_out), "--model", "openai:m", "--base-url", server.base_url,
                "--api-key", "k", "--num-instructions", "12", "--concurrency", "1", "--quiet",
            ],
            check=True,
        )  # fmt: skip
    a, b = si.RunFolder(lib), si.RunFolder(cli_out)
    for path_a, path_b in [
        (a.instructions, b.instructions),
        (a.instances, b.instances),
        (a.all_instances, b.all_instances),
        (a.chat_finetuning, b.chat_finetuning),
    ]:
        assert _read(path_a) == _read(path_b), path_a.name
    assert json.loads(a.alpaca.read_text()) == json.loads(b.alpaca.read_text())
    run_a, run_b = (json.loads(f.run_file.read_text()) for f in (a, b))
    assert run_a["steps"].keys() == run_b["steps"].keys()
    for step in run_a["steps"]:
        # Answers that arrive after the pool is full depend on timing, not on the data.
        counts_a, counts_b = (
            {k: v for k, v in r["steps"][step]["counts"].items() if k != "answers_not_needed"}
            for r in (run_a, run_b)
        )
        assert counts_a == counts_b, step
    # Step 1 may send one request more near its end, by thread timing (answers_not_needed):
    # the data above are identical, the usage within that one request.
    assert abs(run_a["usage"]["requests"] - run_b["usage"]["requests"]) <= 1
    assert "api_key" not in a.run_file.read_text()


def one_at_a_time() -> si.EngineSettings:
    # One request at a time, as the CLI run below, so that both draw the same prompts.
    return si.EngineSettings(concurrency=1)


def test_pipeline_budget_is_shared_by_the_steps(tmp_path: Path, scripted) -> None:
    """Step 1 spends most of the budget; step 2 stops at what is left, with BudgetExhausted."""
    counter = iter(range(10_000))

    def answer(prompt: str) -> str:
        if "Is it classification?" in prompt:
            return "No"
        n = next(counter)
        return f"Sketch a tale of {n} dragons{n} and {n} castles{n} for kids{n}"

    model = scripted(answer)
    run = si.Pipeline(tmp_path, model, engine=si.EngineSettings(max_requests=6), seeds=_seeds())
    report = run.generate_instructions(4)
    assert report.counts["instructions_in_file"] == 4
    spent = report.engine.requests
    assert spent < 6
    with pytest.raises(si.BudgetExhausted):
        run.identify_classification()
    data = json.loads(si.RunFolder(tmp_path).run_file.read_text())
    assert data["steps"]["instructions"]["engine"]["requests"] == spent
    assert data["steps"]["classify"]["engine"]["requests"] == 6 - spent
    assert data["steps"]["classify"]["engine"]["last_budget_stop"] == "max_requests"


def _seeds() -> list[si.SeedTask]:
    from selfinstruct.records import Instance

    verbs = ["Summarize", "Translate", "Classify", "Explain", "Rewrite", "Describe", "List"]
    nouns = ["poem", "recipe", "email", "contract", "tweet", "essay", "song", "joke"]
    return [
        si.SeedTask(
            id=f"s{i}",
            name=f"s{i}",
            instruction=f"{verb} the {noun} in plain words for a child.",
            instances=(Instance("", "ok"),),
            is_classification=False,
        )
        for i, (verb, noun) in enumerate(zip(verbs * 2, nouns + nouns[::-1], strict=False))
    ]


def test_run_folder_names_every_file(tmp_path: Path) -> None:
    rf = si.RunFolder(tmp_path)
    assert rf.instructions.name == "machine_generated_instructions.jsonl"
    assert rf.instances.name == "machine_generated_instances.jsonl"
    assert rf.classification_file_for("gpt-4o mini").name == (
        "is_clf_or_not_gpt-4o_mini_template_1.jsonl"
    )
    assert rf.all_instances == tmp_path / "finetuning_data" / "all_generated_instances.jsonl"
    assert rf.gpt3_finetuning(7).name == "gpt3_finetuning_data_7.jsonl"
    assert not any(tmp_path.iterdir())  # naming files touches nothing
    with pytest.raises(si.DataFileError, match="identify-clf"):
        rf.find_classification_file()


def test_second_process_on_a_folder_refuses_at_once(tmp_path: Path) -> None:
    holder = si.RunFolder(tmp_path / "run")
    code = (
        "import sys, selfinstruct as si\n"
        "with si.RunFolder(sys.argv[1]).lock():\n"
        "    print('held', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(holder.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline().strip() == b"held"
        with pytest.raises(si.RunLockedError, match=f"pid {proc.pid}"), holder.lock():
            pass
        # The same process may take the lock again (a pipeline and its steps).
        other = si.RunFolder(tmp_path / "other")
        with other.lock(), other.lock():
            pass
    finally:
        proc.kill()
        proc.wait()
    with holder.lock():  # the OS released the killed holder's lock
        pass


@pytest.mark.slow
def test_cli_refuses_a_busy_folder_and_resumes_after_kill_9(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with running_fault_server(seed=5, latency=0.2) as server:
        argv = [
            sys.executable, "-c", "from selfinstruct.cli import main; main()",
            "generate-instructions", "--out", str(out), "--model", "openai:m",
            "--base-url", server.base_url, "--api-key", "k", "--concurrency", "2", "--quiet",
        ]  # fmt: skip
        first = subprocess.Popen([*argv, "--num-instructions", "400"])
        try:
            path = si.RunFolder(out).instructions
            deadline = time.monotonic() + 60
            while not (path.exists() and path.read_bytes().count(b"\n") >= 3):
                assert time.monotonic() < deadline and first.poll() is None
                time.sleep(0.1)
            started = time.monotonic()
            second = subprocess.run(
                [*argv, "--num-instructions", "400"], capture_output=True, text=True
            )
            assert time.monotonic() - started < 15
            assert second.returncode == 5
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and "in use by another selfinstruct process" in lines[0]
            assert f"pid {first.pid}" in lines[0]
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
        kept = [json.loads(x)["instruction"] for x in whole(path)]
        third = subprocess.run([*argv, "--num-instructions", str(len(kept) + 5)])
        assert third.returncode == 0
    after = [json.loads(x)["instruction"] for x in path.read_text().splitlines()]
    assert after[: len(kept)] == kept
    assert len(after) == len(kept) + 5 == len(set(after))


def whole(path: Path) -> list[str]:
    data = path.read_text()
    return data[: data.rfind("\n") + 1].splitlines()


MODEL_COMMANDS = ("generate-instructions", "identify-clf", "generate-instances", "run", "evaluate")
SHARED = {
    "--model",
    "--base-url",
    "--api-key",
    "--timeout",
    "--concurrency",
    "--max-attempts",
    "--rpm",
    "--tpm",
    "--max-requests",
    "--max-tokens-total",
    "--price",
    "--quiet",
    "--seed",
}


def _opts(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in getattr(p, "opts", [])}


@pytest.mark.parametrize("name", MODEL_COMMANDS + ("judge",))
def test_every_model_command_takes_the_shared_options(name: str) -> None:
    command = cli.commands.get(name)
    if command is None:
        pytest.fail(f"no command {name}")
    assert SHARED <= _opts(command), SHARED - _opts(command)


def test_shared_options_are_declared_once() -> None:
    """The same option object serves every command: one help text, one default."""
    helps = {}
    for name in MODEL_COMMANDS:
        for p in cli.commands[name].params:
            if isinstance(p, click.Option) and set(p.opts) & SHARED - {"--seed"}:
                helps.setdefault(p.opts[0], set()).add((p.help, str(p.default)))
    assert helps and all(len(v) == 1 for v in helps.values()), helps


def test_the_readme_lists_every_field_of_each_steps_settings() -> None:
    import dataclasses
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for cls in (
        si.InstructionSettings,
        si.ClassifySettings,
        si.InstanceSettings,
        si.PrepareSettings,
        si.JudgeSettings,
    ):
        (row,) = [line for line in readme.splitlines() if f"| `{cls.__name__}`:" in line]
        listed = set(re.findall(r"`(\w+)`", row.split(f"`{cls.__name__}`:", 1)[1]))
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields <= listed, f"{cls.__name__}: README lacks {sorted(fields - listed)}"
