"""The tables of an exported dataset, read from a run folder, and their Parquet files.

Four configs, each a list of rows with declared columns:

* ``default``: step 4's training examples (instruction, input, output, and any rating or other
  per-example field the run recorded), split train/test on request, by instruction;
* ``instructions``: step 1's pool (``most_similar``, ``avg_similarity_score``, ``request_idx``);
* ``instances``: step 3's instances as parsed, with step 2's classification label;
* ``rejected``: step 1's rejected candidates with their reasons.

A column type is "string", "int64", "float64", "bool" or a list of (name, type) pairs for a list
of structs; `arrow_schema` and the card's `dataset_info` are both made from it.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError, DataFileError, MissingExtraError
from selfinstruct.formats import dataset_file
from selfinstruct.runfolder import RunFolder
from selfinstruct.steps.prepare import labelled_tasks, parse_instances

ColumnType = str | list[tuple[str, str]]
CONFIGS = ("default", "instructions", "instances", "rejected")
SIMILAR = [("instruction", "string"), ("rouge_l", "float64")]
TRIPLE = [("instruction", "string"), ("input", "string"), ("output", "string")]


@dataclass
class Table:
    """One config of the dataset: its columns and its rows by split."""

    config: str
    description: str
    columns: list[tuple[str, ColumnType]]
    splits: dict[str, list[dict[str, Any]]]
    notes: dict[str, int] = field(default_factory=dict)  # what reading it skipped, by reason

    def rows(self) -> int:
        return sum(len(r) for r in self.splits.values())


# --- reading the run ------------------------------------------------------------------------


def read_tables(rf: RunFolder, *, test_size: float | None = None, seed: int = 0) -> list[Table]:
    """Every config the run folder has rows for; `default` (step 4) is required. `datasets`
    cannot load an empty split, so a config without rows (no rejected candidate) is left out."""
    default = _examples(rf, test_size, seed)
    if not default.rows():
        raise DataFileError(f"{rf.all_instances}: no training example to publish")
    tables = [default]
    if rf.instructions.exists():
        tables.append(_instructions(rf))
    if rf.instances.exists() and rf.classification_files():
        tables.append(_instances(rf))
    if rf.rejected.exists():
        tables.append(_rejected(rf))
    return [t for t in tables if t.rows()]


def _examples(rf: RunFolder, test_size: float | None, seed: int) -> Table:
    records = [e.to_dict() for e in rf.read_examples()]
    columns: list[tuple[str, ColumnType]] = list(TRIPLE)
    columns += _extra_columns(records, {name for name, _ in TRIPLE})
    rows = [{name: _cell(r.get(name), kind) for name, kind in columns} for r in records]
    if test_size is None:
        splits = {"train": rows}
    else:
        splits = split_by_instruction(rows, test_size, seed)
    return Table("default", "the training examples (step 4)", columns, splits)


def _extra_columns(records: list[dict[str, Any]], known: set[str]) -> list[tuple[str, str]]:
    """Per-example fields beyond the triple (the judge's rating, decontamination fields, ...)
    in first-seen order, typed by their values; values of mixed or nested types become JSON."""
    kinds: dict[str, set[str]] = {}
    for record in records:
        for name, value in record.items():
            if name not in known and value is not None:
                kinds.setdefault(name, set()).add(_kind(value))
    return [(name, _one_kind(found)) for name, found in kinds.items()]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    return "string" if isinstance(value, str) else "json"


def _one_kind(found: set[str]) -> str:
    if found <= {"int64", "float64"} and "float64" in found:
        return "float64"
    return found.pop() if len(found) == 1 and "json" not in found else "string"


def _cell(value: Any, kind: ColumnType) -> Any:
    if value is None or kind != "string" or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def split_by_instruction(
    rows: list[dict[str, Any]], test_size: float, seed: int
) -> dict[str, list[dict[str, Any]]]:
    """Train and test rows with no instruction in both. `test_size` below 1 is the share of
    instructions held out, 1 or more their number; the choice is seeded."""
    tasks = list(dict.fromkeys(r["instruction"] for r in rows))
    if test_size <= 0:
        raise ConfigError(f"test size: expected a share in (0, 1) or a count, got {test_size}")
    n_test = round(len(tasks) * test_size) if test_size < 1 else int(test_size)
    n_test = max(1, n_test)
    if n_test >= len(tasks):
        raise ConfigError(
            f"test size: {n_test} of {len(tasks)} instructions would leave nothing to train on"
        )
    held = set(random.Random(seed).sample(tasks, n_test))
    return {
        "train": [r for r in rows if r["instruction"] not in held],
        "test": [r for r in rows if r["instruction"] in held],
    }


def _instructions(rf: RunFolder) -> Table:
    columns: list[tuple[str, ColumnType]] = [
        ("instruction", "string"),
        ("most_similar", SIMILAR),
        ("avg_similarity_score", "float64"),
        ("request_idx", "int64"),
        ("candidate_idx", "int64"),
    ]
    rows = [
        {
            "instruction": r["instruction"],
            "most_similar": [
                {"instruction": text, "rouge_l": float(score)}
                for text, score in (r.get("most_similar") or {}).items()
            ],
            "avg_similarity_score": _number(r.get("avg_similarity_score"), float),
            "request_idx": _number(r.get("request_idx"), int),
            "candidate_idx": _number(r.get("candidate_idx"), int),
        }
        for r in rf.read_instructions()
    ]
    return Table("instructions", "the instruction pool (step 1)", columns, {"train": rows})


def _instances(rf: RunFolder) -> Table:
    """Each task's instances as step 4 parses them, before its validity filters, with the
    task's classification label. Tasks step 2 did not label cannot be parsed: counted, left out."""
    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    tasks = rf.read_instance_generations()
    for task, clf in labelled_tasks(tasks, rf.read_labels(), skipped):
        parsed = parse_instances(task.get("raw_instances") or "", task["instruction"], clf)
        skipped["tasks_unparsable"] += not parsed
        rows += [
            {
                "instruction": e.instruction,
                "input": e.input,
                "output": e.output,
                "is_classification": clf,
            }
            for e in parsed
        ]
    columns = [*TRIPLE, ("is_classification", "bool")]
    table = Table("instances", "the parsed instances (step 3)", columns, {"train": rows})
    table.notes = {k: v for k, v in skipped.items() if v}
    return table


def _rejected(rf: RunFolder) -> Table:
    columns: list[tuple[str, ColumnType]] = [
        ("instruction", "string"),
        ("reason", "string"),
        ("most_similar", "string"),
        ("rouge_l", "float64"),
        ("request_idx", "int64"),
        ("candidate_idx", "int64"),
    ]
    rows = [
        {
            "instruction": r.get("instruction"),
            "reason": str(r.get("reason", "")),
            "most_similar": r.get("most_similar"),
            "rouge_l": _number(r.get("rouge_l"), float),
            "request_idx": _number(r.get("request_idx"), int),
            "candidate_idx": _number(r.get("candidate_idx"), int),
        }
        for r in rf.read_rejected()
    ]
    return Table("rejected", "the rejected candidates (step 1)", columns, {"train": rows})


def _number(value: Any, kind: type) -> Any:
    return kind(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --- Parquet --------------------------------------------------------------------------------


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MissingExtraError(
            "export needs pyarrow and huggingface_hub: pip install 'selfinstruct[hub]'"
        ) from None
    return pa


def arrow_type(kind: ColumnType) -> Any:
    pa = _pyarrow()
    if isinstance(kind, list):
        return pa.list_(pa.struct([(name, arrow_type(k)) for name, k in kind]))
    return {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
    }[kind]


def write_parquet(table: Table, folder: Path) -> dict[str, dict[str, int]]:
    """One Parquet file per split under `folder`; returns each split's rows and bytes."""
    pa = _pyarrow()
    schema = pa.schema([(name, arrow_type(kind)) for name, kind in table.columns])
    sizes = {}
    for split, rows in table.splits.items():
        try:
            data = pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataFileError(f"{table.config}: a value does not fit its column ({e})") from None
        buffer = io.BytesIO()
        pa.parquet.write_table(data, buffer)
        path = dataset_file(folder, table.config, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
        sizes[split] = {
            "num_examples": len(rows),
            "num_bytes": data.nbytes,
            "file_bytes": len(buffer.getvalue()),
        }
    return sizes
