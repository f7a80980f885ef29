"""The LLM judge: reading answers, rating a run through the engine (resume, unreadable answers,
failures, budgets), agreement figures computed by hand, calibration, and the CLI on real servers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from selfinstruct.engine import EngineSettings
from selfinstruct.errors import ConfigError, DataFileError, TransientModelError
from selfinstruct.io import iter_jsonl
from selfinstruct.judge import (
    PAPER_FIGURE6,
    RATING_ORDER,
    CalibrationSettings,
    JudgeSettings,
    agreement,
    calibrate,
    calibration_line,
    cohen_kappa,
    judge_prompt,
    judge_run,
    load_ratings,
    meets,
    parse_verdict,
    plan_calibration,
    spearman,
)
from selfinstruct.judge.calibration import paper_mean, read_predictions
from selfinstruct.progress import Reporter
from selfinstruct.records import example_key
from selfinstruct.runfolder import RunFolder
from selfinstruct.steps import StepContext

try:
    from tests.servers.openai_fault_server import running_fault_server
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from servers.openai_fault_server import running_fault_server

from conftest import PAPER_DATA

# --- reading answers ------------------------------------------------------------------------

Y, N = True, False

ANSWERS = [
    # (answer, rating, valid_instruction, input_fits, output_correct, problem)
    ("Valid task: yes\nInput fits: yes\nOutput correct: no\nRating: C", "C", Y, Y, N, None),
    ("valid task: YES\ninput fits: No\noutput correct: yes\nrating: b", "B", Y, N, Y, None),
    ("**Valid task:** yes\n**Input fits:** yes\n**Output correct:** yes\n**Rating:** A",
     "A", Y, Y, Y, None),
    ("Rating: D\nOutput correct: no\nValid task: no\nInput fits: no", "D", N, N, N, None),
    ("Valid task: Yes\nInput fits: N/A\nOutput correct: Yes\nRating: B", "B", Y, None, Y, None),
    ("1. Yes\n2. Yes\n3. No\n4. D", "D", Y, Y, N, None),
    ("1. Valid task: yes\n2. Input fits: no\n3. Output correct: no\n4. Rating: D",
     "D", Y, N, N, None),
    ("- Valid task: yes\n- Input fits: yes\n- Output correct: yes\n- Rating: (A)",
     "A", Y, Y, Y, None),
    ('{"valid_task": "yes", "input_fits": true, "output_correct": "no", "rating": "c"}',
     "C", Y, Y, N, None),
    ('```json\n{"rating": "B", "output_correct": false}\n```', "B", None, None, N, None),
    ("yes, yes, no, B", "B", Y, Y, N, None),
    ("yes\nyes\nno\nB", "B", Y, Y, N, None),
    ("B", "B", None, None, None, None),
    (" C.", "C", None, None, None, None),
    ("Rating: RATING-A", "A", None, None, None, None),
    ("Rating - D", "D", None, None, None, None),
    ("Final rating: (a)", "A", None, None, None, None),
    ("Answer: B", "B", None, None, None, None),
    ("Rating: B. The response is fine. A better one would cite a source.",
     "B", None, None, None, None),
    ("The instruction is valid. The output correct is no. The rating is C.",
     "C", None, None, None, None),
    ("The rating is a matter of taste.", None, None, None, None, "no_rating"),
    ("Valid task: true\nInput fits: false\nOutput correct: true\nRating: 'A'", "A", Y, N, Y, None),
    ("Sure! Here is my evaluation:\n\nValid task: yes\nInput fits: yes\nOutput correct: no\n"
     "Rating: C (the date is wrong)", "C", Y, Y, N, None),
    ("Valid task: yes\nInput fits: yes\nOutput correct: yes\nB: acceptable, with small errors.",
     "B", Y, Y, Y, None),
    ("Does the instruction describe a valid task? Yes\n"
     "Is the input appropriate for the instruction? No\n"
     "Is the output a correct and acceptable response to the instruction and input? No\n"
     "Rating: C", "C", Y, N, N, None),
    # the template echoed back, or several answers: not a rating
    ("Valid task: yes or no\nInput fits: yes or no\nOutput correct: yes or no\n"
     "Rating: A, B, C or D", None, None, None, None, "no_rating"),
    ("Valid task: yes\nInput fits: yes\nOutput correct: no\nRating: B or C",
     None, Y, Y, N, "no_rating"),
    ("Rating: A\nRating: C", None, None, None, None, "conflicting_ratings"),
    ("Valid task: yes\nInput fits: yes", None, Y, Y, None, "no_rating"),
    ("Rating: Acceptable", None, None, None, None, "no_rating"),
    ("Rating: a good one", None, None, None, None, "no_rating"),
    ("I think this is a good response.", None, None, None, None, "no_rating"),
    ("A response like this is fine.", None, None, None, None, "no_rating"),
    ("", None, None, None, None, "empty"),
    ("   \n ", None, None, None, None, "empty"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "rating", "valid", "fits", "correct", "problem"), ANSWERS)
def test_parser_reads_every_usual_answer_shape(text, rating, valid, fits, correct, problem):
    verdict = parse_verdict(text)
    assert (verdict.rating, verdict.problem) == (rating, problem)
    assert (verdict.valid_instruction, verdict.input_fits, verdict.output_correct) == (
        valid,
        fits,
        correct,
    )


def test_meets_orders_a_over_d_and_never_passes_an_unrated_example():
    assert [r for r in RATING_ORDER if meets(r, "B")] == ["A", "B"]
    assert meets("b", "b") and meets("A", "D") and not meets("D", "C")
    assert not meets(None, "D") and not meets("E", "D")
    with pytest.raises(ConfigError, match="minimum rating 'E'"):
        meets("A", "E")


def test_prompt_opens_the_answer_only_for_the_completions_api_and_cuts_long_fields():
    plain = judge_prompt("Add the numbers.", "2, 3", "5")
    primed = judge_prompt("Add the numbers.", "2, 3", "5", primed=True)
    assert primed.startswith(plain) and primed.endswith("\nValid task:")
    assert not plain.rstrip().endswith("Valid task:")
    assert plain.endswith("Instruction: Add the numbers.\nInput: 2, 3\nResponse: 5")
    assert "Input: (empty)\nResponse: Hi" in judge_prompt("Say hi.", "", "Hi")
    cut = judge_prompt("Summarize.", "x" * 5000, "ok", max_chars=1000)
    assert "x" * 1000 + " [... 4000 more characters cut]" in cut and "x" * 1001 not in cut


# --- a run folder and a scripted judge -------------------------------------------------------


def examples(n: int) -> list[dict[str, str]]:
    return [
        {"instruction": f"Task number {i}: say {i}.", "input": "" if i % 2 else f"in {i}",
         "output": f"answer {i}"}
        for i in range(n)
    ]  # fmt: skip


def make_run(tmp_path: Path, n: int) -> RunFolder:
    rf = RunFolder(tmp_path / "run")
    rf.all_instances.parent.mkdir(parents=True)
    rows = examples(n)
    lines = [json.dumps(r) for r in rows + rows[:1]]  # a repeated line counts once
    rf.all_instances.write_text("\n".join(lines) + "\n")
    return rf


def task_number(prompt: str) -> int:
    return int(re.search(r"Task number (\d+):", prompt).group(1))


def verdict_text(prompt: str, rating: str, correct: str = "yes") -> str:
    text = f"Valid task: yes\nInput fits: yes\nOutput correct: {correct}\nRating: {rating}"
    # For the completions API the prompt already ends with "Valid task:".
    return text.removeprefix("Valid task:") if prompt.endswith("Valid task:") else text


def by_number(prompt: str) -> str:
    return verdict_text(prompt, "ABCD"[task_number(prompt) % 4])


class Warnings(Reporter):
    def __init__(self):
        super().__init__(quiet=True)
        self.seen: list[str] = []

    def warn(self, message: str) -> None:
        self.seen.append(message)


def context(model, **engine) -> StepContext:
    return StepContext(model=model, engine=EngineSettings(**engine), reporter=Warnings())


def test_judge_rates_every_example_once_with_one_line_each(tmp_path, scripted):
    rf = make_run(tmp_path, 10)
    model = scripted(by_number)
    report = judge_run(context(model), rf)
    lines = list(iter_jsonl(rf.judgments_file))
    assert len(model.prompts) == 10 and len(lines) == 10
    assert report.counts["examples"] == 10 and report.complete
    assert report.counts["rated_now"] == report.counts["rated_in_file"] == 10
    assert [report.counts[f"rated_{r}"] for r in "ABCD"] == [3, 3, 2, 2]
    assert report.counts["output_correct_yes"] == 10 and report.dropped == {}
    first = next(x for x in lines if x["instruction"] == "Task number 0: say 0.")
    assert first == {
        "key": example_key("Task number 0: say 0.", "in 0", "answer 0"),
        "instruction": "Task number 0: say 0.",
        "input": "in 0",
        "output": "answer 0",
        "rating": "A",
        "valid_instruction": True,
        "input_fits": True,
        "output_correct": True,
        "raw": " yes\nInput fits: yes\nOutput correct: yes\nRating: A",
        "model": "scripted:scripted?api=completions",
        "unparsed": None,
    }
    # Deterministic and short; a blank line ends a primed answer.
    assert {(s.temperature, s.max_tokens, s.stop) for s in model.samplings} == {
        (0.0, 48, ("\n\n",))
    }
    ratings = load_ratings(rf)
    assert len(ratings) == 10 and ratings[first["key"]] == "A"
    again = scripted(by_number)
    assert judge_run(context(again), rf).counts["rated_now"] == 0 and again.prompts == []


def test_several_prompts_go_in_one_request_where_the_api_takes_a_list(tmp_path, scripted):
    rf = make_run(tmp_path, 12)
    report = judge_run(
        context(scripted(by_number, max_batch=8)), rf, JudgeSettings(request_batch_size=5)
    )
    assert report.engine.requests == 3 and report.counts["rated_in_file"] == 12


def test_resume_cuts_a_torn_last_line_and_asks_only_for_the_rest(tmp_path, scripted):
    rf = make_run(tmp_path, 8)
    judge_run(context(scripted(by_number)), rf, JudgeSettings(num_examples=3))
    other = type("Other", (scripted,), {"info": property(lambda self: _info("other"))})
    judge_run(context(other(lambda p: verdict_text(p, "D"))), rf, JudgeSettings(num_examples=4))
    torn = json.dumps({"key": "x", "rating": "A", "instruction": "Task number 5"})[:30]
    rf.judgments_file.write_bytes(rf.judgments_file.read_bytes() + torn.encode())

    model = scripted(by_number)
    ctx = context(model)
    report = judge_run(ctx, rf)
    # Another judge's ratings do not count as this one's: task 3 is asked again.
    assert sorted(task_number(p) for p in model.prompts) == [3, 4, 5, 6, 7]
    assert any("torn last line" in w for w in ctx.reporter.seen)
    assert len(list(iter_jsonl(rf.judgments_file))) == 3 + 4 + 5  # every line whole JSON again
    assert len(rf.judgments(model="scripted:scripted?api=completions", rated_only=True)) == 8
    assert report.complete and report.counts["rated_now"] == 5
    # The last rated line of a key wins; `model` keeps one judge's ratings.
    key0 = example_key("Task number 0: say 0.", "in 0", "answer 0")
    assert load_ratings(rf)[key0] == "D"
    assert load_ratings(rf, model="scripted:scripted?api=completions")[key0] == "A"
    assert load_ratings(rf, model="other:other?api=completions")[key0] == "D"


def _info(name: str):
    from selfinstruct.models.base import ModelInfo

    return ModelInfo(backend=name, name=name, api="completions")


def test_unreadable_answers_are_counted_written_and_asked_again(tmp_path, scripted):
    rf = make_run(tmp_path, 6)

    def flaky(prompt: str):
        n = task_number(prompt)
        if n == 1:
            return "I would say it is fine."
        if n == 2:
            return (" yes\nInput fits: yes\nOutput correct", "length")
        if n == 3:
            return " yes\nInput fits: yes\nOutput correct: no\nRating: A, B, C or D"
        return by_number(prompt)

    report = judge_run(context(scripted(flaky)), rf)
    assert report.dropped == {"unparsed_no_rating": 2, "unparsed_cut_by_length": 1}
    assert report.counts["rated_now"] == 3 and report.counts["unrated"] == 3
    assert not report.complete
    unrated = [x for x in iter_jsonl(rf.judgments_file) if x["rating"] is None]
    assert sorted(x["unparsed"] for x in unrated) == ["cut_by_length", "no_rating", "no_rating"]
    assert all(x["raw"] for x in unrated) and len(load_ratings(rf)) == 3

    fixed = scripted(by_number)
    report = judge_run(context(fixed), rf)
    assert sorted(task_number(p) for p in fixed.prompts) == [1, 2, 3]
    assert report.complete and len(load_ratings(rf)) == 6


def test_an_example_the_judge_never_rates_is_given_up_after_a_set_number(tmp_path, scripted):
    rf = make_run(tmp_path, 4)

    def refuses_one(prompt: str) -> str:
        return "I cannot rate this." if task_number(prompt) == 1 else by_number(prompt)

    settings = JudgeSettings(max_unreadable=2)
    first = judge_run(context(scripted(refuses_one)), rf, settings)
    assert not first.complete  # one unreadable answer: worth asking again
    infos: list[str] = []
    ctx = context(scripted(refuses_one))
    ctx.reporter.info = infos.append  # type: ignore[method-assign]
    second = judge_run(ctx, rf, settings)
    assert second.complete  # nothing left worth asking: no rerun advised
    assert second.counts["unrated"] == 1
    assert second.counts["unrated_given_up_no_rating"] == 1
    assert any("not asked again" in m for m in infos)
    third = scripted(refuses_one)
    judge_run(context(third), rf, settings)
    assert third.prompts == []  # given up: not asked a third time


def test_request_failures_are_counted_by_reason_and_left_unrated(tmp_path, scripted):
    rf = make_run(tmp_path, 6)

    def failing(prompt: str):
        if task_number(prompt) in (2, 4):
            raise TransientModelError("server overloaded", reason="http_503")
        return by_number(prompt)

    ctx = context(scripted(failing), max_attempts=2, backoff_base=0.001)
    report = judge_run(ctx, rf)
    assert report.dropped == {"request_failed_http_503": 2}
    assert report.engine.failures == {"http_503": 2} and report.engine.retries == {"http_503": 2}
    assert report.counts["rated_in_file"] == 4 and not report.complete
    assert {task_number(x["instruction"]) for x in iter_jsonl(rf.judgments_file)} == {0, 1, 3, 5}


def test_budget_stops_cleanly_and_a_rerun_finishes_without_asking_twice(tmp_path, scripted):
    rf = make_run(tmp_path, 7)
    first = scripted(by_number)
    report = judge_run(context(first, max_requests=3, concurrency=1), rf)
    assert report.engine.budget_stop == "max_requests" and not report.complete
    assert report.counts["rated_in_file"] == 3 and len(list(iter_jsonl(rf.judgments_file))) == 3
    second = scripted(by_number)
    report = judge_run(context(second), rf)
    assert report.complete and len(second.prompts) == 4
    assert sorted(task_number(p) for p in first.prompts + second.prompts) == list(range(7))


def test_no_step_4_file_or_a_bad_line_is_one_clear_error(tmp_path, scripted):
    rf = RunFolder(tmp_path / "empty")
    with pytest.raises(DataFileError, match="all_generated_instances.jsonl: no such file"):
        judge_run(context(scripted(by_number)), rf)
    rf = make_run(tmp_path, 2)
    rf.all_instances.write_text('{"instruction": "x", "output": "y"}\n{"instruction": 3}\n')
    with pytest.raises(
        DataFileError, match=r"all_generated_instances.jsonl:2: field .instruction. is not text"
    ):
        judge_run(context(scripted(by_number)), rf)


# --- agreement figures, by hand --------------------------------------------------------------


def test_cohen_kappa_matches_the_textbook_example():
    # 50 items: both A 20, both B 15, A/B 5, B/A 10. p_o = 0.7, p_e = 0.5, kappa = 0.4
    pairs = [("A", "A")] * 20 + [("A", "B")] * 5 + [("B", "A")] * 10 + [("B", "B")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa(pairs, ("A", "B")) == pytest.approx(0.4)  # unused categories change nothing


def test_weighted_kappa_and_within_one_level_by_hand():
    # A-A, B-B, C-D, D-C. Unweighted: p_o 1/2, p_e 1/4 -> 1/3. Quadratic: observed (1/9+1/9)/4
    # = 1/18, expected sum((i-j)^2)/9/16 = 40/144 = 5/18 -> 1 - 1/5 = 0.8.
    pairs = [("A", "A"), ("B", "B"), ("C", "D"), ("D", "C")]
    assert cohen_kappa(pairs) == pytest.approx(1 / 3)
    assert cohen_kappa(pairs, weights="quadratic") == pytest.approx(0.8)
    a = agreement(({"rating": h}, {"rating": j}) for h, j in pairs)
    assert (a.n, a.exact, a.within_one) == (4, 0.5, 1.0)
    assert a.kappa_quadratic == pytest.approx(0.8)
    assert a.confusion == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]
    assert (a.human_mean, a.judge_mean) == (2.5, 2.5)


def test_kappa_is_undefined_when_both_raters_use_one_category():
    assert cohen_kappa([("A", "A")] * 5) is None
    assert cohen_kappa([]) is None
    assert cohen_kappa([("A", "B")] * 3) == pytest.approx(0.0)  # p_o 0, p_e 0


def test_agreement_skips_unrated_pairs_and_compares_each_question_where_both_answered():
    humans = [
        {"rating": "A", "valid_instruction": True, "input_fits": True, "output_correct": True},
        {"rating": "C", "valid_instruction": True, "input_fits": None, "output_correct": False},
        {"rating": None, "valid_instruction": False, "input_fits": True, "output_correct": False},
        {"rating": "B", "valid_instruction": True, "input_fits": False, "output_correct": True},
    ]
    judge = [
        {"rating": "B", "valid_instruction": True, "input_fits": True, "output_correct": True},
        {"rating": "C", "valid_instruction": True, "input_fits": True, "output_correct": True},
        {"rating": "A", "valid_instruction": True, "input_fits": True, "output_correct": False},
        {"rating": None, "valid_instruction": True, "input_fits": None, "output_correct": True},
    ]
    a = agreement(zip(humans, judge, strict=True))
    assert (a.n, a.exact, a.within_one) == (2, 0.5, 1.0)
    q = a.questions
    assert (q["valid_instruction"].n, q["valid_instruction"].agreement) == (4, 0.75)
    assert (q["input_fits"].n, q["input_fits"].agreement) == (2, 1.0)
    assert (q["output_correct"].n, q["output_correct"].agreement) == (4, 0.75)
    # output_correct: (T,T) (F,T) (F,F) (T,T): p_o 3/4, p_e (2/4)(3/4) + (2/4)(1/4) = 1/2 -> 1/2
    assert q["output_correct"].kappa == pytest.approx(0.5)


def test_spearman_with_ties_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks 1, 2.5, 2.5, 4 against 1, 2, 3, 4: 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert spearman([1, 1], [1, 2]) is None and spearman([1], [1]) is None


def test_paper_figure_reading_agrees_with_the_papers_text():
    for _, counts in PAPER_FIGURE6.values():
        assert sum(counts) == 252
    means = [paper_mean(c) for _, c in PAPER_FIGURE6.values()]
    assert means == sorted(means)  # the figure's bars, worst to best
    # "if we count acceptable response with minor imperfections (RATING-B) as valid,
    # GPT3 Self-Inst is only 5% behind InstructGPT001"
    ok = {name: (c[0] + c[1]) / 252 for name, (_, c) in PAPER_FIGURE6.items()}
    assert ok["text-davinci-001"] - ok["davinci-self-instruct"] == pytest.approx(0.05, abs=0.005)
    # "GPT3 Self-Inst outperforms all the other GPT3 variants trained on public instruction data"
    public = ("davinci-t0-ft", "davinci-superni-ft", "davinci-self-instruct-and-superni-ft")
    assert all(ok["davinci-self-instruct"] > ok[m] for m in public)


# --- calibration ------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fake_predictions(folder: Path, tasks: int = 5) -> Path:
    """Three of the release's models with `tasks` tasks each; the response names the model."""
    for name in ("davinci", "davinci-self-instruct", "text-davinci-003"):
        write_jsonl(
            folder / f"{name}_predictions.jsonl",
            [
                {"instruction": f"Task number {i}: paper task.\n", "input": "",
                 "response": f" {name} says {i}", "target": "x"}
                for i in range(tasks)
            ],
        )  # fmt: skip
    return folder


PAPER_RATINGS = {"davinci": "D", "davinci-self-instruct": "B", "text-davinci-003": "A"}


def paper_judge(prompt: str) -> str:
    """Rates the release's responses by model, the run's and the ratings file's by number."""
    response = re.search(r"Response: (\S+) says", prompt)
    if response:
        return verdict_text(prompt, PAPER_RATINGS[response.group(1)])
    return by_number(prompt)


def test_calibration_against_reviews_a_ratings_file_and_the_paper(tmp_path, scripted):
    rf = make_run(tmp_path, 8)
    rows = examples(8)
    key = [example_key(r["instruction"], r["input"], r["output"]) for r in rows]
    # The judge (by_number) says A B C D A B C D; people say:
    write_jsonl(rf.reviews_file, [
        {"key": key[0], "rating": "D"},  # replaced by the next line
        {"key": key[0], "rating": "A", "valid_instruction": True, "output_correct": True},
        {"key": key[1], "rating": "A", "output_correct": True},
        {"key": key[2], "rating": "C", "output_correct": False},  # judge: yes
        {"key": key[3], "rating": "B"},
        {"key": key[4], "rating": "A"},
        {"key": key[5], "rating": None},  # reviewed, then cleared
        {"key": "0123456789abcdef", "rating": "A"},  # no longer among the examples
    ])  # fmt: skip
    ratings = write_jsonl(tmp_path / "rated.jsonl", [
        {"instruction": "Task number 10: x.", "input": "", "output": "y", "rating": "c"},
        {"instruction": "Task number 11: x.", "output": "y", "rating": "B"},
    ])  # fmt: skip
    settings = CalibrationSettings(
        ratings_file=ratings,
        predictions_dir=fake_predictions(tmp_path / "pred"),
        sample_per_model=3,
    )
    model = scripted(paper_judge)
    report = calibrate(context(model), rf, settings)
    assert len(model.prompts) == 5 + 2 + 9

    r = report.reviews  # pairs (A,A) (A,B) (C,C) (B,D) (A,A)
    assert (r.n, r.exact, r.within_one) == (5, 0.6, 0.8)
    assert (r.questions["output_correct"].n, r.questions["output_correct"].agreement) == (3, 2 / 3)
    assert (report.ratings.n, report.ratings.exact) == (2, 0.5)  # (C, C) and (B, D)
    paper = report.paper
    assert [(row.name, row.n) for row in paper.rows] == [
        ("davinci", 3), ("davinci-self-instruct", 3), ("text-davinci-003", 3)
    ]  # fmt: skip
    assert [row.judge_mean for row in paper.rows] == [1.0, 3.0, 4.0]
    assert paper.spearman == pytest.approx(1.0)
    text = report.format()
    assert "n = 5" in text and "Spearman" in text and "arXiv:2212.10560v2" in text
    assert "reviewed keys are not among the examples" in text

    # The run's reviewed examples are judged into the run's judgments; the rest into the cache.
    assert len(rf.judgments(rated_only=True)) == 5
    cache = list(iter_jsonl(rf.calibration_judgments))
    assert len(cache) == 11 and {c["source"].split(":")[0] for c in cache} == {
        "ratings",
        "predictions",
    }
    # A second calibration reuses every judgment; a rating run reuses the reviewed ones.
    again = scripted(paper_judge)
    assert calibrate(context(again), rf, settings).reviews.exact == 0.6 and again.prompts == []
    runner = scripted(by_number)
    judge_run(context(runner), rf)
    assert len(runner.prompts) == 3


def test_calibration_reads_what_the_review_page_saved(tmp_path, scripted):
    from selfinstruct.review import ReviewSession

    rf = make_run(tmp_path, 12)
    session = ReviewSession(rf, sample=4, seed=1)
    try:
        for row in session.rows:  # the person agrees with by_number on output_correct only
            session.update({"key": row.key, "rating": "A", "output_correct": True})
    finally:
        session.close()
    model = scripted(by_number)
    report = calibrate(context(model), rf, CalibrationSettings(use_predictions=False))
    judged = sorted(task_number(p) for p in model.prompts)
    assert judged == sorted(task_number(row.example.instruction) for row in session.rows)
    expected_exact = sum(n % 4 == 0 for n in judged) / 4
    assert (report.reviews.n, report.reviews.exact) == (4, expected_exact)
    assert report.reviews.questions["output_correct"].agreement == 1.0


def test_nothing_to_calibrate_against_says_what_to_provide(tmp_path):
    rf = RunFolder(tmp_path / "run")
    settings = CalibrationSettings(predictions_dir=None, use_predictions=False)
    with pytest.raises(ConfigError, match=r"nothing to calibrate against: rate examples on"):
        plan_calibration(rf, settings)
    with pytest.raises(ConfigError, match="no such folder"):
        plan_calibration(rf, CalibrationSettings(predictions_dir=tmp_path / "nope"))
    bad = write_jsonl(tmp_path / "r.jsonl", [{"instruction": "a", "output": "b", "rating": "E"}])
    with pytest.raises(DataFileError, match=r"r.jsonl:1: 'rating' must be A, B, C or D"):
        plan_calibration(rf, CalibrationSettings(ratings_file=bad, use_predictions=False))


def test_release_predictions_sample_the_same_tasks_for_all_eight_models():
    folder = PAPER_DATA / "human_eval_predictions"
    if not folder.is_dir():
        pytest.skip(f"{folder} absent: the original release's data lies beside the project only")
    sample = read_predictions(folder, 6, seed=1)
    assert set(sample) == set(PAPER_FIGURE6)
    tasks = {name: [e.instruction for e in rows] for name, rows in sample.items()}
    assert all(len(t) == 6 and t == tasks["davinci"] for t in tasks.values())
    assert read_predictions(folder, 6, seed=1) == sample  # seeded


# --- the command, on real servers over loopback -----------------------------------------------


def selfinstruct(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from selfinstruct.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_without_step_4_file_is_one_clear_line(tmp_path):
    (tmp_path / "run").mkdir()
    result = selfinstruct("judge", str(tmp_path / "run"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "all_generated_instances.jsonl: no such file" in lines[0]
    assert not (tmp_path / "run" / "judgments.jsonl").exists()
    result = selfinstruct("judge", str(tmp_path / "fresh"), "--calibrate", "--no-reviews",
                          "--calibration-sample", "0")  # fmt: skip
    assert result.returncode == 2 and "nothing to calibrate against" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "fresh").exists()


def test_cli_judges_and_calibrates_against_the_fault_server(tmp_path):
    rf = make_run(tmp_path, 12)
    ratings = write_jsonl(tmp_path / "rated.jsonl", [
        {"instruction": f"Task number {i}: x.", "input": "", "output": "y", "rating": "ABCD"[i % 4]}
        for i in range(6)
    ])  # fmt: skip
    with running_fault_server(seed=7, latency=0.01, rate_500=0.1) as server:
        common = ("--base-url", server.base_url, "--api-key", "k", "--quiet",
                  "--max-attempts", "10")  # fmt: skip
        result = selfinstruct(
            "judge", str(rf.path), "--model", "openai:judge", "--max-requests", "3", *common
        )
        assert result.returncode == 4, result.stderr
        assert "stopped at the --max-requests budget" in result.stderr
        assert 0 < len(load_ratings(rf)) <= 3
        result = selfinstruct("judge", str(rf.path), "--model", "openai:judge", *common)
        assert result.returncode == 0, result.stderr
        result = selfinstruct(
            "judge", str(rf.path), "--model", "openai:judge", "--calibrate", "--ratings",
            str(ratings), "--predictions-dir", str(fake_predictions(tmp_path / "pred")), *common,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert len(load_ratings(rf)) == 12
    assert "Against the ratings in" in result.stdout and "n = 6" in result.stdout
    assert "Spearman rank correlation" in result.stdout
    run = json.loads(rf.run_file.read_text())
    assert run["steps"]["judge"]["counts"]["rated_in_file"] == 12
    assert run["steps"]["judge_calibration"]["counts"]["ratings_file"] == 6
    saved = json.loads(rf.calibration_report.read_text())
    assert saved["ratings"]["n"] == 6 and len(saved["paper"]["models"]) == 3
    line = calibration_line(rf)
    assert line.startswith("judge openai:judge?api=chat against people: ratings file n=6: exact")
    spearman_known = saved["paper"]["spearman_mean"] is not None
    assert ("the paper's 3 models (5 tasks each): Spearman" in line) == spearman_known
    assert "was not calibrated" in calibration_line(tmp_path / "elsewhere")


@pytest.mark.slow
def test_cli_on_a_real_model_server_rates_or_counts_every_example(tmp_path, llama_server):
    rf = make_run(tmp_path, 4)
    args = ("--base-url", llama_server, "--api-key", "x", "--quiet", "--concurrency", "2")
    model = "openai:smollm2?api=completions"
    result = selfinstruct("judge", str(rf.path), "--model", model, *args)
    assert result.returncode == 0, result.stderr
    lines = list(iter_jsonl(rf.judgments_file))
    assert len(lines) == 4 and {x["model"] for x in lines} == {"openai:smollm2?api=completions"}
    assert all((x["rating"] in RATING_ORDER) != bool(x["unparsed"]) for x in lines)
    counts = json.loads(rf.run_file.read_text())["steps"]["judge"]
    unparsed = sum(v for k, v in counts["dropped"].items() if k.startswith("unparsed"))
    assert counts["counts"]["rated_in_file"] + unparsed == 4
    # A rerun asks again only for what is unrated (temperature 0: the same answers again).
    result = selfinstruct("judge", str(rf.path), "--model", model, *args)
    assert result.returncode == 0, result.stderr
    assert len(list(iter_jsonl(rf.judgments_file))) == 4 + unparsed
    ratings = write_jsonl(tmp_path / "rated.jsonl", [
        {"instruction": "Name a primary colour.", "input": "", "output": "Red", "rating": "A"},
        {"instruction": "Add 2 and 2.", "input": "", "output": "5", "rating": "C"},
    ])  # fmt: skip
    result = selfinstruct(
        "judge", str(rf.path), "--model", "openai:smollm2", "--calibrate", "--ratings",
        str(ratings), "--calibration-sample", "0", *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Judge calibration of openai:smollm2?api=chat" in result.stdout
    assert re.search(r"examples rated by both\s+n = [012]\b", result.stdout)
