"""Reading a run folder for the report: every step file, through `RunFolder`'s typed readers,
in the steps' order (so are the warnings)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError, DataFileError
from selfinstruct.records import Example, Rating
from selfinstruct.runfolder import RunFolder, RunRecord

Progress = Callable[[str], None]


@dataclass
class Run:
    rf: RunFolder
    record: RunRecord  # run.json
    instructions: list[dict[str, Any]] | None  # step 1 records
    labels: dict[str, bool] | None
    labels_file: Path | None
    instance_tasks: int | None  # step 3: distinct instructions with an answer
    examples: list[Example] | None  # step 4
    rejected: list[dict[str, Any]] | None
    judgments: dict[str, Rating] | None  # last record per key
    reviews: dict[str, Rating] | None


def _step_files(rf: RunFolder) -> list[Path]:
    files = [rf.instructions, rf.instances, rf.all_instances, *rf.classification_files()]
    return [p for p in files if p.exists()]


def _check_not_empty(path: Path, records: Iterable[Any]) -> None:
    if not any(True for _ in records):
        raise DataFileError(f"{path}: empty file (no records); rerun the step that writes it")


def _check_run_folder(rf: RunFolder) -> None:
    if not rf.path.exists():
        raise ConfigError(f"{rf.path}: no such run folder")
    if not rf.path.is_dir():
        raise ConfigError(f"{rf.path}: not a folder (give the run folder, e.g. runs/demo)")
    if not _step_files(rf):
        raise DataFileError(
            f"{rf.path}: no step files ({rf.instructions.name}, {rf.all_instances.parent.name}/"
            f"{rf.all_instances.name}, ...); run 'selfinstruct run --out {rf.path}' first"
        )


def _read_instructions(rf: RunFolder, warn: Progress) -> list[dict[str, Any]] | None:
    if not rf.instructions.exists():
        return None
    instructions = rf.read_instructions(warn=warn)
    _check_not_empty(rf.instructions, instructions)
    return instructions


def _read_labels(rf: RunFolder, warn: Progress) -> tuple[dict[str, bool] | None, Path | None]:
    """Step 2's labels from the file the run folder's one policy picks, and that file."""
    if not rf.classification_files():
        return None, None
    labels_file = rf.find_classification_file()
    labels = rf.read_labels([labels_file], warn=warn)
    _check_not_empty(labels_file, labels)
    return labels, labels_file


def _count_instance_tasks(rf: RunFolder, warn: Progress) -> int | None:
    if not rf.instances.exists():
        return None
    seen = {r["instruction"] for r in rf.read_instance_generations(warn=warn)
            if isinstance(r.get("instruction"), str)}  # fmt: skip
    _check_not_empty(rf.instances, seen)
    return len(seen)


def _read_examples(rf: RunFolder, warn: Progress) -> list[Example] | None:
    if not rf.all_instances.exists():
        return None
    examples = rf.read_examples(warn=warn)
    _check_not_empty(rf.all_instances, examples)
    return examples


def read_run(rf: RunFolder, warn: Progress) -> Run:
    """Every step file of the run, read in the steps' order (so are the warnings)."""
    _check_run_folder(rf)
    record = rf.run_record()
    instructions = _read_instructions(rf, warn)
    labels, labels_file = _read_labels(rf, warn)
    return Run(
        rf,
        record,
        instructions,
        labels,
        labels_file,
        _count_instance_tasks(rf, warn),
        _read_examples(rf, warn),
        rf.read_rejected(warn=warn) if rf.rejected.exists() else None,
        rf.judgments(warn=warn) if rf.judgments_file.exists() else None,
        rf.reviews(warn=warn) if rf.reviews_file.exists() else None,
    )
