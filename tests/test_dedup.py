"""dedup_jsonl: greedy ROUGE-L dedup of an instruction file, written atomically, with a report."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from selfinstruct import dedup as dedup_mod
from selfinstruct.dedup import DedupReport, Histogram, dedup_jsonl, read_instructions
from selfinstruct.errors import DataFileError
from selfinstruct.similarity import greedy_dedup, rouge_l

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

RECORDS = [
    {"id": 1, "instruction": "Write a poem about the sea.", "extra": [1, 2]},
    {"id": 2, "instruction": "Write a poem about the sea!", "extra": None},
    {"id": 3, "instruction": "List three prime numbers."},
    {"id": 4, "instruction": "write a short poem about the sea"},
    {"id": 5, "instruction": "Explain how vaccines work.", "nested": {"a": "b"}},
    {"id": 6, "instruction": "List three prime numbers, please."},
    {"id": 7, "instruction": "Explain, briefly, how vaccines work."},
]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _brute(instructions: list[str], threshold: float) -> tuple[list[int], list[float]]:
    kept: list[int] = []
    best_all: list[float] = []
    for i, text in enumerate(instructions):
        best = max((rouge_l(instructions[k], text).fmeasure for k in kept), default=0.0)
        best_all.append(best)
        if best <= threshold:
            kept.append(i)
    return kept, best_all


def test_dedup_jsonl_keeps_lines_unchanged_and_reports(tmp_path):
    # Unusual but valid formatting must come through byte for byte.
    lines = [json.dumps(r, indent=None, separators=(", ", ":")) for r in RECORDS]
    lines[2] = '{ "instruction" : "List three prime numbers.",  "id":3 }'
    src = _write(tmp_path / "in.jsonl", lines[:3] + [""] + lines[3:])
    out = tmp_path / "out.jsonl"
    seen: list[int] = []
    report = dedup_jsonl(src, out, threshold=0.7, progress=seen.append)
    kept, best = _brute([r["instruction"] for r in RECORDS], 0.7)
    assert kept == [0, 2, 4]
    assert out.read_text(encoding="utf-8") == "".join(lines[i] + "\n" for i in kept)
    assert isinstance(report, DedupReport)
    assert (report.total, report.kept, report.dropped) == (7, 3, 4)
    assert seen and seen[-1] == 7
    dropped_best = [best[i] for i in range(7) if i not in kept]
    assert report.dropped_hist.total == 4
    assert report.dropped_hist.bins[0][0] == 0.7 and report.dropped_hist.bins[-1][1] == 1.0
    for lo, hi, count in report.dropped_hist.bins:
        assert count == sum(lo < s <= hi for s in dropped_best)
    # every record's highest score: exact above the floor, counted below it
    assert report.max_hist.total == 7
    assert report.max_hist.at_or_below == sum(s <= 0.5 for s in best)
    for lo, hi, count in report.max_hist.bins:
        assert count == sum(lo < s <= hi for s in best)
    table = report.format_table()
    assert "kept" in table and "(0.95, 1.00]" in table and "<= 0.50" in table
    assert json.loads(json.dumps(report.to_dict()))["dropped"] == 4
    assert set(os.listdir(tmp_path)) == {"in.jsonl", "out.jsonl"}  # no temporary file left


def test_dedup_txt_and_other_field_and_threshold(tmp_path):
    texts = [r["instruction"] for r in RECORDS]
    src = _write(tmp_path / "in.txt", texts)
    out = tmp_path / "sub.txt"
    report = dedup_jsonl(src, out, threshold=0.9, score_floor=None)
    kept, _ = _brute(texts, 0.9)
    assert out.read_text(encoding="utf-8").splitlines() == [texts[i] for i in kept]
    assert report.kept == len(kept) and report.max_hist.start == 0.9
    src2 = _write(
        tmp_path / "q.jsonl", [json.dumps({"prompt": t, "instruction": 5}) for t in texts]
    )
    report = dedup_jsonl(src2, tmp_path / "q_out.jsonl", field="prompt", threshold=0.7)
    assert report.kept == 3


def test_dedup_in_place_and_atomic_on_failure(tmp_path, monkeypatch):
    lines = [json.dumps(r) for r in RECORDS]
    src = _write(tmp_path / "data.jsonl", lines)
    dedup_jsonl(src, src)  # out == in: read fully before the replace
    assert src.read_text(encoding="utf-8").splitlines() == [lines[0], lines[2], lines[4]]

    target = _write(tmp_path / "target.jsonl", ["old content"])

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dedup_mod.os, "replace", boom)
    with pytest.raises(OSError):
        dedup_jsonl(src, target)
    assert target.read_text(encoding="utf-8") == "old content\n"
    assert sorted(os.listdir(tmp_path)) == ["data.jsonl", "target.jsonl"]  # no temp left


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"instruction": "ok"}\n{"instruction": "x"\n', "bad.jsonl:2: not valid JSON"),
        ('{"instruction": "ok"}\n\n[1, 2]\n', "bad.jsonl:3: not a JSON object"),
        ('{"instruction": "ok"}\n{"text": "no field"}\n', "bad.jsonl:2: no 'instruction' field"),
        ('{"instruction": 3}\n', "bad.jsonl:1: field 'instruction' is not a string"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, content, message):
    src = tmp_path / "bad.jsonl"
    src.write_text(content, encoding="utf-8")
    with pytest.raises(DataFileError) as info:
        dedup_jsonl(src, tmp_path / "out.jsonl")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.jsonl").exists()


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(DataFileError, match="nope.jsonl: no such file"):
        dedup_jsonl(tmp_path / "nope.jsonl", tmp_path / "out.jsonl")
    raw = tmp_path / "raw.txt"
    raw.write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(DataFileError, match="raw.txt:2: not UTF-8"):
        read_instructions(raw)
    with pytest.raises(DataFileError, match="does not exist"):
        dedup_jsonl(_write(tmp_path / "a.txt", ["x"]), tmp_path / "no" / "dir" / "out.txt")


def test_histogram_bins():
    h = Histogram.of([0.71, 0.75, 0.7500001, 1.0, 0.5], 0.7)
    assert [b[:2] for b in h.bins][:2] == [(0.7, 0.75), (0.75, 0.8)]
    assert [c for *_, c in h.bins] == [2, 1, 0, 0, 0, 1]
    assert h.at_or_below == 1 and h.total == 5
    assert Histogram.of([1.0], 1.0).bins == () and Histogram.of([1.0], 1.0).at_or_below == 1
    assert Histogram.of([0.99], 0.97).bins == ((0.97, 1.0, 1),)


def test_dedup_on_shared_corpus_sample(tmp_path):
    bench = DATA / "bench_instructions_52k.jsonl"
    if not bench.exists():
        pytest.skip(f"../shared/data absent: {bench} lies beside the project only")
    with bench.open(encoding="utf-8") as fh:
        lines = [next(fh).rstrip("\n") for _ in range(600)]
    src = _write(tmp_path / "sample.jsonl", lines)
    report = dedup_jsonl(src, tmp_path / "out.jsonl", threshold=0.7)
    texts = [json.loads(line)["instruction"] for line in lines]
    res = greedy_dedup(texts, 0.7)
    kept_lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert kept_lines == [lines[i] for i in res.kept]
    assert report.dropped == len(res.dropped) > 0
    assert not any(math.isnan(s) for s in res.dropped_scores)
