"""Seed tasks: our default set, and the loader and validator used for every seed file.

Two formats are read:
- the original release's `seed_tasks.jsonl`: one object a line with `id`, `name`,
  `instruction`, `instances` (a list of `{"input", "output"}`) and `is_classification`;
- a plain list of instructions: a `.txt` file with one instruction a line, or JSONL lines that
  carry only `instruction` (and optionally `is_classification`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from selfinstruct.errors import ConfigError, SeedFileError
from selfinstruct.records import Instance, SeedTask

DEFAULT_SEED_FILE = "default_seed_tasks.jsonl"
# Small sets written for the project in other languages (docs/multilingual.md).
BUILTIN_FILES = {"en": DEFAULT_SEED_FILE, "zh": "zh_seed_tasks.jsonl", "ru": "ru_seed_tasks.jsonl"}


@dataclass(frozen=True)
class SeedProblem:
    path: str
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        if self.field:
            where += f": field '{self.field}'"
        return f"{where}: {self.message}"


def default_path(language: str = "en") -> Path:
    """The path of the seed set that ships inside the package for a language (English: the
    175 tasks; Chinese and Russian: 20 each); ConfigError for a language without one."""
    name = BUILTIN_FILES.get(language.strip().lower().replace("_", "-").split("-")[0])
    if name is None:
        raise ConfigError(
            f"no built-in seed tasks in {language!r} (there are: {', '.join(BUILTIN_FILES)});"
            " give your own (`seed_tasks`)"
        )
    return Path(str(resources.files("selfinstruct.seeds").joinpath(name)))


def default(language: str = "en") -> list[SeedTask]:
    """Our own seed tasks, as the pipeline uses them when no seed file is given: the 175
    English ones, or the small set of another language (see `default_path`)."""
    return load_seed_tasks(default_path(language))


def load_seed_tasks(path: str | Path) -> list[SeedTask]:
    """Read a seed file; raise SeedFileError naming the first problem's file, line and field."""
    tasks, problems = _read(Path(path))
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise SeedFileError(f"{first}{more}")
    return tasks


def validate_seed_file(path: str | Path) -> list[SeedProblem]:
    """Every problem of a seed file, in line order; an empty list means the file is valid."""
    return _read(Path(path))[1]


def _read(path: Path) -> tuple[list[SeedTask], list[SeedProblem]]:
    shown = str(path)
    if not path.exists():
        return [], [SeedProblem(shown, 0, None, "no such file")]
    if path.is_dir():
        return [], [SeedProblem(shown, 0, None, "is a folder, not a seed file")]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return [], [SeedProblem(shown, 0, None, f"not UTF-8 text ({e.reason})")]
    if path.suffix == ".txt":
        tasks, problems = _read_plain_lines(shown, text)
    else:
        tasks, problems = _read_jsonl(shown, text)
    if not tasks and not problems:
        problems.append(SeedProblem(shown, 0, None, "contains no seed task"))
    return tasks, problems


def _read_plain_lines(shown: str, text: str) -> tuple[list[SeedTask], list[SeedProblem]]:
    tasks: list[SeedTask] = []
    lines: list[int] = []  # each task's line in the file (blank lines count)
    for number, line in enumerate(text.splitlines(), start=1):
        instruction = line.strip()
        if instruction:
            tasks.append(_plain_task(len(tasks), instruction, False))
            lines.append(number)
    return tasks, _duplicate_instructions(shown, tasks, lines)


def _plain_task(index: int, instruction: str, is_classification: bool) -> SeedTask:
    return SeedTask(
        id=f"seed_task_{index}",
        name=_slug(instruction),
        instruction=instruction,
        instances=(),
        is_classification=is_classification,
    )


def _slug(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())[:4]
    return "_".join(words) or "task"


def _read_jsonl(shown: str, text: str) -> tuple[list[SeedTask], list[SeedProblem]]:
    tasks: list[SeedTask] = []
    lines: list[int] = []
    problems: list[SeedProblem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(SeedProblem(shown, number, None, f"not valid JSON ({e.msg})"))
            continue
        if not isinstance(obj, dict):
            problems.append(SeedProblem(shown, number, None, "expected a JSON object"))
            continue
        task, line_problems = _task_from_object(shown, number, obj, len(tasks))
        problems.extend(line_problems)
        if task is not None:
            tasks.append(task)
            lines.append(number)
    problems.extend(_duplicate_instructions(shown, tasks, lines))
    seen_ids: dict[str, int] = {}
    for task, number in zip(tasks, lines, strict=True):
        if task.id in seen_ids:
            problems.append(
                SeedProblem(shown, number, "id", f"'{task.id}' repeats line {seen_ids[task.id]}")
            )
        seen_ids.setdefault(task.id, number)
    problems.sort(key=lambda p: p.line)
    return tasks, problems


def _task_from_object(
    shown: str, number: int, obj: dict, index: int
) -> tuple[SeedTask | None, list[SeedProblem]]:
    problems: list[SeedProblem] = []

    def problem(field: str, message: str) -> None:
        problems.append(SeedProblem(shown, number, field, message))

    instruction = obj.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        problem("instruction", "missing or not a non-empty string")
        return None, problems

    is_classification = obj.get("is_classification", False)
    if not isinstance(is_classification, bool):
        problem("is_classification", f"expected true or false, got {is_classification!r}")
        is_classification = False

    full_format = any(key in obj for key in ("id", "name", "instances"))
    if not full_format:
        return _plain_task(index, instruction.strip(), is_classification), problems

    for key in ("id", "name"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            problem(key, "missing or not a non-empty string")
    raw_instances = obj.get("instances")
    instances: list[Instance] = []
    if not isinstance(raw_instances, list) or not raw_instances:
        problem("instances", "missing or not a non-empty list of {input, output} objects")
    else:
        for k, raw in enumerate(raw_instances):
            where = f"instances[{k}]"
            if not isinstance(raw, dict):
                problem(where, "expected an object with 'input' and 'output'")
                continue
            inp, out = raw.get("input"), raw.get("output")
            if not isinstance(inp, str):
                problem(f"{where}.input", 'missing or not a string (use "" for no input)')
                continue
            if not isinstance(out, str) or not out.strip():
                problem(f"{where}.output", "missing or not a non-empty string")
                continue
            instances.append(Instance(input=inp, output=out))
    if problems:
        return None, problems
    return (
        SeedTask(
            id=obj["id"],
            name=obj["name"],
            instruction=instruction,
            instances=tuple(instances),
            is_classification=is_classification,
        ),
        problems,
    )


def _duplicate_instructions(
    shown: str, tasks: list[SeedTask], lines: list[int]
) -> list[SeedProblem]:
    problems = []
    first_line: dict[str, int] = {}
    for task, number in zip(tasks, lines, strict=True):
        key = " ".join(task.instruction.split()).lower()
        if key in first_line:
            problems.append(
                SeedProblem(shown, number, "instruction", f"repeats line {first_line[key]}")
            )
        first_line.setdefault(key, number)
    return problems


def seeds_text(tasks: list[SeedTask]) -> str:
    """Tasks in the original `seed_tasks.jsonl` format."""
    return "".join(json.dumps(t.to_dict(), ensure_ascii=False) + "\n" for t in tasks)


def write_seed_tasks(tasks: list[SeedTask], path: str | Path) -> None:
    """Write tasks in the original `seed_tasks.jsonl` format."""
    Path(path).write_text(seeds_text(tasks), encoding="utf-8")
