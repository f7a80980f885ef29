"""The judge's prompt and the reading of an answer (the rubric itself is `rubric.py`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from string import Template

from selfinstruct.judge.rubric import (  # noqa: F401  (the judge's names for them)
    QUESTIONS,
    RATING_ORDER,
    RATING_SCORE,
    meets,
    normalize_rating,
)
from selfinstruct.models.base import Sampling
from selfinstruct.prompts import template

#: For the completions API the prompt opens the answer, so that a base model continues it.
ANSWER_PRIMER = "Valid task:"
#: Deterministic and short: four lines are about 20 tokens; the rest is room for noise.
JUDGE_MAX_TOKENS = 48


# --- the prompt ---------------------------------------------------------------------------


def judge_prompt(
    instruction: str, input: str, output: str, *, primed: bool = False, max_chars: int = 3000
) -> str:
    """The judge's prompt for one example; `primed` opens the answer (completions API)."""
    text = Template(template("judge")).substitute(
        instruction=_clip(instruction.strip(), max_chars),
        input=_clip(input.strip(), max_chars) or "(empty)",
        output=_clip(output.strip(), max_chars) or "(empty)",
    )
    if primed:
        text += f"\n{ANSWER_PRIMER}"
    return text


def _clip(text: str, max_chars: int) -> str:
    """Long fields are cut so that a prompt fits a small model's context; the cut is marked."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    return text[:max_chars].rstrip() + f" [... {len(text) - max_chars} more characters cut]"


def judge_sampling(primed: bool, max_tokens: int = JUDGE_MAX_TOKENS) -> Sampling:
    # A primed answer is four single-spaced lines: a blank line means the model moved on.
    return Sampling(
        max_tokens=max_tokens, temperature=0.0, top_p=1.0, stop=("\n\n",) if primed else ()
    )


# --- reading an answer --------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What one answer says. `rating` is None when the answer gives none, `problem` says why."""

    rating: str | None
    valid_instruction: bool | None = None
    input_fits: bool | None = None
    output_correct: bool | None = None
    problem: str | None = None

    def questions(self) -> dict[str, bool | None]:
        return {q: getattr(self, q) for q in QUESTIONS}


_MARKUP = re.compile(r"[*_`#>]+")
_ITEM = re.compile(
    r"^\s*(?:[-•]\s*)?(?:(?:q(?:uestion)?\s*)?(?P<num>\d)\s*[.):]\s+)?(?P<rest>.*?)\s*$", re.I
)
_LABEL = re.compile(
    r"^(?P<label>[A-Za-z][A-Za-z /'()-]{0,100}?)\s*(?::|=|\?|\s[-–]\s)\s*(?P<value>.*)$"
)
_LABEL_THEN_ANSWER = re.compile(
    r"^(?P<label>[A-Za-z][A-Za-z /'-]{0,60}?)\s+(?P<value>(?:yes|no|true|false)\b.*)$", re.I
)
_YES_NO = re.compile(r"\b(yes|no|true|false)\b", re.I)
_NOT_APPLICABLE = re.compile(r"^\W*(n/?a|not applicable|none)\b", re.I)
_LETTER_VALUE = re.compile(
    r"^[\s\"'(\[{]*(?:(?:rating|level|grade)[\s-]*)?(?P<letter>[ABCD])(?![A-Za-z0-9])", re.I
)
_LETTER_CLAUSE_END = re.compile(r"[.;(]|\s[-–]\s")
_LONE_LETTER = re.compile(r"^\W*(?P<letter>[ABCD])\W*$")
_LETTER_LINE = re.compile(r"^\(?(?P<letter>[ABCD])\)?\s*[:.)\-–]\s+\S")
_STANDALONE_LETTERS = re.compile(r"(?<![A-Za-z0-9'])([ABCD])(?![A-Za-z0-9'])")
_COMPACT = re.compile(
    r"^\W*(yes|no)\W+(yes|no)\W+(yes|no)\W+(?:rating\W*)?([ABCD])\W*$", re.I | re.S
)
_RATING_SENTENCE = re.compile(
    r"\b(?:rating|grade)\s+(?:is|would be|of)\s*:?\s*[\"'(]?(?P<letter>[ABCD])(?![A-Za-z0-9])", re.I
)
_KEYWORDS = (
    ("rating", ("rating", "grade", "score", "verdict", "final", "overall", "level")),
    ("input_fits", ("input",)),
    ("output_correct", ("output", "correct", "response", "answer")),
    ("valid_instruction", ("valid", "task", "instruction")),
)


def _question_of(label: str) -> str | None:
    """Which question a label names: the one whose keyword comes first ("Is the output a
    correct response to the input?" is about the output)."""
    label = label.lower()
    best: tuple[int, str] | None = None
    for question, words in _KEYWORDS:
        for word in words:
            at = label.find(word)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, question)
    return best[1] if best else None


def _yes_no(value: str) -> bool | None:
    """yes/true -> True, no/false -> False; both, neither, or "n/a" -> None."""
    if _NOT_APPLICABLE.match(value):
        return None
    found = {m.group(1).lower() in ("yes", "true") for m in _YES_NO.finditer(value)}
    return found.pop() if len(found) == 1 else None


def _letter(value: str) -> str | None:
    """The rating a value gives ("B", "(b)", "RATING-B", "B. Minor errors"), or None when it
    gives none or offers several ("A, B, C or D", "B or C")."""
    match = _LETTER_VALUE.match(value)
    if match is None:
        return None
    letter = match.group("letter")
    if letter.islower() and value.strip(" \"'()[]{}.!").lower() != letter:
        return None  # a lower-case "a" is an article unless it stands alone
    clause = value[match.end() :]
    cut = _LETTER_CLAUSE_END.search(clause)
    clause = clause[: cut.start()] if cut else clause
    others = {m.group(1) for m in _STANDALONE_LETTERS.finditer(clause)} - {letter.upper()}
    return None if others else letter.upper()


def _read_line(line: str) -> tuple[str, str] | None:
    """(question or "rating", value) of one answer line, or None when it names neither."""
    item = _ITEM.match(line)
    assert item is not None  # the pattern matches any line
    rest, number = item.group("rest"), item.group("num")
    for pattern in (_LABEL, _LABEL_THEN_ANSWER):
        labelled = pattern.match(rest)
        question = _question_of(labelled.group("label")) if labelled else None
        if labelled and question is not None:
            return question, labelled.group("value")
    if number is not None and number in "1234":
        return ("rating" if number == "4" else QUESTIONS[int(number) - 1]), rest
    return None


def parse_verdict(text: str) -> Verdict:
    """Read the three yes/no answers and the rating from a judge's answer, in any usual shape.

    Understood: the requested four labelled lines, in any order and case, with markdown, list
    markers or numbers ("2. Input fits: No"), or the paper's questions as labels; numbered
    answers without labels ("1. yes" ... "4. B"); a JSON object; "yes, yes, no, B"; a lone
    letter. The rating is required: without one, or with two different ones, the verdict has
    `rating=None` and a `problem`. A question not answered (or answered "n/a") is None.
    """
    if not text or not text.strip():
        return Verdict(None, problem="empty")
    clean = _MARKUP.sub("", text)
    from_json = _parse_json(clean)
    if from_json is not None:
        return from_json
    compact = _COMPACT.match(clean.strip())
    if compact:
        yes = [g.lower() == "yes" for g in compact.groups()[:3]]
        return Verdict(compact.group(4).upper(), *yes)

    answers: dict[str, bool | None] = {}
    ratings: list[str] = []
    loose: list[bool] = []  # yes/no alone on a line, without a label
    letter_lines: list[str] = []  # "B: acceptable, with minor errors"
    for line in clean.splitlines():
        if not line.strip():
            continue
        lone = _LONE_LETTER.match(line)
        if lone:
            ratings.append(lone.group("letter").upper())
            continue
        read = _read_line(line)
        if read is None:
            letter_line = _LETTER_LINE.match(line.strip())
            if letter_line:
                letter_lines.append(letter_line.group("letter").upper())
            elif len(line.split()) <= 3 and _yes_no(line) is not None:
                loose.append(_yes_no(line))  # type: ignore[arg-type]
            continue
        question, value = read
        if question == "rating" or _LONE_LETTER.match(value):
            # a question answered with a lone letter ("Answer: B") gives the rating
            letter = _letter(value)
            if letter is not None:
                ratings.append(letter)
            continue
        answer = _yes_no(value)
        if answer is not None or question not in answers:
            answers[question] = answer if answer is not None else answers.get(question)
    if not any(v is not None for v in answers.values()) and len(loose) == 3:
        answers = dict(zip(QUESTIONS, loose, strict=True))
    if not ratings and len(set(letter_lines)) == 1:
        ratings = letter_lines
    if not ratings:  # "... The rating is B."
        found = (m.group("letter") for m in _RATING_SENTENCE.finditer(clean))
        ratings = [letter for letter in found if letter.isupper()]  # "is a good one" is no rating
    questions = {q: answers.get(q) for q in QUESTIONS}
    if not ratings:
        return Verdict(None, **questions, problem="no_rating")
    if len(set(ratings)) > 1:
        return Verdict(None, **questions, problem="conflicting_ratings")
    return Verdict(ratings[0], **questions)


def _parse_json(text: str) -> Verdict | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(text[start : end + 1])
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    rating = None
    questions: dict[str, bool | None] = {}
    for key, value in obj.items():
        question = _question_of(str(key).replace("_", " "))
        if question == "rating":
            rating = _letter(str(value)) if value is not None else None
        elif question is not None:
            questions[question] = value if isinstance(value, bool) else _yes_no(str(value))
    if rating is None and not questions:
        return None
    q = {name: questions.get(name) for name in QUESTIONS}
    return Verdict(rating, **q, problem=None if rating else "no_rating")
