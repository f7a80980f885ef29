"""Where the pipeline follows the paper's released scripts (github.com/yizhongw/self-instruct,
self_instruct/*.py) to the letter: step 2's stored answers, step 3's batches and token limits,
step 1's casing and filters; plus the local model's per-call seeds, `evaluate --format json`,
the packaging metadata and the test run's summary line."""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from selfinstruct.engine import EngineSettings
from selfinstruct.filters import BANNED_WORDS, rejection_reason
from selfinstruct.io import read_jsonl
from selfinstruct.records import Instance, SeedTask
from selfinstruct.runfolder import RunFolder
from selfinstruct.steps import StepContext
from selfinstruct.steps.classify import ClassifySettings, identify_classification
from selfinstruct.steps.instances import InstanceSettings, generate_instances
from selfinstruct.steps.instructions import InstructionSettings, generate_instructions
from selfinstruct.steps.parsing import (
    answer_kind,
    classification_answer,
    split_numbered_list,
)

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTIONS = "machine_generated_instructions.jsonl"


def ctx(model):
    return StepContext(model=model, engine=EngineSettings())


def write_instructions(folder: Path, instructions: list[str]) -> None:
    text = "".join(json.dumps({"instruction": i}) + "\n" for i in instructions)
    (folder / INSTRUCTIONS).write_text(text)


def task_of(prompt: str) -> str:
    return prompt.rsplit("Task: ", 1)[1].split("\n")[0].strip()


# --- step 2: the answer is stored as the model gave it ------------------------------------------

ANSWERS = {
    "Task one, exact yes": " Yes",
    "Task two, yes with a dot": "Yes.",
    "Task three, prefixed": "Answer: yes",
    "Task four, exact no": " no",
    "Task five, no with a comma": "No, it is not",
    "Task six, something else": " Maybe",
}


def run_step2(folder: Path, scripted, **settings):
    write_instructions(folder, list(ANSWERS))
    model = scripted(lambda p: ANSWERS[task_of(p)], max_batch=5)
    report = identify_classification(ctx(model), folder, ClassifySettings(**settings))
    stored = {
        r["instruction"]: r["is_classification"]
        for r in read_jsonl(next(folder.glob("is_clf_or_not_*.jsonl")))
    }
    return report, stored


def test_step2_stores_the_answer_text_and_counts_as_the_original_reads(tmp_path, scripted):
    report, stored = run_step2(tmp_path, scripted)
    assert stored == ANSWERS  # untouched, leading space included, as the original wrote it
    counts = report.counts
    assert (counts["yes"], counts["no"], counts["neither"]) == (1, 1, 4)
    assert counts["labelled_now"] == 6
    # Read back as the paper's scripts read it: only an exact yes is classification.
    labels = RunFolder(tmp_path).read_labels()
    assert [t for t, clf in labels.items() if clf] == ["Task one, exact yes"]


def test_step2_lenient_labels_store_a_clear_leading_yes_or_no(tmp_path, scripted):
    report, stored = run_step2(tmp_path, scripted, lenient_labels=True)
    assert stored == {
        "Task one, exact yes": "Yes",
        "Task two, yes with a dot": "Yes",
        "Task three, prefixed": "Yes",
        "Task four, exact no": "No",
        "Task five, no with a comma": "No",
        "Task six, something else": " Maybe",  # no clear word: kept as it came
    }
    assert (report.counts["yes"], report.counts["no"], report.counts["neither"]) == (3, 2, 1)


def test_answer_kind_and_lenient_reading():
    assert [answer_kind(a) for a in (" Yes", "yes\n", "YES", "yEs", "Yes.")] == [
        "yes",
        "yes",
        "yes",
        "neither",
        "neither",
    ]
    assert [answer_kind(a) for a in (" No", "no", "NO", "No.", "", "Nope")] == [
        "no",
        "no",
        "no",
        "neither",
        "neither",
        "neither",
    ]
    assert classification_answer("Yes.") == "Yes."
    assert classification_answer("**Yes**", lenient=True) == "Yes"
    assert classification_answer("Nothing to classify", lenient=True) == "Nothing to classify"
    assert classification_answer("It says yes", lenient=True) == "It says yes"  # not leading


# --- step 3: batches in file order, kinds mixed, one limit per batch ---------------------------


def original_limits(is_clf: list[bool], batch_size: int) -> list[int]:
    """The token limit each task gets in the paper's generate_instances.py, restated."""
    limits = []
    for start in range(0, len(is_clf), batch_size):
        batch = is_clf[start : start + batch_size]
        limits += [300 if any(batch) else 350] * len(batch)
    return limits


KINDS = [False, False, True, False, False, False, False, True, False, False, False, False]


def step3_folder(folder: Path) -> list[str]:
    tasks = [f"Task number {k} of the file" for k in range(len(KINDS))]
    write_instructions(folder, tasks)
    lines = [
        json.dumps({"instruction": t, "is_classification": " Yes" if clf else " No"}) + "\n"
        for t, clf in zip(tasks, KINDS, strict=True)
    ]
    (folder / "is_clf_or_not_m_template_1.jsonl").write_text("".join(lines))
    return tasks


@pytest.mark.parametrize("max_batch", [5, 2, 1])
def test_step3_batches_follow_the_file_and_any_classification_task_sets_the_limit(
    tmp_path, scripted, max_batch
):
    tasks = step3_folder(tmp_path)
    model = scripted(lambda p: "Output: y", max_batch=max_batch)
    generate_instances(ctx(model), tmp_path, InstanceSettings())
    asked = [task_of(p) for p in model.prompts]
    assert asked == tasks  # file order, kinds mixed
    limits = [s.max_tokens for s in model.samplings]
    assert limits == original_limits(KINDS, 5) == [300] * 10 + [350] * 2
    # Each task still gets its own template.
    output_first = ["Class label:" in p for p in model.prompts]
    assert output_first == KINDS


def test_step3_resumed_run_gives_each_task_the_limit_of_a_fresh_run(tmp_path, scripted):
    tasks = step3_folder(tmp_path)
    done = [
        json.dumps({"instruction": t, "raw_instances": "Output: y", "instance_metadata": {}}) + "\n"
        for t in tasks[:3]
    ]
    (tmp_path / "machine_generated_instances.jsonl").write_text("".join(done))
    model = scripted(lambda p: "Output: y", max_batch=5)
    generate_instances(ctx(model), tmp_path, InstanceSettings())
    by_task = {
        task_of(p): s.max_tokens for p, s in zip(model.prompts, model.samplings, strict=True)
    }
    fresh = dict(zip(tasks, original_limits(KINDS, 5), strict=True))
    assert by_task == {t: fresh[t] for t in tasks[3:]}
    assert by_task[tasks[3]] == 300  # a generation task, batched with task 2 (classification)


# --- step 1: casing and the filters ------------------------------------------------------------


def original_post_process(answer: str) -> list[str]:
    """The paper's bootstrap_instructions.py post-processing, restated: split the numbered
    list, fold whitespace, str.capitalize(), then the filters, in that order."""
    kept = []
    for raw in re.split(r"\n\d+\s?\. ", answer):
        text = re.sub(r"\s+", " ", raw).strip().capitalize()
        if not text or not 3 < len(text.split()) <= 150:
            continue
        if any(re.search(rf"\b{w}\b", text, re.IGNORECASE) for w in BANNED_WORDS):
            continue
        if text.startswith("Write a program"):
            continue
        if text[0] in string.punctuation or not text[0].isascii():
            continue
        kept.append(text)
    return kept


ANSWER = (
    " write a Python function that reverses every word\n"
    "10. WRITE A PROGRAM that adds two numbers together\n"
    "11. write a Program to count the vowels in text\n"
    "12.   Describe\n the   Eiffel Tower in three short sentences\n"
    "13. Draw a Cat using only ASCII characters please\n"
    "14. List the IMAGES that a poet might evoke in autumn\n"
    "15. \u00c9crivez une phrase sur la mer aujourd'hui\n"
    '16. "Quote" the first line of a famous novel now\n'
    "17. Name THREE rivers in Europe and one in Asia\n"
    "18. Too short here"
)


def seed_tasks(n: int = 8) -> list[SeedTask]:
    words = "apple river stone cloud pencil garden violin rocket candle mirror".split()
    return [
        SeedTask(
            f"s{i}",
            f"s{i}",
            f"Tell me about the {words[i]} and the {words[i + 1]} today",
            (Instance("", "An answer."),),
            False,
        )
        for i in range(n)
    ]


def step1_kept(folder: Path, scripted, answer: str, **settings) -> list[str]:
    answers = iter([answer])
    model = scripted(lambda p: next(answers, ""))
    settings.setdefault("max_stalled_requests", 1)
    generate_instructions(
        ctx(model), seed_tasks(), folder, InstructionSettings(num_instructions=20, **settings)
    )
    return [r["instruction"] for r in read_jsonl(folder / INSTRUCTIONS)]


def test_step1_lowercase_rest_keeps_exactly_what_the_original_kept(tmp_path, scripted):
    kept = step1_kept(tmp_path, scripted, ANSWER, lowercase_rest=True)
    assert kept == original_post_process(ANSWER)
    assert kept == [
        "Write a python function that reverses every word",
        "Describe the eiffel tower in three short sentences",
        "Name three rivers in europe and one in asia",
    ]


def test_step1_default_keeps_the_case_but_drops_the_same_candidates(tmp_path, scripted):
    kept = step1_kept(tmp_path, scripted, ANSWER)
    assert [k.capitalize() for k in kept] == original_post_process(ANSWER)
    assert kept[0] == "Write a Python function that reverses every word"


@pytest.mark.parametrize(
    "text",
    [
        "Write a program that sorts a list",
        "write a program that sorts a list",
        "Write a Program that sorts a list",
        "WRITE A PROGRAM that sorts a list",
        "wRiTe A pRoGrAm that sorts a list",
    ],
)
def test_write_a_program_filter_ignores_case(text):
    assert rejection_reason(text) == "write_a_program"


def test_banned_words_ignore_case():
    for text in ("DRAW a map of the town", "Describe this Image in words", "Please GO TO the shop"):
        assert rejection_reason(text) == "banned_word"


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from([*BANNED_WORDS, "mAp", "Drawing", "go  to", "goto", "a", "ıMAGE", "ſ"])
        | st.text(alphabet="abgimpoltfrKkIi _-.", max_size=8),
        max_size=6,
    ).map("".join)
)
def test_the_banned_word_filter_is_the_papers_regex(text):
    """Its quick test of ASCII texts never changes the paper's whole-word, any-case match."""
    from selfinstruct.filters import _BANNED_RE, banned_word

    assert (banned_word(text) is not None) == (_BANNED_RE.search(text) is not None)


def test_first_letter_checks_agree_with_either_capitalization():
    """Our default upper-cases the first letter where the scripts title-cased it with
    str.capitalize(): the punctuation and non-ASCII checks must not tell the two apart."""
    from selfinstruct.filters import leading_punctuation, non_ascii_start
    from selfinstruct.steps.parsing import capitalize_first

    for code in range(0x30000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        text = chr(code) + "x words here"
        ours, theirs = capitalize_first(text), text.capitalize()
        assert leading_punctuation(ours) == leading_punctuation(theirs), hex(code)
        assert non_ascii_start(ours) == non_ascii_start(theirs), hex(code)


# --- step 1: the "9." a chat model repeats -----------------------------------------------------


def test_split_numbered_list_strips_the_number_the_prompt_ended_on():
    assert split_numbered_list("9. Write a haiku about rain\n10. List three fruits") == [
        "Write a haiku about rain",
        "List three fruits",
    ]
    assert split_numbered_list("9.Write a haiku about rain") == ["Write a haiku about rain"]
    assert split_numbered_list("\n9 . Write a haiku") == ["Write a haiku"]
    assert split_numbered_list("9.\n10. List three fruits") == ["List three fruits"]
    # Only that number, only in front, and not a decimal.
    assert split_numbered_list("9.5 percent of what number is 19?") == [
        "9.5 percent of what number is 19?"
    ]
    assert split_numbered_list("Name 9. things") == ["Name 9. things"]
    assert split_numbered_list("7. Name a bird", first_number=7) == ["Name a bird"]
    assert split_numbered_list("7. Name a bird") == ["7. Name a bird"]


def test_step1_drops_a_leading_nine_before_the_filters(tmp_path, scripted):
    kept = step1_kept(tmp_path, scripted, "9. Compose a short poem about the autumn sea")
    assert kept == ["Compose a short poem about the autumn sea"]


def test_step1_leading_number_follows_the_prompt_size(tmp_path, scripted):
    kept = step1_kept(
        tmp_path,
        scripted,
        "7. Compose a short poem about the autumn sea",
        num_prompt_instructions=6,
    )
    assert kept == ["Compose a short poem about the autumn sea"]


# --- the local model: a seed per call ----------------------------------------------------------


@pytest.mark.slow
def test_local_model_draws_each_call_with_its_own_seed():
    from selfinstruct.models.base import Sampling
    from selfinstruct.models.llamacpp import LlamaCppModel

    sampling = Sampling(max_tokens=12, temperature=0.7, top_p=1.0)
    prompt = "Here is a list of unusual animal names:\n1."

    def draws(model: LlamaCppModel) -> list[str]:
        return [model.complete_sync([prompt], sampling)[0].text for _ in range(4)]

    first = draws(LlamaCppModel(seed=7))
    # A fixed seed per call gave the same answer four times; each call now has its own stream.
    assert len(set(first)) > 1, first
    # Deterministic: a fresh model with the same base seed draws the same sequence again.
    assert draws(LlamaCppModel(seed=7)) == first


@pytest.mark.slow
def test_local_model_seeds_differ_by_call_and_prompt_and_follow_the_base_seed():
    from selfinstruct.models.base import Sampling
    from selfinstruct.models.llamacpp import LlamaCppModel

    def seeds(base: int) -> list[int]:
        model = LlamaCppModel(seed=base)
        used: list[int] = []
        real = model._llm.create_completion

        def recording(**kwargs):
            used.append(kwargs["seed"])
            return real(**kwargs)

        model._llm.create_completion = recording
        sampling = Sampling(max_tokens=1, temperature=0.7)
        for prompt in ["A first prompt", "A second prompt", "A first prompt"]:
            model.complete_sync([prompt], sampling)
        # A request's own seed replaces the base seed, and is varied per call the same way.
        explicit = Sampling(max_tokens=1, temperature=0.7, seed=99)
        model.complete_sync(["A first prompt"], explicit)
        model.complete_sync(["A first prompt"], explicit)
        return used

    used = seeds(3)
    assert len(set(used)) == len(used) == 5
    assert seeds(3) == used
    other = seeds(4)
    assert other[:3] != used[:3] and other[3:] == used[3:]


# --- evaluate --format json --------------------------------------------------------------------


def test_evaluate_json_is_one_document_at_full_precision(tmp_path):
    from selfinstruct.cli.train import evaluate_command
    from selfinstruct.evaluation import score_file

    def predictions(name: str, pairs: list[tuple[str, str]]) -> Path:
        path = tmp_path / name
        rows = [
            {"id": str(k), "prompt": "p", "instruction": "i", "input": "", "response": r}
            | {"target": t}
            for k, (r, t) in enumerate(pairs)
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    a = predictions("a.jsonl", [("one two", "one"), ("x", "x"), ("y", "z")])
    b = predictions("b.jsonl", [("same", "same")])
    runner = CliRunner()
    out = runner.invoke(evaluate_command, ["--compare", str(a), str(b), "--format", "json"])
    assert out.exit_code == 0, out.output
    scores = json.loads(out.stdout)  # one document, not one per line
    assert [s["file"] for s in scores] == [str(b), str(a)]  # ranked, as the table
    exact = score_file(a)
    assert scores[1]["rouge_l"] == exact.rouge_l == pytest.approx(5 / 9, abs=1e-12)
    assert scores[1]["exact_match"] == exact.exact_match == pytest.approx(1 / 3, abs=1e-12)
    assert scores[1]["mean_length"] == exact.mean_length == pytest.approx(4 / 3, abs=1e-12)
    single = runner.invoke(evaluate_command, ["--predictions", str(a), "--format", "json"])
    assert json.loads(single.stdout) == [scores[1]]  # a list even for one file
    help_text = " ".join(runner.invoke(evaluate_command, ["--help"]).output.split())
    assert "full precision" in help_text and "a list with one object per file" in help_text


# --- packaging and the test run's summary ------------------------------------------------------


def test_license_is_an_spdx_expression():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    found = [re.fullmatch(r"setuptools>=(\d+)", r) for r in meta["build-system"]["requires"]]
    assert [int(m.group(1)) for m in found if m] >= [77]  # SPDX strings need setuptools 77


SKIPPING_TESTS = """
import pytest

def test_needs_data():
    pytest.skip("../shared/data absent: x.jsonl lies beside the project only")

def test_needs_more_data():
    pytest.skip("/somewhere/shared/data/self-instruct/y.jsonl absent: beside the project only")

def test_other_skip():
    pytest.skip("torch not installed")

def test_fine():
    assert {outcome}
"""


@pytest.mark.parametrize("outcome", [True, False])
def test_summary_line_counts_skips_for_missing_shared_data(tmp_path, outcome):
    (tmp_path / "test_sample.py").write_text(SKIPPING_TESTS.format(outcome=outcome))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider"]
        + ["--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT / 'src'}"},
        timeout=120,
    )
    line = "2 skipped: the original release's data is not beside the project (../shared/data)"
    assert run.stdout.count("skipped: the original release's data") == 1, run.stdout
    assert line in run.stdout.splitlines()
    assert run.returncode == (0 if outcome else 1)  # pytest's own exit code decides
