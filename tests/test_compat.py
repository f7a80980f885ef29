"""The original release's files read with our loaders and written back unchanged."""

from __future__ import annotations

import json

from conftest import paper_data

from selfinstruct.io import read_jsonl, write_jsonl_atomic
from selfinstruct.seeds import load_seed_tasks, write_seed_tasks


def test_paper_seed_tasks_round_trip(tmp_path):
    path = paper_data("seed_tasks.jsonl")
    tasks = load_seed_tasks(path)
    assert len(tasks) == 175
    assert sum(t.is_classification for t in tasks) == 26
    out = tmp_path / "seed_tasks.jsonl"
    write_seed_tasks(tasks, out)
    original = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    assert ours == original


def test_user_oriented_tasks_round_trip(tmp_path):
    path = paper_data("user_oriented_instructions.jsonl")
    records = read_jsonl(path)
    assert len(records) == 252
    assert all({"id", "instruction", "instances"} <= set(r) for r in records)
    out = tmp_path / "user_oriented_instructions.jsonl"
    write_jsonl_atomic(out, records)
    original = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert read_jsonl(out) == original
