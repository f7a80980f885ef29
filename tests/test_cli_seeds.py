from __future__ import annotations

from click.testing import CliRunner

from selfinstruct.cli import cli
from selfinstruct.seeds import default_path


def test_seeds_export_writes_the_built_in_set_in_the_original_format(tmp_path):
    out = tmp_path / "seeds.jsonl"
    result = CliRunner().invoke(cli, ["seeds", "export", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == default_path().read_bytes()
    result = CliRunner().invoke(cli, ["seeds", "validate", str(out)])
    assert result.exit_code == 0
    assert "175 tasks" in result.output and "valid" in result.output


def test_seeds_show_lists_every_task():
    result = CliRunner().invoke(cli, ["seeds", "show"])
    assert result.exit_code == 0
    lines = [line for line in result.stdout.splitlines() if line.startswith("seed_task_")]
    assert len(lines) == 175
    assert lines[0].split("\t")[1] in {"gen", "clf"}


def test_seeds_validate_a_missing_file_fails(tmp_path):
    result = CliRunner().invoke(cli, ["seeds", "validate", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 1
    assert "nope.jsonl: no such file" in result.output
