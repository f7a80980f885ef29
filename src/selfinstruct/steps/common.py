"""Helpers shared by the steps that send a list of tasks in request batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def batched(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
