"""Helpers shared by the steps that go over a file of instructions once each."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selfinstruct.errors import DataFileError
from selfinstruct.io import read_jsonl
from selfinstruct.progress import Reporter


def load_instruction_records(
    path: Path, reporter: Reporter, *, limit: int | None = None
) -> list[dict[str, Any]]:
    """The records of an instructions file, each with a string 'instruction', first-seen order."""
    if not path.exists():
        raise DataFileError(f"{path}: no such file (run the previous step first)")
    records = []
    seen: set[str] = set()
    for number, record in enumerate(read_jsonl(path, warn=reporter.warn), start=1):
        instruction = record.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataFileError(f"{path}:{number}: missing field 'instruction'")
        if instruction in seen:
            continue
        seen.add(instruction)
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    return records


def done_instructions(path: Path, reporter: Reporter) -> set[str]:
    """Instructions already answered in an output file (a torn last line is cut off first)."""
    return {
        r["instruction"]
        for r in read_jsonl(path, repair=True, warn=reporter.warn)
        if isinstance(r.get("instruction"), str)
    }


def batched(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def engine_slug(name: str) -> str:
    """A model name as it appears in file names (the original's {engine} part)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
