"""Bad input gets one clear line naming the file, line or option, a non-zero exit, and no
half-written output."""

from __future__ import annotations

import re

from conftest import free_port
from helpers import run_cli

selfinstruct = run_cli


def test_malformed_seed_file_stops_before_any_work(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        '{"id": "a", "name": "a", "instruction": "Do a thing", "instances": '
        '[{"input": "", "output": "x"}], "is_classification": false}\n'
        '{"id": "b", "name": "b", "instruction": "Do another", "instances": [{"input": ""}],'
        ' "is_classification": false}\n'
    )
    out = tmp_path / "run"
    result = selfinstruct("run", "--out", str(out), "--seed-tasks", str(seeds))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{seeds}:2: field 'instances[0].output'" in lines[0]
    assert not out.exists()


def test_seeds_validate_reports_every_problem(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Fine one here"}\nnot json\n{"instruction": ""}\n')
    result = selfinstruct("seeds", "validate", str(seeds))
    assert result.returncode == 1
    assert f"{seeds}:2: not valid JSON" in result.stderr
    assert f"{seeds}:3: field 'instruction'" in result.stderr


def test_a_plain_list_of_instructions_is_a_valid_seed_file(tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("Write a limerick about tea\n\nExplain how tides work\n")
    result = selfinstruct("seeds", "validate", str(seeds))
    assert result.returncode == 0, result.stderr
    assert "2 tasks" in result.stdout


def test_bad_option_names_the_option(tmp_path):
    result = selfinstruct("run", "--out", str(tmp_path / "r"), "--num-instructions", "zero")
    assert result.returncode == 2
    assert "--num-instructions" in result.stderr
    result = selfinstruct("run", "--out", str(tmp_path / "r"), "--model", "nosuch:thing")
    assert result.returncode == 2
    assert "unknown backend 'nosuch'" in result.stderr
    assert not (tmp_path / "r").exists()


def test_unreachable_server_is_one_clear_line(tmp_path):
    port = free_port()  # nothing listens there
    out = tmp_path / "r"
    result = selfinstruct(
        "run",
        "--out",
        str(out),
        "--model",
        "openai:any",
        "--base-url",
        f"http://127.0.0.1:{port}/v1",
        "--api-key",
        "sk-secret-value-123",
    )
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach http://127.0.0.1" in lines[0]
    assert "sk-secret-value-123" not in result.stderr + result.stdout
    assert not out.exists()


def test_credentials_in_the_base_url_are_refused_without_echoing_them(tmp_path):
    out = tmp_path / "r"
    url = f"http://user:pw-secret-42@127.0.0.1:{free_port()}/v1"
    result = selfinstruct("run", "--out", str(out), "--model", "openai:any", "--base-url", url)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "a user:password in the URL" in lines[0] and "--api-key" in lines[0]
    assert "pw-secret-42" not in result.stderr + result.stdout
    assert not out.exists()


def test_library_errors_name_settings_and_the_cli_shows_flags(tmp_path):
    import ast
    from pathlib import Path

    import pytest

    from selfinstruct.cli import for_the_command_line
    from selfinstruct.errors import ConfigError
    from selfinstruct.models.spec import parse_spec

    with pytest.raises(ConfigError) as raised:
        parse_spec("bogus:x")
    assert raised.value.settings == ["model"] and "--" not in str(raised.value)
    assert for_the_command_line("`max_length` 8: too short; `nothing_known`") == (
        "--max-length 8: too short; nothing_known"
    )
    result = selfinstruct("generate-instructions", "--out", str(tmp_path / "r"), "--model", "x:y")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --model 'x:y': unknown backend")

    # No error the library raises spells a flag: the command line adds them (a whole command
    # it suggests, 'selfinstruct run --out X', is not a flag of the call that failed).
    package = Path(__file__).resolve().parents[1] / "src" / "selfinstruct"
    found = []
    for path in package.rglob("*.py"):
        if "cli" in path.relative_to(package).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                for part in ast.walk(node.exc):
                    text = part.value if isinstance(part, ast.Constant) else None
                    if isinstance(text, str) and "selfinstruct " in text:
                        continue
                    if isinstance(text, str) and re.search(r"(^|[\s(])--[a-z]", text):
                        found.append(f"{path.name}:{node.lineno}: {text.strip()}")
    assert not found, "\n".join(found)
