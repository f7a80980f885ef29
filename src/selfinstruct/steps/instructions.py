"""Step 1: bootstrap instructions from the seed tasks, as in the paper.

Each prompt lists 8 instructions (2 sampled from the machine-generated pool, fewer while it is
small, the rest from the seed tasks), shuffled and numbered, ending at "9." for the model to go
on. Every candidate in an answer passes the filters, then must have ROUGE-L F1 at most 0.7 to
every instruction already in the pool (seed and machine) at the moment it is accepted; the
accepted one joins the pool at once, so two kept instructions never exceed the threshold, at any
concurrency.

Every candidate that is not kept goes to the run folder's rejected file with its reason (the
filter's name, `too_similar` with the pool's closest instruction and its ROUGE-L F1, `surplus`,
`cut_by_length`, ...), one line per drop counted in the report. Kept and rejected records share
a run-wide `candidate_idx`, the order in which the candidates were decided, so that the run's
filtering can be replayed (`selfinstruct sweep`).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfinstruct.engine import WAIT, Request, RequestFailed
from selfinstruct.errors import ConfigError, DataFileError
from selfinstruct.filters import rejection_reason
from selfinstruct.io import JsonlAppender, iter_jsonl, read_jsonl
from selfinstruct.models.base import Completion, Sampling
from selfinstruct.progress import Bar
from selfinstruct.prompts import bootstrap_prompt
from selfinstruct.records import MachineInstruction, RejectedInstruction, SeedTask
from selfinstruct.runfolder import RunFolder
from selfinstruct.similarity import RougeLIndex
from selfinstruct.steps import StepContext, StepReport, response_metadata
from selfinstruct.steps.parsing import capitalize_first, split_numbered_list

PAPER_SAMPLING = Sampling(
    max_tokens=1024,
    temperature=0.7,
    top_p=0.5,
    frequency_penalty=0.0,
    presence_penalty=2.0,
    stop=("\n\n", "\n16", "16.", "16 ."),
)


@dataclass
class InstructionSettings:
    num_instructions: int = 100
    num_prompt_instructions: int = 8
    num_machine_in_prompt: int = 2
    request_batch_size: int = 5  # prompts per request, where the API takes a list
    classification_only: bool = False  # prompt with classification seeds only
    similarity_threshold: float = 0.7
    lowercase_rest: bool = False  # reproduce str.capitalize() of the original script
    seed: int = 42
    # Stop (incomplete, resumable) after this many answers in a row add nothing to the pool:
    # a model that only repeats itself would otherwise be asked forever.
    max_stalled_requests: int = 200
    sampling: Sampling = field(default_factory=lambda: PAPER_SAMPLING)


def generate_instructions(
    ctx: StepContext,
    seeds: list[SeedTask],
    run: str | Path | RunFolder,
    settings: InstructionSettings | None = None,
) -> StepReport:
    s = settings or InstructionSettings()
    if s.classification_only:
        seeds = [t for t in seeds if t.is_classification]
    folder = RunFolder.of(run)
    report = StepReport("instructions", outputs=[str(folder.instructions)])
    state = _Bootstrap(ctx, s, [t.instruction for t in seeds], folder)
    with (
        JsonlAppender(folder.instructions, warn=ctx.reporter.warn) as kept,
        JsonlAppender(folder.rejected, warn=ctx.reporter.warn) as rejected,
        ctx.reporter.bar("instructions", s.num_instructions, completed=state.resumed) as bar,
    ):
        state.write_to(kept, rejected, bar)
        engine = ctx.make_engine("instructions", report.usage, jitter_seed=s.seed)
        report.engine = engine.stats
        ctx.run(engine.run(state.next_request, state.on_result, state.on_failure))
    state.fill(report)
    return report


class _Bootstrap:
    """Step 1's state over one invocation: the pool, its index, the prompt sampler, and every
    decision on a candidate (kept, or rejected with its reason), in the order it was made.

    The engine calls `next_request` when a slot is free and `on_result`/`on_failure` on the
    event loop, one at a time, so none of this needs a lock.
    """

    def __init__(
        self,
        ctx: StepContext,
        s: InstructionSettings,
        seed_instructions: list[str],
        folder: RunFolder,
    ):
        self.ctx, self.s, self.seed_instructions = ctx, s, seed_instructions
        self.machine: list[str] = []
        self.request_idx = 0
        self.next_candidate = 0  # the run-wide candidate_idx of the next decision
        self._resume(folder)
        self.resumed = len(self.machine)
        self._check_seeds()
        self.index = RougeLIndex(seed_instructions + self.machine)
        # Seeded from the resume point, so that a resumed run is as reproducible as a fresh one.
        self.rng = random.Random(f"{s.seed}:{self.resumed}:{self.request_idx}")
        self.dropped: Counter[str] = Counter()
        self.in_flight_prompts = 0
        self.stalled = 0
        self.accepted: list[tuple[str, int, dict, int, int]] = []
        self.rejected: list[RejectedInstruction] = []  # decided, not yet written
        self.per_request = max(1, min(s.request_batch_size, ctx.model.max_batch))

    def _resume(self, folder: RunFolder) -> None:
        warn = self.ctx.reporter.warn
        for number, record in enumerate(
            read_jsonl(folder.instructions, repair=True, warn=warn), start=1
        ):
            if not isinstance(record.get("instruction"), str):
                raise DataFileError(f"{folder.instructions}:{number}: missing field 'instruction'")
            self.machine.append(record["instruction"])
            self._continue_after(record)
        # A rerun goes on numbering after the rejected candidates (and their requests) too.
        for record in iter_jsonl(folder.rejected, repair=True, warn=warn):
            self._continue_after(record)

    def _continue_after(self, record: dict) -> None:
        self.request_idx = max(self.request_idx, _index(record, "request_idx") + 1)
        self.next_candidate = max(self.next_candidate, _index(record, "candidate_idx") + 1)

    def _check_seeds(self) -> None:
        s = self.s
        # While the pool holds fewer machine instructions than a prompt shows, seeds fill in.
        needed = s.num_prompt_instructions - min(len(self.machine), s.num_machine_in_prompt)
        if len(self.seed_instructions) < needed:
            which = "classification seed tasks" if s.classification_only else "seed tasks"
            raise ConfigError(
                f"need at least {needed} {which} to build a prompt of"
                f" {s.num_prompt_instructions} instructions, got {len(self.seed_instructions)}"
            )

    def write_to(self, kept: JsonlAppender, rejected: JsonlAppender, bar: Bar) -> None:
        """Where decisions go once the files are open."""
        self.out, self.out_rejected, self.bar = kept, rejected, bar

    # --- requests ---------------------------------------------------------------------------

    def make_prompt(self) -> str:
        s, rng = self.s, self.rng
        chosen = rng.sample(self.machine, min(s.num_machine_in_prompt, len(self.machine)))
        chosen += rng.sample(self.seed_instructions, s.num_prompt_instructions - len(chosen))
        rng.shuffle(chosen)
        return bootstrap_prompt(chosen, classification=s.classification_only)

    def next_request(self) -> Request | None:
        still_needed = self.s.num_instructions - len(self.machine)
        if self.stalled >= self.s.max_stalled_requests:
            return None
        # Enough prompts in flight to finish (at least one candidate each is expected): wait.
        if still_needed <= 0 or self.in_flight_prompts >= still_needed:
            return None if still_needed <= 0 else WAIT
        prompts = [self.make_prompt() for _ in range(self.per_request)]
        self.in_flight_prompts += len(prompts)
        request = Request(prompts, self.s.sampling, key=self.request_idx)
        self.request_idx += 1
        return request

    # --- answers ----------------------------------------------------------------------------

    def on_result(self, request: Request, completions: list[Completion]) -> None:
        self.in_flight_prompts -= len(request.prompts)
        pool_before = len(self.machine)
        for prompt, completion in zip(request.prompts, completions, strict=True):
            self._take_answer(prompt, completion, request.key)
        # Written before this handler returns, so before any other answer is looked at;
        # scored together, because one batched call costs far less than one per record.
        # Kept records first: a crash in between loses rejection records only, never a
        # kept instruction that a written rejection was compared with.
        for record in _records(self.index, self.accepted):
            self.out.write(record.to_dict())
        self._flush_rejected()
        self.bar.advance(len(self.accepted))
        self.accepted.clear()
        self.stalled = 0 if len(self.machine) > pool_before else self.stalled + 1
        self.bar.note(self.dropped)

    def on_failure(self, request: Request, failure: RequestFailed) -> None:
        self.in_flight_prompts -= len(request.prompts)
        for _ in request.prompts:
            self._reject(None, f"request_failed_{failure.reason}", request.key)
        self._flush_rejected()

    def _take_answer(self, prompt: str, completion: Completion, key: int) -> None:
        s = self.s
        candidates = split_numbered_list(
            completion.text, first_number=s.num_prompt_instructions + 1
        )
        if completion.finish_reason == "length":
            # The paper drops the whole answer: its last item is cut, the rest suspect.
            for raw in candidates or [None]:
                self._reject(None if raw is None else _normalise(raw, s), "cut_by_length", key)
            return
        if not candidates:
            self._reject(None, "empty_answer", key)
        usage = {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
        }
        metadata = response_metadata(
            self.ctx.model, prompt, completion.text, completion.finish_reason, usage
        )
        for raw in candidates:
            self._decide(_normalise(raw, s), metadata, key)

    def _decide(self, candidate: str, metadata: dict, key: int) -> None:
        """Keep the candidate, or reject it with the first reason that applies."""
        if len(self.machine) >= self.s.num_instructions:
            return self._reject(candidate, "surplus", key)
        reason = rejection_reason(candidate)
        if reason is not None:
            return self._reject(candidate, reason, key)
        # The best match costs about what the plain threshold test costs.
        match = self.index.best_above(candidate, self.s.similarity_threshold)
        if match is not None:
            return self._reject(candidate, "too_similar", key, match)
        position = self.index.add(candidate)
        self.accepted.append((candidate, position, metadata, key, self.next_candidate))
        self.next_candidate += 1
        self.machine.append(candidate)
        return None

    def _reject(
        self, text: str | None, reason: str, key: int, match: tuple[int, float] | None = None
    ) -> None:
        self.dropped[reason] += 1
        self.rejected.append(
            RejectedInstruction(
                instruction=text,
                reason=reason,
                request_idx=key,
                candidate_idx=self.next_candidate,
                most_similar=None if match is None else self.index.text(match[0]),
                rouge_l=None if match is None else match[1],
            )
        )
        self.next_candidate += 1

    def _flush_rejected(self) -> None:
        for record in self.rejected:
            self.out_rejected.write(record.to_dict())
        self.rejected.clear()

    # --- the report -------------------------------------------------------------------------

    def fill(self, report: StepReport) -> None:
        s, machine = self.s, self.machine
        report.counts = {
            "instructions_in_file": len(machine),
            "accepted_now": len(machine) - self.resumed,
            "resumed_from": self.resumed,
            "requested": s.num_instructions,
        }
        report.dropped = dict(self.dropped)
        report.complete = len(machine) >= s.num_instructions
        if self.stalled >= s.max_stalled_requests:
            report.counts["stalled_requests"] = self.stalled
            self.ctx.reporter.warn(
                f"instructions: the last {self.stalled} answers added nothing new to the pool;"
                " stopped (try another model, a higher temperature or more varied seed tasks)"
            )


def _index(record: dict, key: str) -> int:
    """An integer index field of a stored record, -1 when absent (e.g. the release's files)."""
    value = record.get(key)
    return int(value) if isinstance(value, int | float) else -1


def _normalise(raw: str, s: InstructionSettings) -> str:
    """A parsed item as the filters see it."""
    return capitalize_first(raw, lowercase_rest=s.lowercase_rest)


def _records(
    index: RougeLIndex, accepted: list[tuple[str, int, dict, int, int]]
) -> list[MachineInstruction]:
    """The records of instructions just added to the index, each scored against the pool as it
    was when that instruction was accepted (every position before its own)."""
    if not accepted:
        return []
    rows = np.asarray(index.scores_many([a[0] for a in accepted]), dtype=float)
    records = []
    for row, (candidate, position, metadata, request_idx, candidate_idx) in zip(
        rows, accepted, strict=True
    ):
        scores = row[:position]
        # The 10 most similar, best first; ties go to the earlier instruction, as top_k does.
        order = _top_positions(scores, 10)
        records.append(
            MachineInstruction(
                instruction=candidate,
                most_similar={index.text(int(i)): float(scores[i]) for i in order},
                avg_similarity_score=float(scores.mean()) if len(scores) else 0.0,
                metadata=metadata,
                request_idx=request_idx,
                candidate_idx=candidate_idx,
            )
        )
    return records


def _top_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """The first k positions of a stable sort by descending score (ties: earlier first).

    Found without sorting the whole pool: a full sort per accepted instruction cost more than
    the scoring itself once the pool held tens of thousands of instructions.
    """
    n = len(scores)
    if n <= k:
        return np.lexsort((np.arange(n), -scores))
    kth = np.partition(scores, n - k)[n - k]  # the k-th highest score
    above = np.flatnonzero(scores > kth)  # fewer than k
    above = above[np.lexsort((above, -scores[above]))]
    ties = np.flatnonzero(scores == kth)[: k - len(above)]
    return np.concatenate((above, ties))
