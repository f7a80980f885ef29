"""Parsing of model answers into candidate instructions, labels and instances."""

from __future__ import annotations

import re

_NUMBERED_ITEM_SPLIT = re.compile(r"\n\d+\s?\. ")
_WHITESPACE = re.compile(r"\s+")


def split_numbered_list(text: str) -> list[str]:
    """The items of an answer that continues a numbered list from "9.".

    The answer starts with the text of item 9 and separates later items with "\\n10. " and so on;
    each item is folded onto one line. Empty items are dropped.
    """
    items = []
    for raw in _NUMBERED_ITEM_SPLIT.split(text):
        item = _WHITESPACE.sub(" ", raw).strip()
        if item:
            items.append(item)
    return items


def capitalize_first(text: str, *, lowercase_rest: bool = False) -> str:
    """Upper-case the first character.

    The paper's script used Python's str.capitalize, which also lower-cases the rest ("Write a
    Python function" became "Write a python function"); `lowercase_rest` reproduces that.
    """
    if lowercase_rest:
        return text.capitalize()
    return text[:1].upper() + text[1:]


_YES_NO = re.compile(r"\b(yes|no)\b", re.I)


def parse_yes_no(text: str) -> str | None:
    """ "Yes" or "No" from a short answer ("Yes", " no.", "Answer: YES"); None when neither."""
    match = _YES_NO.search(text)
    if match is None:
        return None
    return "Yes" if match.group(1).lower() == "yes" else "No"
