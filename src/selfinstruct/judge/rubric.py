"""The paper's rubric, once: the four rating levels and the three quality questions.

The judge asks them, the review page shows them, the report tabulates them; each takes the
levels and questions from here (Self-Instruct, Section 4.4 and Table 2).
"""

from __future__ import annotations

from typing import Any

from selfinstruct.errors import ConfigError

#: The four levels, best first.
RATING_ORDER: tuple[str, ...] = ("A", "B", "C", "D")
#: A rating as a number for means: A = 4 ... D = 1.
RATING_SCORE: dict[str, int] = {"A": 4, "B": 3, "C": 2, "D": 1}
#: Each level in a few words (table headers and figure labels).
RATING_MEANING: dict[str, str] = {
    "A": "valid and satisfying",
    "B": "acceptable, minor imperfections",
    "C": "responds, significant errors",
    "D": "irrelevant or invalid",
}
#: Each level in a sentence, for a person rating on the review page.
RATING_GUIDE: dict[str, str] = {
    "A": "Valid and satisfying: it does what the instruction asks, and does it well.",
    "B": "Acceptable, with small mistakes or imperfections.",
    "C": "On topic, answering the instruction, but with serious errors in its content.",
    "D": "Off topic or entirely wrong: not a usable response.",
}
#: The quality-review questions, answered yes or no, by the field names of judgments and
#: reviews.
QUESTION_TEXT: dict[str, str] = {
    "valid_instruction": "Does the instruction describe a valid task?",
    "input_fits": "Is the input appropriate for the instruction?",
    "output_correct": "Is the output a correct and acceptable response?",
}
QUESTIONS: tuple[str, ...] = tuple(QUESTION_TEXT)


def normalize_rating(value: Any) -> str | None:
    """ "a", " B " -> "A", "B"; None for anything that is not one of the four levels."""
    if isinstance(value, str) and value.strip().upper() in RATING_ORDER:
        return value.strip().upper()
    return None


def meets(rating: str | None, minimum: str) -> bool:
    """Whether `rating` is `minimum` or better (A > B > C > D); an unrated example never is."""
    floor = normalize_rating(minimum)
    if floor is None:
        raise ConfigError(f"minimum rating {minimum!r}: expected one of A, B, C, D")
    found = normalize_rating(rating) if isinstance(rating, str) else None
    return found is not None and RATING_ORDER.index(found) <= RATING_ORDER.index(floor)
