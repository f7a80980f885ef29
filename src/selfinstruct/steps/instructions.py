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

from selfinstruct.engine import WAIT, Engine, Request, RequestFailed
from selfinstruct.errors import ConfigError, DataFileError
from selfinstruct.filters import rejection_reason
from selfinstruct.io import JsonlAppender, iter_jsonl, read_jsonl
from selfinstruct.models.base import Completion, Sampling
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
    folder = RunFolder.of(run)
    out_path = folder.instructions
    report = StepReport("instructions", outputs=[str(out_path)])
    if s.classification_only:
        seeds = [t for t in seeds if t.is_classification]
    seed_instructions = [t.instruction for t in seeds]
    existing = read_jsonl(out_path, repair=True, warn=ctx.reporter.warn)
    machine: list[str] = []
    request_idx = 0
    next_candidate = 0  # the run-wide candidate_idx of the next decision
    for number, record in enumerate(existing, start=1):
        if not isinstance(record.get("instruction"), str):
            raise DataFileError(f"{out_path}:{number}: missing field 'instruction'")
        machine.append(record["instruction"])
        request_idx = max(request_idx, _index(record, "request_idx") + 1)
        next_candidate = max(next_candidate, _index(record, "candidate_idx") + 1)
    # A rerun goes on numbering after the rejected candidates (and their requests) too.
    for record in iter_jsonl(folder.rejected, repair=True, warn=ctx.reporter.warn):
        request_idx = max(request_idx, _index(record, "request_idx") + 1)
        next_candidate = max(next_candidate, _index(record, "candidate_idx") + 1)
    resumed = len(machine)
    # While the pool holds fewer machine instructions than a prompt shows, seeds fill the rest.
    seeds_needed = s.num_prompt_instructions - min(len(machine), s.num_machine_in_prompt)
    if len(seed_instructions) < seeds_needed:
        which = "classification seed tasks" if s.classification_only else "seed tasks"
        raise ConfigError(
            f"need at least {seeds_needed} {which} to build a prompt of"
            f" {s.num_prompt_instructions} instructions, got {len(seed_instructions)}"
        )

    index = RougeLIndex(seed_instructions + machine)
    # Seeded from the resume point, so that a resumed run is as reproducible as a fresh one.
    rng = random.Random(f"{s.seed}:{resumed}:{request_idx}")
    dropped: Counter[str] = Counter()
    in_flight_prompts = 0
    stalled = 0
    accepted: list[tuple[str, int, dict, int, int]] = []
    rejected: list[RejectedInstruction] = []  # decided, not yet written
    per_request = max(1, min(s.request_batch_size, ctx.model.max_batch))

    def make_prompt() -> str:
        chosen = rng.sample(machine, min(s.num_machine_in_prompt, len(machine)))
        chosen += rng.sample(seed_instructions, s.num_prompt_instructions - len(chosen))
        rng.shuffle(chosen)
        return bootstrap_prompt(chosen, classification=s.classification_only)

    def next_request() -> Request | None:
        nonlocal request_idx, in_flight_prompts
        still_needed = s.num_instructions - len(machine)
        if stalled >= s.max_stalled_requests:
            return None
        # Enough prompts in flight to finish (at least one candidate each is expected): wait.
        if still_needed <= 0 or in_flight_prompts >= still_needed:
            return None if still_needed <= 0 else WAIT
        prompts = [make_prompt() for _ in range(per_request)]
        in_flight_prompts += len(prompts)
        request = Request(prompts, s.sampling, key=request_idx)
        request_idx += 1
        return request

    def reject(
        text: str | None,
        reason: str,
        request_key: int,
        match: tuple[int, float] | None = None,
    ) -> None:
        nonlocal next_candidate
        dropped[reason] += 1
        rejected.append(
            RejectedInstruction(
                instruction=text,
                reason=reason,
                request_idx=request_key,
                candidate_idx=next_candidate,
                most_similar=None if match is None else index.text(match[0]),
                rouge_l=None if match is None else match[1],
            )
        )
        next_candidate += 1

    with (
        JsonlAppender(out_path, warn=ctx.reporter.warn) as out,
        JsonlAppender(folder.rejected, warn=ctx.reporter.warn) as out_rejected,
        ctx.reporter.bar("instructions", s.num_instructions, completed=resumed) as bar,
    ):

        def flush_rejected() -> None:
            for record in rejected:
                out_rejected.write(record.to_dict())
            rejected.clear()

        def on_result(request: Request, completions: list[Completion]) -> None:
            nonlocal in_flight_prompts, stalled, next_candidate
            in_flight_prompts -= len(request.prompts)
            pool_before = len(machine)
            key = request.key
            for prompt, completion in zip(request.prompts, completions, strict=True):
                candidates = split_numbered_list(
                    completion.text, first_number=s.num_prompt_instructions + 1
                )
                if completion.finish_reason == "length":
                    # The paper drops the whole answer: its last item is cut, the rest suspect.
                    for raw in candidates or [None]:
                        text = None if raw is None else _normalise(raw, s)
                        reject(text, "cut_by_length", key)
                    continue
                if not candidates:
                    reject(None, "empty_answer", key)
                usage = {
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                }
                metadata = response_metadata(
                    ctx.model, prompt, completion.text, completion.finish_reason, usage
                )
                for raw in candidates:
                    candidate = _normalise(raw, s)
                    if len(machine) >= s.num_instructions:
                        reject(candidate, "surplus", key)
                        continue
                    reason = rejection_reason(candidate)
                    if reason is not None:
                        reject(candidate, reason, key)
                        continue
                    # The best match costs about what the plain threshold test costs.
                    match = index.best_above(candidate, s.similarity_threshold)
                    if match is not None:
                        reject(candidate, "too_similar", key, match)
                        continue
                    position = index.add(candidate)
                    accepted.append((candidate, position, metadata, key, next_candidate))
                    next_candidate += 1
                    machine.append(candidate)
            # Written before this handler returns, so before any other answer is looked at;
            # scored together, because one batched call costs far less than one per record.
            # Kept records first: a crash in between loses rejection records only, never a
            # kept instruction that a written rejection was compared with.
            for record in _records(index, accepted):
                out.write(record.to_dict())
            flush_rejected()
            bar.advance(len(accepted))
            accepted.clear()
            stalled = 0 if len(machine) > pool_before else stalled + 1
            bar.note(dropped)

        def on_failure(request: Request, failure: RequestFailed) -> None:
            nonlocal in_flight_prompts
            in_flight_prompts -= len(request.prompts)
            for _ in request.prompts:
                reject(None, f"request_failed_{failure.reason}", request.key)
            flush_rejected()

        engine = Engine(ctx.model, ctx.engine, usage=report.usage, jitter_seed=s.seed)
        report.engine = engine.stats
        ctx.run(engine.run(next_request, on_result, on_failure))

    report.counts = {
        "instructions_in_file": len(machine),
        "accepted_now": len(machine) - resumed,
        "resumed_from": resumed,
        "requested": s.num_instructions,
    }
    report.dropped = dict(dropped)
    report.complete = len(machine) >= s.num_instructions
    if stalled >= s.max_stalled_requests:
        report.counts["stalled_requests"] = stalled
        ctx.reporter.warn(
            f"instructions: the last {stalled} answers added nothing new to the pool; stopped"
            " (try another model, a higher temperature or more varied seed tasks)"
        )
    return report


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
