"""Record types of the pipeline and their JSONL field names.

Field names follow the original Self-Instruct release so that its files and ours can be read by
either tool. Each record converts to and from the plain dict written as one JSONL line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MachineInstruction:
        idx = d.get("candidate_idx")
        return cls(
            instruction=d["instruction"],
            most_similar=dict(d.get("most_similar") or {}),
            avg_similarity_score=float(d.get("avg_similarity_score", 0.0)),
            metadata=dict(d.get("metadata") or {}),
            request_idx=int(d.get("request_idx", 0)),
            candidate_idx=None if idx is None else int(idx),
        )


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RejectedInstruction:
        score = d.get("rouge_l")
        return cls(
            instruction=d.get("instruction"),
            reason=str(d.get("reason", "")),
            request_idx=int(d.get("request_idx", -1)),
            candidate_idx=int(d.get("candidate_idx", -1)),
            most_similar=d.get("most_similar"),
            rouge_l=None if score is None else float(score),
        )


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InstanceGeneration:
        return cls(
            instruction=d["instruction"],
            raw_instances=d.get("raw_instances") or "",
            instance_metadata=dict(d.get("instance_metadata") or {}),
            instruction_metadata=dict(d.get("instruction_metadata") or {}),
            most_similar=dict(d.get("most_similar") or {}),
            avg_similarity_score=float(d.get("avg_similarity_score") or 0.0),
        )


@dataclass(frozen=True)
class TrainingExample:
    """One (instruction, input, output) triple after filtering: `all_generated_instances.jsonl`."""

    instruction: str
    input: str
    output: str

    def to_dict(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


def example_key(instruction: str, input: str, output: str) -> str:
    """A stable id of one (instruction, input, output) triple: what judgments and reviews are
    keyed by, so that a rating follows its example through reruns of prepare."""
    text = "\x1f".join(part.strip() for part in (instruction, input, output))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
