"""Checks of our own default seed set (issue 4): its size, format, diversity, and newness.

Each test prints the figure it asserts, so `pytest -s tests/test_seeds_default.py` shows them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from selfinstruct.filters import MAX_WORDS, rejection_reason
from selfinstruct.records import SeedTask
from selfinstruct.seeds import default, default_path, validate_seed_file

EXPECTED_COUNT = 175
MAX_INTERNAL_ROUGE_L = 0.7
MAX_ROUGE_L_VS_PAPER = 0.5
MIN_DISTINCT_LEADING_VERBS = 100
MAX_TASKS_PER_LEADING_WORD = 10
CLASSIFICATION_RANGE = (22, 30)
EMPTY_INPUT_RANGE = (50, 70)

PAPER_SEEDS = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "self-instruct" / "seed_tasks.jsonl"
)

# Words that can open an instruction without being its verb ("Given a list, sort it"). For
# these, the leading verb is the first word after the first clause break (, . ? : or ;).
NON_VERB_OPENERS = frozenset(
    "given if for based using in as when after with here this the a an my i you we suppose".split()
)
# Openers of a direct question. A question is a fine instruction, but these words are not
# counted as verbs (the auxiliaries are verbs, yet saying "is" leads a task would flatter the
# figure); they still count towards the at-most-10-per-word limit.
QUESTION_WORDS = frozenset(
    "what how why which who whom whose where when is are does do did can could should would".split()
)


@pytest.fixture(scope="module")
def seeds() -> list[SeedTask]:
    return default()


def leading_word(instruction: str) -> str:
    """The word that says what the instruction asks for, lower-cased and without punctuation.

    Usually the first word: an imperative ("Rewrite ...") or a question word ("Why ...").
    "Please" is skipped; after a non-verb opener ("Given ...", "I ...", "If ...") the word after
    the first clause break is taken instead.
    """
    words = re.findall(r"[A-Za-z']+", instruction)
    first = words[0].lower()
    if first == "please" and len(words) > 1:
        return words[1].lower()
    if first in NON_VERB_OPENERS:
        after_break = re.search(r"[,.?:;]\s+([A-Za-z']+)", instruction)
        if after_break:
            return after_break.group(1).lower()
    return first


def test_leading_word_rule() -> None:
    assert leading_word("Rewrite the sentence.") == "rewrite"
    assert leading_word("Please summarize this.") == "summarize"
    assert leading_word("Given a list of numbers, sort them.") == "sort"
    assert leading_word("I have two offers. Which should I take?") == "which"
    assert leading_word('"Quoted" start') == "quoted"


def test_count_fields_ids_and_names(seeds: list[SeedTask]) -> None:
    print(f"\nseed tasks: {len(seeds)}")
    assert len(seeds) == EXPECTED_COUNT
    for task in seeds:
        assert task.id and task.name and task.instruction.strip(), task
        assert task.instances, f"{task.id} has no instance"
        for instance in task.instances:
            assert isinstance(instance.input, str), task.id
            assert instance.output.strip(), f"{task.id} has an empty output"
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", task.name), task.name
    ids = [t.id for t in seeds]
    assert ids == [f"seed_task_{i}" for i in range(EXPECTED_COUNT)]
    names = Counter(t.name for t in seeds)
    assert len(names) == EXPECTED_COUNT, [n for n, c in names.items() if c > 1]


def test_file_passes_the_validator() -> None:
    problems = validate_seed_file(default_path())
    print(f"\nvalidator problems: {len(problems)}")
    assert problems == [], "\n".join(map(str, problems))


def test_file_is_the_original_format_written_as_utf8() -> None:
    lines = default_path().read_text(encoding="utf-8").splitlines()
    assert len(lines) == EXPECTED_COUNT
    for line in lines:
        obj = json.loads(line)
        assert list(obj) == ["id", "name", "instruction", "instances", "is_classification"]
        assert isinstance(obj["is_classification"], bool)
        assert all(list(i) == ["input", "output"] for i in obj["instances"])
        # Written with ensure_ascii=False: no \u escapes of characters such as "é" or "–".
        assert "\\u" not in line


def test_instructions_would_pass_the_instruction_filters(seeds: list[SeedTask]) -> None:
    lengths = [len(t.instruction.split()) for t in seeds]
    print(f"\ninstruction words: min {min(lengths)}, max {max(lengths)}")
    rejected = {t.id: rejection_reason(t.instruction) for t in seeds}
    rejected = {k: v for k, v in rejected.items() if v is not None}
    assert rejected == {}
    assert min(lengths) >= 4 and max(lengths) <= MAX_WORDS
    # One line each, without stray spaces: the bootstrap prompt numbers one instruction a line.
    assert all(t.instruction == " ".join(t.instruction.split()) for t in seeds)


def test_no_two_seed_instructions_are_near_duplicates(seeds: list[SeedTask]) -> None:
    from selfinstruct.similarity import RougeLIndex, rouge_l

    instructions = [t.instruction for t in seeds]
    # Each instruction against all earlier ones covers every pair exactly once.
    index = RougeLIndex()
    best, pair = 0.0, (0, 0)
    for i, text in enumerate(instructions):
        for position, score in index.top_k(text, 1):
            if score > best:
                best, pair = score, (position, i)
        index.add(text)
    first, second = (instructions[k] for k in pair)
    print(f"\nmax ROUGE-L F1 between two seed instructions: {best:.3f}")
    print(f"  {first!r}\n  {second!r}")
    assert rouge_l(first, second).fmeasure == pytest.approx(best)
    assert best <= MAX_INTERNAL_ROUGE_L


def test_seed_instructions_are_new_against_the_papers_seed_set(seeds: list[SeedTask]) -> None:
    if not PAPER_SEEDS.exists():
        pytest.skip(f"{PAPER_SEEDS} absent: the paper's seed set lies beside the project only")
    from selfinstruct.similarity import RougeLIndex, rouge_l

    lines = PAPER_SEEDS.read_text(encoding="utf-8").splitlines()
    paper = [json.loads(line)["instruction"] for line in lines if line.strip()]
    index = RougeLIndex(paper)
    best, ours = max((index.max_score(t.instruction), t.instruction) for t in seeds)
    [(position, _)] = index.top_k(ours, 1)
    theirs = paper[position]
    print(f"\nmax ROUGE-L F1 against the paper's {len(paper)} seed instructions: {best:.3f}")
    print(f"  ours:  {ours!r}\n  paper: {theirs!r}")
    assert rouge_l(theirs, ours).fmeasure == pytest.approx(best)
    assert best <= MAX_ROUGE_L_VS_PAPER


def test_leading_verbs_are_varied(seeds: list[SeedTask]) -> None:
    words = Counter(leading_word(t.instruction) for t in seeds)
    verbs = {w: c for w, c in words.items() if w not in QUESTION_WORDS}
    questions = sum(c for w, c in words.items() if w in QUESTION_WORDS)
    openers = sum(
        1 for t in seeds if re.findall(r"[A-Za-z']+", t.instruction)[0].lower() in NON_VERB_OPENERS
    )
    top_word, top_count = words.most_common(1)[0]
    print(
        f"\ndistinct leading verbs: {len(verbs)} (plus {questions} questions, "
        f"{openers} after a non-verb opener)"
        f"\nmost frequent leading word: {top_word!r} x{top_count}"
        f"\ntop: {words.most_common(10)}"
    )
    assert len(verbs) >= MIN_DISTINCT_LEADING_VERBS
    assert top_count <= MAX_TASKS_PER_LEADING_WORD


def test_classification_share_and_labels(seeds: list[SeedTask]) -> None:
    classification = [t for t in seeds if t.is_classification]
    print(f"\nclassification tasks: {len(classification)}")
    low, high = CLASSIFICATION_RANGE
    assert low <= len(classification) <= high
    for task in classification:
        labels = {i.output.strip() for i in task.instances}
        assert len(task.instances) >= 2, f"{task.id} needs at least 2 instances"
        assert len(labels) >= 2, f"{task.id}'s instances show only one label"


def test_empty_input_share(seeds: list[SeedTask]) -> None:
    empty = [t for t in seeds if all(i.input == "" for i in t.instances)]
    print(f"\ntasks with empty input: {len(empty)}")
    low, high = EMPTY_INPUT_RANGE
    assert low <= len(empty) <= high
