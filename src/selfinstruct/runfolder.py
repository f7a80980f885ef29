"""The run folder: the one place that knows its file names and how each step's file is read.

Steps, commands and tools ask a `RunFolder` for paths and records; none of them spells a file
name. The names are the original release's, so its folders and ours are interchangeable.

A folder is used by one process at a time: `RunFolder.lock()` takes an exclusive advisory lock
(flock) for the whole run, which the OS releases when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from selfinstruct.errors import DataFileError, RunLockedError
from selfinstruct.io import iter_jsonl
from selfinstruct.records import is_yes

Warn = Callable[[str], None]

CLASSIFICATION_TEMPLATE = "template_1"
_GPT3_PATTERN = "gpt3_finetuning_data_{count}.jsonl"
_CLASSIFICATION_PATTERN = "is_clf_or_not_{engine}_{template}.jsonl"
_HELD: set[str] = set()  # lock files this process holds


def _ignore(_: str) -> None:
    pass


def engine_slug(name: str) -> str:
    """A model name as it appears in file names (the original's {engine} part)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


class RunFolder:
    """A run folder's paths and readers. Creating one touches nothing on disk."""

    def __init__(self, path: str | Path, *, finetuning: str = "finetuning_data"):
        self.path = Path(path)
        self._finetuning = finetuning

    @classmethod
    def of(cls, run: str | Path | RunFolder) -> RunFolder:
        return run if isinstance(run, RunFolder) else cls(run)

    def with_finetuning_dir(self, name: str) -> RunFolder:
        """The same folder with step 4's files in another sub-folder."""
        return RunFolder(self.path, finetuning=name)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # --- the files ------------------------------------------------------------------------

    @property
    def instructions(self) -> Path:
        """Step 1's kept instructions."""
        return self.path / "machine_generated_instructions.jsonl"

    @property
    def rejected(self) -> Path:
        """Step 1's rejected candidates, each with its reason."""
        return self.path / "rejected_instructions.jsonl"

    @property
    def instances(self) -> Path:
        """Step 3's raw instances."""
        return self.path / "machine_generated_instances.jsonl"

    @property
    def finetuning_dir(self) -> Path:
        return self.path / self._finetuning

    @property
    def all_instances(self) -> Path:
        """Step 4's filtered (instruction, input, output) triples."""
        return self.finetuning_dir / "all_generated_instances.jsonl"

    @property
    def chat_finetuning(self) -> Path:
        return self.finetuning_dir / "openai_chat_finetuning_data.jsonl"

    @property
    def alpaca(self) -> Path:
        return self.finetuning_dir / "alpaca_data.json"

    @property
    def dropped_examples(self) -> Path:
        """Step 4's examples dropped by a filter (judge rating, decontamination), with why."""
        return self.finetuning_dir / "dropped_examples.jsonl"

    def gpt3_finetuning(self, count: int | str) -> Path:
        return self.finetuning_dir / _GPT3_PATTERN.format(count=count)

    def gpt3_finetuning_files(self) -> list[Path]:
        return sorted(self.finetuning_dir.glob(_GPT3_PATTERN.format(count="*")))

    def sampled_instances(self, count: int) -> Path:
        return self.finetuning_dir / f"sampled_generated_instances_{count}.jsonl"

    @property
    def run_file(self) -> Path:
        """run.json: configuration, counts, drops, usage and cost."""
        return self.path / "run.json"

    @property
    def judgments(self) -> Path:
        """The LLM judge's ratings of step 4's instances."""
        return self.path / "judgments.jsonl"

    @property
    def reviews(self) -> Path:
        """A person's ratings from the review page."""
        return self.path / "reviews.jsonl"

    @property
    def calibration_judgments(self) -> Path:
        """The judge's ratings of examples from outside the run (a file people rated, the
        paper's released predictions), kept so that a rerun of the calibration reuses them."""
        return self.path / "judge_calibration.jsonl"

    @property
    def calibration_report(self) -> Path:
        """The last calibration's agreement figures (JSON)."""
        return self.path / "judge_calibration.json"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    @property
    def lock_file(self) -> Path:
        return self.path / ".selfinstruct.lock"

    def classification_file_for(self, model_name: str) -> Path:
        """Step 2's file for a model: is_clf_or_not_{engine}_template_1.jsonl."""
        name = _CLASSIFICATION_PATTERN.format(
            engine=engine_slug(model_name), template=CLASSIFICATION_TEMPLATE
        )
        return self.path / name

    def classification_files(self) -> list[Path]:
        return sorted(self.path.glob(_CLASSIFICATION_PATTERN.format(engine="*", template="*")))

    def find_classification_file(self, preferred: str | Path | None = None) -> Path:
        """Step 2's file: the preferred one if present, else the folder's only one."""
        if preferred:
            chosen = self.path / preferred
            if chosen.exists():
                return chosen
        found = self.classification_files()
        if len(found) == 1:
            return found[0]
        if not found:
            raise DataFileError(
                f"{self.path}: no is_clf_or_not_*.jsonl (run 'selfinstruct identify-clf' first)"
            )
        names = ", ".join(p.name for p in found)
        raise DataFileError(
            f"{self.path}: several classification files ({names}); choose one with"
            " --classification-file"
        )

    # --- the readers ----------------------------------------------------------------------

    def read_instructions(
        self, *, path: Path | None = None, limit: int | None = None, warn: Warn = _ignore
    ) -> list[dict[str, Any]]:
        """Step 1's records, each with a string 'instruction', first-seen order, no repeats."""
        path = path or self.instructions
        if not path.exists():
            raise DataFileError(f"{path}: no such file (run the previous step first)")
        records = []
        seen: set[str] = set()
        for number, record in enumerate(iter_jsonl(path, warn=warn), start=1):
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

    def read_rejected(self, *, warn: Warn = _ignore) -> list[dict[str, Any]]:
        """Step 1's rejected candidates in file order; empty when there is no such file (the
        original release's folders)."""
        return list(iter_jsonl(self.rejected, warn=warn))

    def read_decisions(self, *, warn: Warn = _ignore) -> list[dict[str, Any]]:
        """Step 1's candidates, kept and rejected, in the order they were decided, each with
        ``"kept": True`` or ``False`` added. Kept records without a ``candidate_idx`` (the
        original release's) come first, in file order; the others follow by ``candidate_idx``."""
        if not self.instructions.exists():
            raise DataFileError(f"{self.instructions}: no such file (run the previous step first)")

        def idx(record: dict[str, Any]) -> int | None:
            value = record.get("candidate_idx")
            return int(value) if isinstance(value, int | float) else None

        first: list[dict[str, Any]] = []
        numbered: list[tuple[int, dict[str, Any]]] = []
        for record in iter_jsonl(self.instructions, warn=warn):
            k = idx(record)
            if k is None:
                first.append({**record, "kept": True})
            else:
                numbered.append((k, {**record, "kept": True}))
        for record in self.read_rejected(warn=warn):
            numbered.append((idx(record) or 0, {**record, "kept": False}))
        numbered.sort(key=lambda pair: pair[0])
        return first + [record for _, record in numbered]

    def read_answers(self, path: Path | None = None, *, warn: Warn = _ignore) -> dict[str, str]:
        """Step 2's raw answers by instruction (the last one wins)."""
        path = path or self.find_classification_file()
        answers = {}
        for record in iter_jsonl(path, warn=warn):
            if isinstance(record.get("instruction"), str):
                answers[record["instruction"]] = str(record.get("is_classification", ""))
        return answers

    def read_labels(
        self, paths: list[Path] | None = None, *, warn: Warn = _ignore
    ) -> dict[str, bool]:
        """Step 2's labels as booleans, read as the original scripts read them."""
        labels: dict[str, bool] = {}
        for path in paths or [self.find_classification_file()]:
            labels.update({k: is_yes(v) for k, v in self.read_answers(path, warn=warn).items()})
        return labels

    def read_instance_generations(
        self, paths: list[Path] | None = None, *, warn: Warn = _ignore
    ) -> list[dict[str, Any]]:
        """Step 3's records, in file order."""
        out: list[dict[str, Any]] = []
        for path in paths or [self.instances]:
            if not path.exists():
                raise DataFileError(f"{path}: no such file (run 'selfinstruct generate-instances')")
            out.extend(iter_jsonl(path, warn=warn))
        return out

    def read_examples(self, *, warn: Warn = _ignore) -> list[dict[str, Any]]:
        """Step 4's filtered triples (instruction, input, output, and any rating)."""
        if not self.all_instances.exists():
            raise DataFileError(f"{self.all_instances}: no such file (run 'selfinstruct prepare')")
        return list(iter_jsonl(self.all_instances, warn=warn))

    def done_instructions(self, path: Path, *, warn: Warn = _ignore) -> set[str]:
        """Instructions already answered in an output file (a torn last line is cut off)."""
        return {
            r["instruction"]
            for r in iter_jsonl(path, repair=True, warn=warn)
            if isinstance(r.get("instruction"), str)
        }

    # --- one process at a time ------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for this process, or raise RunLockedError at once.

        Re-entrant within a process: a pipeline holds the folder for a whole run while each of
        its steps asks for it again.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.lock_file)
        if key in _HELD:
            yield
            return
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
                raise RunLockedError(
                    f"{self.path}: in use by another selfinstruct process (pid {holder});"
                    " wait for it to finish, or stop it and rerun to resume"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _HELD.add(key)
            try:
                yield
            finally:
                _HELD.discard(key)
        finally:
            os.close(fd)  # closing the descriptor releases the lock
