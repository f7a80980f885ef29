import json

import pytest

from selfinstruct.errors import DataFileError
from selfinstruct.io import JsonlAppender, find_torn_line, read_jsonl, write_jsonl_atomic


def test_appender_writes_whole_lines_and_reader_reads_them(tmp_path):
    path = tmp_path / "a.jsonl"
    with JsonlAppender(path) as out:
        out.write({"x": 1})
        out.write({"x": "é"})
    assert path.read_bytes().endswith(b"\n")
    assert read_jsonl(path) == [{"x": 1}, {"x": "é"}]


def test_torn_last_line_is_reported_dropped_and_repaired(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"x": 1}\n{"x": 2}\n{"x": 3, "y": "cut sho')
    warnings = []
    assert read_jsonl(path, warn=warnings.append) == [{"x": 1}, {"x": 2}]
    assert len(warnings) == 1 and "torn last line" in warnings[0] and str(path) in warnings[0]
    assert path.read_text().endswith("cut sho")  # reading alone changes nothing
    read_jsonl(path, repair=True)
    assert path.read_text() == '{"x": 1}\n{"x": 2}\n'


def test_appender_repairs_before_appending(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"x": 1}\n{"x": 2')
    warnings = []
    with JsonlAppender(path, warn=warnings.append) as out:
        out.write({"x": 3})
    assert read_jsonl(path) == [{"x": 1}, {"x": 3}]
    assert warnings


def test_a_torn_only_line_is_detected(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"x"')
    torn = find_torn_line(path)
    assert torn is not None and torn.offset == 0 and torn.length == 4
    assert read_jsonl(path) == []


def test_malformed_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"x": 1}\nnot json\n{"x": 2}\n')
    with pytest.raises(DataFileError, match=r"a\.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "out.jsonl"
    assert write_jsonl_atomic(path, [{"a": 1}, {"b": 2}]) == 2
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}, {"b": 2}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_warnings_show_brackets_as_written():
    import io

    from rich.console import Console

    from selfinstruct.progress import Reporter

    buffer = io.StringIO()
    Reporter(console=Console(file=buffer, width=200)).warn("runs/[x]/file.jsonl: [bold]torn[/]")
    assert buffer.getvalue().strip() == "warning: runs/[x]/file.jsonl: [bold]torn[/]"
