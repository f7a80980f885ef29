"""The run folder: the one place that knows its file names and how each step's file is read.

Steps, commands and tools ask a `RunFolder` for paths and records; none of them spells a file
name. The names are the original release's, so its folders and ours are interchangeable.

A folder is used by one process at a time: `RunFolder.lock()` takes an exclusive advisory lock
(flock) for the whole run, which the OS releases when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfinstruct.errors import DataFileError, RunLockedError
from selfinstruct.io import iter_jsonl
from selfinstruct.records import Example, Rating, is_yes

Warn = Callable[[str], None]

CLASSIFICATION_TEMPLATE = "template_1"
_GPT3_PATTERN = "gpt3_finetuning_data_{count}.jsonl"
_CLASSIFICATION_PATTERN = "is_clf_or_not_{engine}_{template}.jsonl"
# Step 4's example files, by format (formats.EXAMPLE_FORMATS renders each).
_EXAMPLE_FILES = {
    "chat": "openai_chat_finetuning_data.jsonl",
    "trl": "trl_prompt_completion.jsonl",
    "sharegpt": "sharegpt_data.jsonl",
    "alpaca": "alpaca_data.json",
}
_HELD: set[str] = set()  # lock files this process holds


def _ignore(_: str) -> None:
    pass


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding one object (run.json, finetune.json); DataFileError otherwise."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataFileError(f"{path}: expected a JSON object")
    return data


def engine_slug(name: str) -> str:
    """A model name as it appears in file names (the original's {engine} part)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


@dataclass(frozen=True)
class StepRecord:
    """One step's entry in run.json: its last invocation's counts, drops and usage summed
    over invocations."""

    counts: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    complete: bool | None = None
    invocations: int | None = None


@dataclass(frozen=True)
class RunRecord:
    """A typed view of run.json (see `runfile.RunFile`, its writer). An absent file is an
    empty record; a file that is not a JSON object is a DataFileError (`RunFolder.run_record`).
    """

    path: Path  # the run.json it was read from
    data: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole file

    @property
    def exists(self) -> bool:
        return bool(self.data)

    def config(self, step: str) -> dict[str, Any]:
        """The settings a step last ran with ({} when it never ran)."""
        config = self.data.get("config")
        found = config.get(step) if isinstance(config, dict) else None
        return found if isinstance(found, dict) else {}

    @property
    def steps(self) -> dict[str, StepRecord] | None:
        """Each step that ran, in the order run.json lists them; None without a 'steps' key."""
        steps = self.data.get("steps")
        if not isinstance(steps, dict):
            return None
        return {
            name: StepRecord(
                counts=_numbers(step.get("counts")),
                dropped=_numbers(step.get("dropped")),
                usage=_numbers(step.get("usage")),
                complete=step.get("complete"),
                invocations=step.get("invocations"),
            )
            for name, step in steps.items()
            if isinstance(step, dict)
        }

    @property
    def usage(self) -> dict[str, Any]:
        """Requests and tokens over all steps."""
        return _numbers(self.data.get("usage"))

    @property
    def cost_usd(self) -> float | None:
        return self.data.get("cost_usd")

    @property
    def model(self) -> dict[str, Any]:
        model = self.data.get("model")
        return model if isinstance(model, dict) else {}

    @property
    def model_name(self) -> str | None:
        name = self.model.get("name")
        return name if isinstance(name, str) else None

    @property
    def similarity_threshold(self) -> float | None:
        """Step 1's threshold: the run's identity, else the last config (older runs)."""
        identity = (self.data.get("identity") or {}).get("steps", {}).get("instructions", {})
        value = identity.get("similarity_threshold")
        if not isinstance(value, int | float):
            value = self.config("instructions").get("similarity_threshold")
        return float(value) if isinstance(value, int | float) else None

    @property
    def num_instructions(self) -> int | None:
        value = self.config("instructions").get("num_instructions")
        return value if isinstance(value, int) else None

    @property
    def classification_only(self) -> bool:
        return bool(self.config("instructions").get("classification_only"))

    @property
    def seed_file(self) -> str | None:
        """The seed file step 1 was given, as its config records it (None: seed tasks given
        as objects, or the default set). Never read from the command line."""
        config = self.config("instructions")
        for key in ("seed_tasks", "seed_tasks_path"):
            if isinstance(config.get(key), str) and config[key]:
                return config[key]
        return None

    def find_seed_file(self) -> Path | None:
        """`seed_file` on disk: inside the run folder (the run's own copy, seed_tasks.jsonl,
        which the config names), as recorded, then beside the run folder; None when it is not
        there any more."""
        if self.seed_file is None:
            return None
        path = Path(self.seed_file).expanduser()
        run = self.path.parent
        for candidate in (run / path, path, run.parent / path):
            if candidate.is_file():
                return candidate
        return None


def _numbers(d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        return {}
    return {str(k): v for k, v in d.items() if isinstance(v, int | float) and v is not True}


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
    def instruction_answers(self) -> Path:
        """Step 1's answers from arrival until decided (resume decides them, not asks again)."""
        return self.path / "instruction_answers.jsonl"

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

    def example_file(self, fmt: str) -> Path:
        """Step 4's file of unique examples in a format of `formats.EXAMPLE_FORMATS`."""
        return self.finetuning_dir / _EXAMPLE_FILES[fmt]

    @property
    def rated_instances(self) -> Path:
        """Step 4's generated examples the judge rated at least `--min-rating`."""
        return self.finetuning_dir / "rated_generated_instances.jsonl"

    @property
    def chat_finetuning(self) -> Path:
        return self.example_file("chat")

    @property
    def alpaca(self) -> Path:
        return self.example_file("alpaca")

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
    def batches(self) -> Path:
        """Batch API mode: every file uploaded and batch created, one line each, written the
        moment its id exists (a rerun resumes polling instead of paying again)."""
        return self.path / "batches.jsonl"

    def batch_output(self, batch_id: str, kind: str) -> Path:
        """A finished batch's downloaded `output` or `error` file, kept so that an answer paid
        for is read from disk, not bought again."""
        return self.path / "batch_files" / f"{engine_slug(batch_id)}.{kind}.jsonl"

    @property
    def forecast(self) -> Path:
        """`selfinstruct estimate`'s last forecast, for `report` to show beside the actual."""
        return self.path / "forecast.json"

    @property
    def seed_tasks(self) -> Path:
        """A copy of the seed tasks the run was made from (the release's seed_tasks format),
        so that later steps and tools use them whatever the working directory."""
        return self.path / "seed_tasks.jsonl"

    @property
    def judgments_file(self) -> Path:
        """The LLM judge's ratings of step 4's instances."""
        return self.path / "judgments.jsonl"

    @property
    def reviews_file(self) -> Path:
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
        """Step 2's file, by one policy for every reader: `preferred` (a name in the folder)
        when it is there; else the folder's only one; else the one of the model run.json
        records; else DataFileError naming them all."""
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
        model = self.run_record().model_name
        if model is not None and self.classification_file_for(model) in found:
            return self.classification_file_for(model)
        names = ", ".join(p.name for p in found)
        raise DataFileError(
            f"{self.path}: several classification files ({names}) and none is the model's"
            " that run.json records; name one in the classification_files setting"
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

    def instruction_positions(self, *, warn: Warn = _ignore) -> dict[str, int]:
        """Each instruction's place in step 1's file: the order steps 2 and 3 take them in
        (first occurrence); empty when there is no such file."""
        if not self.instructions.exists():
            return {}
        positions: dict[str, int] = {}
        for record in iter_jsonl(self.instructions, warn=warn):
            if isinstance(record.get("instruction"), str):
                positions.setdefault(record["instruction"], len(positions))
        return positions

    def read_examples(self, *, unique: bool = False, warn: Warn = _ignore) -> list[Example]:
        """Step 4's examples (`all_generated_instances.jsonl`) in file order, each with the
        rating it was kept with; `unique` keeps the first of each key. A record that is not
        an example is a DataFileError naming its line."""
        path = self.all_instances
        if not path.exists():
            raise DataFileError(f"{path}: no such file (run 'selfinstruct prepare')")
        examples = []
        seen: set[str] = set()
        for number, record in enumerate(iter_jsonl(path, warn=warn), start=1):
            example = Example.from_dict(record, f"{path}:{number}")
            if unique:
                if example.key in seen:
                    continue
                seen.add(example.key)
            examples.append(example)
        return examples

    def run_record(self) -> RunRecord:
        """run.json, typed: an empty record when there is none; DataFileError when it is not
        a JSON object (it is written atomically, so that is someone else's file)."""
        if not self.run_file.exists():
            return RunRecord(self.run_file)
        return RunRecord(self.run_file, read_json_object(self.run_file))

    def judgments(
        self,
        *,
        model: str | None = None,
        rated_only: bool = False,
        path: Path | None = None,
        warn: Warn = _ignore,
    ) -> dict[str, Rating]:
        """The LLM judge's ratings by example key (`last_by_key`); `model` keeps one judge's
        lines, `rated_only` the lines with a rating A-D, so that an unreadable answer does not
        hide an earlier rating."""

        def keep(r: Rating) -> bool:
            rated = r.rating is not None and r.rating.strip().upper() in ("A", "B", "C", "D")
            return (model is None or r.model == model) and (rated or not rated_only)

        return self.last_by_key(path or self.judgments_file, keep=keep, warn=warn)

    def reviews(self, *, repair: bool = False, warn: Warn = _ignore) -> dict[str, Rating]:
        """A person's current answers by example key (`last_by_key`); `repair` also cuts a
        torn last line from the file (the review page, which appends to it)."""
        return self.last_by_key(self.reviews_file, repair=repair, warn=warn)

    @staticmethod
    def last_by_key(
        path: Path,
        *,
        keep: Callable[[Rating], bool] = lambda _: True,
        repair: bool = False,
        warn: Warn = _ignore,
    ) -> dict[str, Rating]:
        """The one reader of a keyed ratings file: the last kept line of each key wins and
        takes its place in the order; lines without a 'key' are skipped with one warning.
        {} when the file is absent."""
        out: dict[str, Rating] = {}
        skipped = 0
        for record in iter_jsonl(path, repair=repair, warn=warn):
            if not isinstance(record.get("key"), str) or not record["key"]:
                skipped += 1
                continue
            rating = Rating.from_dict(record)
            if keep(rating):
                out.pop(rating.key, None)
                out[rating.key] = rating
        if skipped:
            warn(f"{path}: {skipped} line(s) without a 'key' ignored")
        return out

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


@dataclass(frozen=True)
class TrainingReport:
    """A typed view of a fine-tune's `finetune.json` (local training or an OpenAI job)."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole file

    @property
    def status(self) -> str | None:
        return self.data.get("status")

    @property
    def fingerprint(self) -> Any:
        """What the run was made from (data digest, settings, base): a rerun with another
        fingerprint is another fine-tune."""
        return self.data.get("fingerprint")

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def data_file(self) -> str | None:
        """The training data file as the fine-tune was given it."""
        found = self.data.get("data")
        name = found.get("file") if isinstance(found, dict) else None
        return name if isinstance(name, str) else None

    @property
    def model_spec(self) -> str | None:
        return self.data.get("model_spec")


class FinetuneFolder:
    """A fine-tune's output folder: the only place that knows its file names (the local
    trainer, the OpenAI job runner, the llama.cpp backend and `evaluate` all ask it)."""

    ADAPTER = "adapter.gguf"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FinetuneFolder({str(self.path)!r})"

    @property
    def adapter(self) -> Path:
        """The LoRA adapter in GGUF, which llama.cpp applies on the untouched base."""
        return self.path / self.ADAPTER

    @property
    def full_model(self) -> Path:
        return self.path / "model.gguf"

    @property
    def peft_dir(self) -> Path:
        return self.path / "peft"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoint"

    @property
    def checkpoint(self) -> Path:
        return self.checkpoint_dir / "state.pt"

    @property
    def report_file(self) -> Path:
        return self.path / "finetune.json"

    @property
    def heldout(self) -> Path:
        return self.path / "heldout.jsonl"

    @property
    def train(self) -> Path:
        """The split the model trained on, as instances."""
        return self.path / "train.jsonl"

    @property
    def openai_job(self) -> Path:
        return self.path / "openai_job.json"

    @property
    def openai_train(self) -> Path:
        return self.path / "openai_train.jsonl"

    @property
    def openai_validation(self) -> Path:
        return self.path / "openai_validation.jsonl"

    def outputs(self) -> list[Path]:
        """Everything a local fine-tune writes, for a restart to clear."""
        return [
            self.report_file, self.adapter, self.full_model, self.heldout, self.train,
            self.checkpoint_dir, self.peft_dir,
        ]  # fmt: skip

    def training_report(self) -> TrainingReport | None:
        """finetune.json, typed; None when there is none. DataFileError when it is not a JSON
        object (written atomically, so it is someone else's file)."""
        if not self.report_file.exists():
            return None
        return TrainingReport(self.report_file, read_json_object(self.report_file))
