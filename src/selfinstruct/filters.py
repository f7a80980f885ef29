"""The instruction filters of the paper's bootstrap step, each a small named predicate.

A filter returns the reason a candidate is dropped, or None to keep it; the reasons are the
counters shown in progress bars and summaries, so that no candidate disappears unexplained.

English keeps the paper's filters exactly. Other languages (`selfinstruct.language`) count length
in that language's similarity tokens with bounds per script, require the first character to be
a letter or digit of any script, and use the banned words and "write a program" prefixes
translated for the language (off where none are given; docs/multilingual.md).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable
from functools import cache

from selfinstruct.language import Language, banned_word_pattern, get

MIN_WORDS_EXCLUSIVE = 3  # kept only with more than 3 words
MAX_WORDS = 150
BANNED_WORDS = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
)
# The model tends to prefix existing tasks with "Write a program", flooding the pool with them.
BANNED_PREFIX = "Write a program"

# Whole words, any casing (the paper matched each with re.IGNORECASE).
_BANNED_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in BANNED_WORDS) + r")\b", re.I)

Filter = Callable[[str], str | None]


def too_short(instruction: str) -> str | None:
    return "too_short" if len(instruction.split()) <= MIN_WORDS_EXCLUSIVE else None


def too_long(instruction: str) -> str | None:
    return "too_long" if len(instruction.split()) > MAX_WORDS else None


# Each banned word contains one of these: an ASCII text holding none of them, lower-cased, has
# no banned word (re.I folds only ASCII letters onto ASCII ones), and a substring test is far
# cheaper than the regex, which step 1 runs on every candidate.
_BANNED_STEMS = ("image", "graph", "picture", "file", "map", "draw", "plot", "go to")


def banned_word(instruction: str) -> str | None:
    if instruction.isascii():
        lowered = instruction.lower()
        if not any(stem in lowered for stem in _BANNED_STEMS):
            return None
    return "banned_word" if _BANNED_RE.search(instruction) else None


def write_a_program(instruction: str) -> str | None:
    # Any casing: the paper's script checked the prefix after str.capitalize(), which lower-cases
    # all but the first letter, so "WRITE A PROGRAM" and "write a Program" were dropped too.
    return "write_a_program" if instruction.capitalize().startswith(BANNED_PREFIX) else None


def leading_punctuation(instruction: str) -> str | None:
    return "leading_punctuation" if instruction[0] in string.punctuation else None


def non_ascii_start(instruction: str) -> str | None:
    return "non_ascii_start" if not instruction[0].isascii() else None


INSTRUCTION_FILTERS: tuple[Filter, ...] = (
    too_short,
    too_long,
    banned_word,
    write_a_program,
    leading_punctuation,
    non_ascii_start,
)


def rejection_reason(instruction: str, language: str | Language | None = None) -> str | None:
    """The first filter that drops this (already normalised, non-empty) instruction; the
    language's filters (default English: the paper's)."""
    code = "en" if language is None else get(language).code
    filters = INSTRUCTION_FILTERS if code == "en" else language_filters(code)
    for check in filters:
        reason = check(instruction)
        if reason is not None:
            return reason
    return None


@cache
def language_filters(code: str) -> tuple[Filter, ...]:
    """The instruction filters of a language other than English, in the paper's order."""
    lang = get(code)
    bounds = lang.settings

    def too_short(instruction: str) -> str | None:
        return "too_short" if len(lang.tokens(instruction)) <= bounds.min_tokens else None

    def too_long(instruction: str) -> str | None:
        return "too_long" if len(lang.tokens(instruction)) > bounds.max_tokens else None

    filters: list[Filter] = [too_short, too_long]
    banned = banned_word_pattern(code)
    if banned is not None:
        filters.append(lambda text: "banned_word" if banned.search(text) else None)
    if lang.banned_prefixes:
        prefixes = tuple(p.casefold() for p in lang.banned_prefixes)
        filters.append(
            lambda text: "write_a_program" if text.casefold().startswith(prefixes) else None
        )
    filters.append(leading_non_letter)
    return tuple(filters)


def leading_non_letter(instruction: str) -> str | None:
    """Any script's letter or digit may start an instruction; punctuation, symbols, marks and
    spaces may not."""
    first = unicodedata.category(instruction[0])[0]
    return None if first in ("L", "N") else "leading_non_letter"
