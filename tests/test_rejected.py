"""Step 1 keeps every rejected candidate, with its reason, in the order it was decided."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from rouge_score import rouge_scorer

from selfinstruct.engine import EngineSettings
from selfinstruct.errors import TransientModelError
from selfinstruct.io import read_jsonl
from selfinstruct.records import SeedTask
from selfinstruct.runfile import RunFile
from selfinstruct.runfolder import RunFolder
from selfinstruct.steps import StepContext
from selfinstruct.steps.instructions import InstructionSettings, generate_instructions

try:
    from tests.helpers import WORDS, fresh_instructions, toy_seeds
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from helpers import WORDS, fresh_instructions, toy_seeds

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def seeds(n: int = 12) -> list[SeedTask]:
    return toy_seeds(n)


def fresh():
    return fresh_instructions()


def ctx(model, **engine):
    return StepContext(model=model, engine=EngineSettings(**engine))


def rouge(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


def mixed_answers():
    """Answers with every kind of drop, then a steady mix of new and near-copied items."""
    source = fresh()
    scripted = iter(
        [
            "",  # empty answer
            (" Short one", "stop"),  # too short
            (f" {next(source)}\n10. {next(source)}", "length"),  # cut: both items dropped
            ("", "length"),  # cut with no item at all
            " Describe the image below in detail please\n10. Write a program to add numbers"
            "\n11. - Starts with punctuation here\n12. Über alles in der Welt heute",
            f" Describe the {WORDS[0]} and the {WORDS[1]} in one short paragraph please.\n"
            "10. Compose a limerick about a sleepy cat\n11. Compose a limerick about a sleepy cat",
        ]
    )

    def answer(prompt: str):
        fixed = next(scripted, None)
        if fixed is not None:
            return fixed
        # One new item, and one of the prompt's own instructions with a word added.
        listed = [line.split(". ", 1)[1] for line in prompt.split("\n")[1:9]]
        return f" {next(source)}\n10. {listed[len(listed) // 2]} today"

    return answer


def test_every_drop_is_a_record_with_its_reason(tmp_path, scripted):
    model = scripted(mixed_answers())
    report = generate_instructions(
        ctx(model), seeds(), tmp_path, InstructionSettings(num_instructions=12, seed=3)
    )
    rf = RunFolder(tmp_path)
    rejected = read_jsonl(rf.rejected)
    assert Counter(r["reason"] for r in rejected) == Counter(report.dropped)
    for reason in (
        "empty_answer",
        "too_short",
        "cut_by_length",
        "banned_word",
        "write_a_program",
        "leading_punctuation",
        "non_ascii_start",
        "too_similar",
    ):
        assert report.dropped[reason] >= 1, reason
    assert report.dropped["cut_by_length"] == 3  # two cut items and one empty cut answer
    by_reason: dict[str, list[dict]] = {}
    for r in rejected:
        assert set(r) == {
            "instruction",
            "reason",
            "most_similar",
            "rouge_l",
            "request_idx",
            "candidate_idx",
        }
        by_reason.setdefault(r["reason"], []).append(r)
    assert [r["instruction"] for r in by_reason["empty_answer"]] == [None]
    assert by_reason["too_short"][0]["instruction"] == "Short one"
    assert by_reason["banned_word"][0]["instruction"].startswith("Describe the image below")
    assert by_reason["non_ascii_start"][0]["instruction"].startswith("Über")
    assert sorted(r["instruction"] is None for r in by_reason["cut_by_length"]) == [
        False,
        False,
        True,
    ]
    # Decided on the text alone: no similarity figure.
    for reason in ("too_short", "banned_word", "cut_by_length", "write_a_program"):
        assert all(r["most_similar"] is None and r["rouge_l"] is None for r in by_reason[reason])
    # The exact repeat inside one answer is too similar to the copy kept just before it.
    assert {
        "instruction": "Compose a limerick about a sleepy cat",
        "most_similar": "Compose a limerick about a sleepy cat",
        "rouge_l": 1.0,
    }.items() <= next(
        r for r in by_reason["too_similar"] if r["instruction"].startswith("Compose a limerick")
    ).items()


def test_decisions_replay_the_run_in_order(tmp_path, scripted):
    """Put back in order, kept and rejected candidates replay the run: each too-similar one
    names the pool's best match at that moment, each kept one is <= the threshold to its pool."""
    model = scripted(mixed_answers())
    generate_instructions(
        ctx(model, concurrency=8), seeds(), tmp_path, InstructionSettings(num_instructions=30)
    )
    rf = RunFolder(tmp_path)
    decisions = rf.read_decisions()
    assert [d["candidate_idx"] for d in decisions] == list(range(len(decisions)))  # no gap
    pool = [s.instruction for s in seeds()]
    n_similar = 0
    for d in decisions:
        if d["kept"]:
            assert max(rouge(p, d["instruction"]) for p in pool) <= 0.7
            pool.append(d["instruction"])
        elif d["reason"] == "too_similar":
            n_similar += 1
            scores = [rouge(p, d["instruction"]) for p in pool]
            best = max(scores)
            assert best > 0.7
            assert d["rouge_l"] == pytest.approx(best)
            assert d["most_similar"] == pool[scores.index(best)]  # ties: the earliest
    assert n_similar >= 10
    kept = [d["instruction"] for d in decisions if d["kept"]]
    assert kept == [r["instruction"] for r in read_jsonl(rf.instructions)]


def test_records_are_written_before_the_next_answer_is_asked_for(tmp_path, scripted):
    seen_at_prompt: list[int] = []
    answer = mixed_answers()
    path = RunFolder(tmp_path).rejected

    def spy(prompt: str):
        seen_at_prompt.append(len(read_jsonl(path)) if path.exists() else 0)
        return answer(prompt)

    model = scripted(spy)
    generate_instructions(
        ctx(model, concurrency=4), seeds(), tmp_path, InstructionSettings(num_instructions=6, lag=1)
    )
    # A lag of 1 (the original's serial loop) at any concurrency: the first answer is empty,
    # and its record is on disk when the second prompt is sent.
    assert seen_at_prompt[:2] == [0, 1]
    assert seen_at_prompt == sorted(seen_at_prompt)


def test_failed_requests_are_recorded_per_prompt(tmp_path, scripted):
    calls = iter(range(1000))
    source = fresh()

    def answer(prompt: str):
        if next(calls) < 2:
            raise TransientModelError("boom", reason="server_error")
        return f" {next(source)}"

    model = scripted(answer, max_batch=1)
    report = generate_instructions(
        ctx(model, max_attempts=1),
        seeds(),
        tmp_path,
        InstructionSettings(num_instructions=3),
    )
    rejected = read_jsonl(RunFolder(tmp_path).rejected)
    failed = [r for r in rejected if r["reason"] == "request_failed_server_error"]
    assert len(failed) == report.dropped["request_failed_server_error"] == 2
    assert all(r["instruction"] is None for r in failed)
    assert len({r["request_idx"] for r in failed}) == 2


def test_resume_repairs_a_torn_line_and_goes_on_numbering(tmp_path, scripted):
    warnings: list[str] = []
    model = scripted(mixed_answers())
    generate_instructions(
        ctx(model), seeds(), tmp_path, InstructionSettings(num_instructions=8, seed=1)
    )
    rf = RunFolder(tmp_path)
    first = read_jsonl(rf.rejected)
    with open(rf.rejected, "a") as f:
        f.write('{"instruction": "A torn li')  # what a kill mid-write leaves
    c = ctx(model)
    c.reporter.warn = warnings.append  # type: ignore[method-assign]
    generate_instructions(c, seeds(), tmp_path, InstructionSettings(num_instructions=16, seed=1))
    after = read_jsonl(rf.rejected)
    assert after[: len(first)] == first  # nothing rewritten
    assert len(after) > len(first)
    assert any("torn" in w for w in warnings)
    decisions = rf.read_decisions()
    assert [d["candidate_idx"] for d in decisions] == list(range(len(decisions)))
    old_requests = max(r["request_idx"] for r in first)
    assert min(r["request_idx"] for r in after[len(first) :]) > old_requests


def test_run_json_drop_counts_equal_the_rejected_file(tmp_path, scripted):
    model = scripted(mixed_answers())
    for n in (10, 25):  # a first invocation, then a resumed one
        report = generate_instructions(
            ctx(model), seeds(), tmp_path, InstructionSettings(num_instructions=n)
        )
        RunFile(tmp_path).record_step(
            report,
            command="generate-instructions",
            config={"num_instructions": n},
            model=model.info,
            seed=42,
        )
    run = json.loads(RunFolder(tmp_path).run_file.read_text())
    dropped = {k: v for k, v in run["steps"]["instructions"]["dropped"].items() if v}
    counted = Counter(r["reason"] for r in RunFolder(tmp_path).read_rejected())
    assert dropped == dict(counted)
    assert counted["too_similar"] > 0 and counted["surplus"] > 0
