"""Record types of the pipeline and their JSONL field names.

Field names follow the original Self-Instruct release so that its files and ours can be read by
either tool. Each record converts to and from the plain dict written as one JSONL line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from selfinstruct.errors import DataFileError

_YES = ("Yes", "yes", "YES")


def is_yes(answer: str) -> bool:
    """The original scripts' reading of a step-2 answer: only an exact yes after strip."""
    return answer.strip() in _YES


@dataclass(frozen=True)
class Instance:
    input: str
    output: str

    def to_dict(self) -> dict[str, str]:
        return {"input": self.input, "output": self.output}


@dataclass(frozen=True)
class SeedTask:
    """A human-written task: the original `seed_tasks.jsonl` line."""

    id: str
    name: str
    instruction: str
    instances: tuple[Instance, ...]
    is_classification: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "instruction": self.instruction,
            "instances": [i.to_dict() for i in self.instances],
            "is_classification": self.is_classification,
        }


@dataclass
class MachineInstruction:
    """A line of `machine_generated_instructions.jsonl`."""

    instruction: str
    most_similar: dict[str, float]
    avg_similarity_score: float
    metadata: dict[str, Any]
    request_idx: int
    # Our addition (readers of the release's format ignore it): the run-wide order in which
    # step 1 decided on its candidates, kept and rejected alike (see RejectedInstruction).
    candidate_idx: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "instruction": self.instruction,
            "most_similar": self.most_similar,
            "avg_similarity_score": self.avg_similarity_score,
            "metadata": self.metadata,
            "request_idx": self.request_idx,
        }
        if self.candidate_idx is not None:
            out["candidate_idx"] = self.candidate_idx
        return out


@dataclass
class RejectedInstruction:
    """A line of `rejected_instructions.jsonl`: a step-1 candidate that was not kept.

    `instruction` is the candidate as the filters saw it (None where an answer or a request
    gave no candidate at all: `empty_answer`, `request_failed_*`, an empty cut answer).
    `most_similar` and `rouge_l` are the pool's closest instruction and its ROUGE-L F1, set for
    `too_similar` only (other reasons are decided on the text alone). `candidate_idx` orders
    kept and rejected candidates together, run-wide.
    """

    instruction: str | None
    reason: str
    request_idx: int
    candidate_idx: int
    most_similar: str | None = None
    rouge_l: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "instruction": self.instruction,
            "reason": self.reason,
            "most_similar": self.most_similar,
            "rouge_l": self.rouge_l,
            "request_idx": self.request_idx,
            "candidate_idx": self.candidate_idx,
        }


@dataclass
class ClassificationLabel:
    """A line of `is_clf_or_not_*.jsonl`: the model's answer text as it came (" Yes", "no.",
    ...), or "Yes"/"No" where step 2 ran with lenient labels."""

    instruction: str
    is_classification: str  # the original stores the answer text, not a bool

    def to_dict(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "is_classification": self.is_classification}

    @property
    def as_bool(self) -> bool:
        # The original's reading: anything but a plain yes counts as "not classification".
        return is_yes(self.is_classification)


@dataclass
class InstanceGeneration:
    """A line of `machine_generated_instances.jsonl`: the model's raw instance text for a task."""

    instruction: str
    raw_instances: str
    instance_metadata: dict[str, Any]
    instruction_metadata: dict[str, Any] = field(default_factory=dict)
    most_similar: dict[str, float] = field(default_factory=dict)
    avg_similarity_score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "instruction": self.instruction,
            "raw_instances": self.raw_instances,
            "instance_metadata": self.instance_metadata,
            "instruction_metadata": self.instruction_metadata,
            "most_similar": self.most_similar,
            "avg_similarity_score": self.avg_similarity_score,
        }


@dataclass(frozen=True)
class Example:
    """One (instruction, input, output) example, wherever it is read or written.

    Step 4's `all_generated_instances.jsonl`, the fine-tuning formats, the judge's and the
    review page's samples and evaluation tasks all use this one type. `instruction` is None
    only where a fine-tuning file's prompt cannot be split back (then `prompt` holds the whole
    user turn). `rating` is the judge's rating step 4 kept it with; `drop` is a filter's
    reason and details (the judge's rating, a decontamination overlap) for a dropped example;
    `system` a chat file's system message; `id` names it in prediction files. Only the texts
    take part in equality, so an example is the same whatever was said about it.
    """

    instruction: str | None = None
    input: str = ""
    output: str = ""
    rating: str | None = field(default=None, compare=False)
    prompt: str | None = None
    system: str | None = None
    id: str | None = field(default=None, compare=False)
    drop: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """What judgments and reviews are keyed by (see `example_key`)."""
        return example_key(self.instruction or self.prompt or "", self.input, self.output)

    @property
    def texts(self) -> tuple[str, str, str]:
        return (self.instruction or "", self.input, self.output)

    @property
    def user(self) -> str:
        """The user turn a model is trained on and asked: `render_user`, else the prompt."""
        if self.instruction is None:
            return self.prompt or ""
        return render_user(self.instruction, self.input)

    def chat_messages(self) -> list[dict[str, str]]:
        messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        messages.append({"role": "user", "content": self.user})
        messages.append({"role": "assistant", "content": self.output})
        return messages

    def to_dict(self) -> dict[str, Any]:
        """The instances format when the instruction is known (with the rating, if any), else
        prompt/response; a chat file's system message rides along."""
        if self.instruction is None:
            out: dict[str, Any] = {"prompt": self.prompt or "", "response": self.output}
        else:
            out = {"instruction": self.instruction, "input": self.input, "output": self.output}
        if self.rating is not None:
            out["rating"] = self.rating
        if self.system is not None:
            out["system"] = self.system
        if self.drop is not None:
            out.update(self.drop)
        return out

    @classmethod
    def from_dict(cls, record: dict[str, Any], where: str) -> Example:
        """An instances-format record; DataFileError naming `where` (file:line) otherwise.
        A null or missing input is the empty input; instruction and output must be there."""
        texts = []
        for name in ("instruction", "input", "output"):
            value = record.get(name)
            if value is None and name == "input":
                value = ""
            if value is None:
                raise DataFileError(f"{where}: missing field '{name}'")
            if not isinstance(value, str):
                raise DataFileError(f"{where}: field '{name}' is not text")
            if name == "instruction" and not value.strip():
                raise DataFileError(f"{where}: missing field 'instruction'")
            texts.append(value)
        rating = record.get("rating")
        return cls(*texts, rating=rating if isinstance(rating, str) else None)


@dataclass(frozen=True)
class Rating:
    """One example's rating and answers to the paper's three questions: the last line of its
    key in `judgments.jsonl` (the LLM judge) or `reviews.jsonl` (a person).

    `rating` is the text as written ("A".."D" when readable; None when unrated); a question
    not answered with a boolean is None. `record` is the whole line, for fields only one of
    the two files has (the judge's `raw` answer and `reason`, the review's `at`).
    """

    key: str
    rating: str | None
    valid_instruction: bool | None
    input_fits: bool | None
    output_correct: bool | None
    model: str | None
    record: dict[str, Any] = field(compare=False, repr=False)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Rating:
        def answer(name: str) -> bool | None:
            value = record.get(name)
            return value if isinstance(value, bool) else None

        rating, model = record.get("rating"), record.get("model")
        return cls(
            key=str(record["key"]),
            rating=None if rating is None else str(rating),
            valid_instruction=answer("valid_instruction"),
            input_fits=answer("input_fits"),
            output_correct=answer("output_correct"),
            model=model if isinstance(model, str) else None,
            record=record,
        )

    @property
    def answers(self) -> dict[str, bool | None]:
        """The three questions' answers by field name."""
        return {
            "valid_instruction": self.valid_instruction,
            "input_fits": self.input_fits,
            "output_correct": self.output_correct,
        }

    def example(self) -> Example | None:
        """The example's texts, where the line carries them."""
        instruction, output = self.record.get("instruction"), self.record.get("output")
        inp = self.record.get("input") or ""
        if isinstance(instruction, str) and isinstance(output, str) and isinstance(inp, str):
            return Example(instruction, inp, output)
        return None


def render_user(instruction: str, input: str = "") -> str:
    """The user turn of an instruction and its input: instruction, blank line, input."""
    instruction, input = instruction.strip(), input.strip()
    return f"{instruction}\n\n{input}" if input else instruction


def example_key(instruction: str, input: str, output: str) -> str:
    """A stable id of one (instruction, input, output) triple: what judgments and reviews are
    keyed by, so that a rating follows its example through reruns of prepare."""
    text = "\x1f".join(part.strip() for part in (instruction, input, output))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
