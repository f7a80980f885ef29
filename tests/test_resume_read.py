"""Step 1's resume reads its records' few fields from the start and end of each line."""

from __future__ import annotations

import json

import pytest

from selfinstruct.errors import DataFileError
from selfinstruct.io import dumps_line
from selfinstruct.records import MachineInstruction, RejectedInstruction
from selfinstruct.steps import instructions
from selfinstruct.steps.instructions import _Decided, _read_decided


def kept_record(text: str, request: int, candidate: int | None) -> bytes:
    record = MachineInstruction(
        instruction=text,
        most_similar={'say "request_idx": 1}': 0.5, text: 0.25},
        avg_similarity_score=0.1,
        metadata={"prompt": '1. x\n", "request_idx": 7}', "usage": {"request_idx": 3}},
        request_idx=request,
        candidate_idx=candidate,
    )
    return dumps_line(record.to_dict())


def test_lines_as_step_one_writes_them_read_as_parsing_them_whole(tmp_path, monkeypatch):
    texts = ['Say "hi" \\ twice', "Écris un poème\u2028sur la mer", "tab\tand \U0001f600", "x"]
    path = tmp_path / "kept.jsonl"
    path.write_bytes(b"".join(kept_record(t, 10 + i, 2 * i) for i, t in enumerate(texts)))
    path.open("ab").write(kept_record("no candidate index", 99, None))
    parsed = []
    monkeypatch.setattr(instructions, "parse_jsonl_line", lambda *a: parsed.append(a[1]) or {})
    got = list(_read_decided(path, print, kept=True))
    assert parsed == []  # every line read from its ends
    want = [_Decided(t, 10 + i, 2 * i) for i, t in enumerate(texts)]
    assert got == [*want, _Decided("no candidate index", 99, -1)]
    whole = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [g.instruction for g in got] == [w["instruction"] for w in whole]


def test_rejected_lines_give_their_indexes(tmp_path):
    path = tmp_path / "rejected.jsonl"
    records = [
        RejectedInstruction(None, "empty_answer", 3, 8),
        RejectedInstruction("Draw it", "too_similar", 4, 9, "Draw a cat", 0.75),
    ]
    path.write_bytes(b"".join(dumps_line(r.to_dict()) for r in records))
    assert list(_read_decided(path, print, kept=False)) == [
        _Decided(None, 3, 8),
        _Decided(None, 4, 9),
    ]


def test_lines_in_another_shape_are_parsed_whole(tmp_path):
    path = tmp_path / "kept.jsonl"
    lines = [
        '{"request_idx": 5, "instruction": "keys in another order"}',
        '{"instruction":"compact","request_idx":6}',
        '{"instruction": "from the release"}',
    ]
    path.write_text("\n".join(lines) + "\n")
    assert list(_read_decided(path, print, kept=True)) == [
        _Decided("keys in another order", 5, -1),
        _Decided("compact", 6, -1),
        _Decided("from the release", -1, -1),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"instruction": "cut short, "request_idx": 5}', "kept.jsonl:2: not valid JSON"),
        ('{"instruction": 7, "request_idx": 5}', "kept.jsonl:2: missing field 'instruction'"),
    ],
)
def test_a_bad_line_is_an_error_naming_it(tmp_path, line, message):
    path = tmp_path / "kept.jsonl"
    path.write_bytes(kept_record("fine", 1, 1) + line.encode() + b"\n")
    with pytest.raises(DataFileError, match=message):
        list(_read_decided(path, print, kept=True))
