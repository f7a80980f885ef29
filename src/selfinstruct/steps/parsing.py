"""Parsing of model answers into candidate instructions, labels and instances."""

from __future__ import annotations

import re

from selfinstruct.records import is_yes

# "\n10. " as the paper's script split; also the numbering of answers in Chinese and Japanese:
# full-width digits ("１０"; \d matches any script's digits), the full-width stop "１０．", the
# ideographic comma "10、", and "10." directly followed by a non-ASCII character ("10.写").
_NUMBERED_ITEM_SPLIT = re.compile(r"\n\d+\s?(?:\. |[．、]\s*|\.(?=[^\x00-\x7f]))")
_FIRST_NUMBER = re.compile(r"\A\s*(\d+)\s?(?:\.(?!\d)|[．、])")
_WHITESPACE = re.compile(r"\s+")


def split_numbered_list(text: str, *, first_number: int = 9) -> list[str]:
    """The items of an answer that continues a numbered list from "9.".

    The answer starts with the text of item 9 and separates later items with "\\n10. " and so on;
    each item is folded onto one line. Empty items are dropped. A chat model often repeats the
    number the prompt ended on ("9. Write a ..."): that leading `first_number` is removed, so
    that the filters see the instruction itself (the paper's completion model never wrote it).
    """
    text = _strip_first_number(text, first_number)
    items = []
    for raw in _NUMBERED_ITEM_SPLIT.split(text):
        item = _WHITESPACE.sub(" ", raw).strip()
        if item:
            items.append(item)
    return items


def _strip_first_number(text: str, number: int) -> str:
    """``text`` without a leading "9." ("９．", "9、"), when that is the number given."""
    match = _FIRST_NUMBER.match(text)
    if match is None:
        return text
    digits = match.group(1)
    # ASCII exactly as written ("09." is not "9."); other digits by value ("９" is 9).
    same = digits == str(number) if digits.isascii() else int(digits) == number
    return text[match.end() :] if same else text


def capitalize_first(text: str, *, lowercase_rest: bool = False) -> str:
    """Upper-case the first character.

    The paper's script used Python's str.capitalize, which also lower-cases the rest ("Write a
    Python function" became "Write a python function"); `lowercase_rest` reproduces that.
    """
    if lowercase_rest:
        return text.capitalize()
    return text[:1].upper() + text[1:]


_LEADING_YES_NO = re.compile(r"[\W_]*(?:answer\s*:[\W_]*)?(yes|no)\b", re.I)
_NO = ("No", "no", "NO")


def parse_yes_no(text: str) -> str | None:
    """ "Yes" or "No" when a short answer starts with that word ("Yes.", " no,", "**YES**",
    "Answer: no"); None otherwise. The lenient reading of step 2, off by default."""
    match = _LEADING_YES_NO.match(text)
    if match is None:
        return None
    return "Yes" if match.group(1).lower() == "yes" else "No"


def classification_answer(text: str, *, lenient: bool = False) -> str:
    """What step 2 stores for a model's answer.

    As the paper's script did, the answer text itself, untouched (only an exact yes, once
    stripped, later counts as classification). With `lenient`, an answer that starts with a
    clear yes or no ("Yes.", "No, it is not") is stored as "Yes" or "No" instead.
    """
    if lenient:
        label = parse_yes_no(text)
        if label is not None:
            return label
    return text


def answer_kind(answer: str) -> str:
    """ "yes", "no" or "neither": how the paper's scripts would read a stored step-2 answer
    (an exact yes or no once stripped; anything else is "neither", read as not classification)."""
    if is_yes(answer):
        return "yes"
    if answer.strip() in _NO:
        return "no"
    return "neither"
