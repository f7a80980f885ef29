"""Step 1: bootstrap instructions from the seed tasks, as in the paper.

Each prompt lists 8 instructions (2 sampled from the machine-generated pool, fewer while it is
small, the rest from the seed tasks), shuffled and numbered, ending at "9." for the model to go
on. Every candidate in an answer passes the filters, then must have ROUGE-L F1 at most 0.7 to
every instruction already in the pool (seed and machine) at the moment it is decided; the kept
one joins the pool at once, so two kept instructions never exceed the threshold.

The same data at any concurrency. Requests are numbered in the order they are sent, and their
answers are decided in that order, whatever order they arrive in (`ordered.InOrder`: an early
answer waits for the ones before it). The prompts of request i are sampled with a random stream
of their own, derived from the seed and i, from the pool exactly as it stood once request
i - lag was decided. So with the same seed, settings and answers, the kept instructions and
their order do not depend on the concurrency, on how many endpoints or replicas answer, or on
kills and resumes; at most `lag` requests are undecided at any time (concurrency above the lag
waits), and `lag=1` is the original script's serial loop.

The contract with an engine: the step only talks to it through `Engine.run(next_request,
on_result, on_failure)`. `next_request` returns the next request, `WAIT` while `lag` requests are
undecided (or while those undecided are enough to finish), or None when the pool is full; it
never returns WAIT while no request is in flight: then it waits for the decisions in hand
itself. Any engine with that interface drives the step: one that sends a round of requests at
once and hands back all their answers (a batch API) is the same order with a large lag.

Every candidate that is not kept goes to the run folder's rejected file with its reason (the
filter's name, `too_similar` with the pool's closest instruction and its ROUGE-L F1, `surplus`,
`cut_by_length`, ...), one line per drop counted in the report; a request that fails for good
leaves one `request_failed_<reason>` line per prompt and no instruction. Kept and rejected records
share a run-wide `candidate_idx`, the order in which the candidates were decided, so that the
run's filtering can be replayed (`selfinstruct sweep`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from selfinstruct.engine import WAIT, Request, RequestFailed
from selfinstruct.errors import ConfigError, DataFileError
from selfinstruct.filters import rejection_reason
from selfinstruct.io import JsonlAppender, Warn, iter_jsonl_lines, parse_jsonl_line
from selfinstruct.language import get as get_language
from selfinstruct.models.base import Completion, Sampling
from selfinstruct.progress import Bar
from selfinstruct.prompts import bootstrap_prompt
from selfinstruct.records import MachineInstruction, RejectedInstruction, SeedTask
from selfinstruct.runfolder import RunFolder
from selfinstruct.similarity import Probe, ProbeBatch, RougeLIndex
from selfinstruct.steps import StepContext, StepReport, response_metadata
from selfinstruct.steps.ordered import AnswerLog, InOrder, Outcome
from selfinstruct.steps.parsing import capitalize_first, split_numbered_list
from selfinstruct.validation import check_values

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
    similarity_threshold: float | None = None  # None: the language's default (English 0.7)
    language: str = "en"  # ISO code: the similarity tokenizer and filters (selfinstruct.language)
    lowercase_rest: bool = False  # reproduce str.capitalize() of the original script
    seed: int = 42
    # Stop (incomplete, resumable) after this many answers in a row add nothing to the pool:
    # a model that only repeats itself would otherwise be asked forever.
    max_stalled_requests: int = 200
    # The lag W: the prompts of request i come from the pool as it stood once request i - W
    # was decided, and at most W requests are undecided at a time. 64 holds back none of our
    # defaults (concurrency 8; 64 in the benchmarks) and still lets a slow answer or a retry
    # wait while others go on; at the paper's scale the few hundred newest instructions it
    # hides from a prompt's two machine examples are a small share of the pool. The first W
    # requests show seeds only, as concurrency 64 did before. 1: the original's serial loop.
    lag: int = 64
    sampling: Sampling = field(default_factory=lambda: PAPER_SAMPLING)

    def __post_init__(self) -> None:
        check_values(
            self,
            {
                "num_instructions": (1, None),
                "num_prompt_instructions": (2, None),
                "num_machine_in_prompt": (0, None),
                "request_batch_size": (1, None),
                "similarity_threshold": (0, 1),
                "max_stalled_requests": (1, None),
            },
        )


def generate_instructions(
    ctx: StepContext,
    seeds: list[SeedTask],
    run: str | Path | RunFolder,
    settings: InstructionSettings | None = None,
) -> StepReport:
    s = settings or InstructionSettings()
    if s.lag < 1:
        raise ConfigError(f"`lag` must be at least 1 request, got {s.lag}")
    if s.similarity_threshold is None:
        s = dataclasses.replace(s, similarity_threshold=get_language(s.language).threshold)
    if s.classification_only:
        seeds = [t for t in seeds if t.is_classification]
    folder = RunFolder.of(run)
    report = ctx.new_report("instructions", outputs=[str(folder.instructions)])
    state = _Bootstrap(ctx, s, [t.instruction for t in seeds], folder)
    with (
        JsonlAppender(folder.instructions, warn=ctx.reporter.warn) as kept,
        JsonlAppender(folder.rejected, warn=ctx.reporter.warn) as rejected,
        ctx.reporter.bar("instructions", s.num_instructions, completed=state.resumed) as bar,
    ):
        state.start(kept, rejected, bar)
        engine = ctx.make_engine("instructions", report.usage, jitter_seed=s.seed)
        report.engine = engine.stats
        try:
            ctx.run(engine.run(state.next_request, state.on_result, state.on_failure))
        except BaseException:
            # Stop after the decision being made; what made the run stop is what is raised.
            with contextlib.suppress(Exception):
                state.finish(drain=False)
            raise
        state.finish(drain=True)
    state.fill(report)
    return report


# Requests decided but not yet written, at most (see `_Bootstrap.decide`).
WRITE_BACKLOG = 16


class _Bootstrap:
    """Step 1's state over one invocation: the pool, its index, the prompts, and every decision
    on a candidate (kept, or rejected with its reason), in the order it was made.

    Three threads share it. The event loop's (`next_request`, `on_result`, `on_failure`)
    builds prompts and saves answers as they arrive; the decision worker's (`decide` and below)
    owns the index and the counters; the writer's (`write`) gives each kept record its
    `most_similar` and `avg_similarity_score` (reading only the part of the index that was
    there when the record was kept) and owns the output files. So the figures, which cost as
    much as the decision in a large pool, run beside the decisions, and a request is marked
    decided in the answer log only once its records are on disk. The decision worker only
    ever appends to `machine` and `kept_requests`, and the event loop only reads the part of
    them that is decided.
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
        self.kept_requests: list[int] = []  # the request of each machine instruction, in order
        self.request_idx = 0  # the first request this invocation decides
        self.next_candidate = 0  # the run-wide candidate_idx of the next decision
        self.answers = AnswerLog(folder.instruction_answers, warn=ctx.reporter.warn)
        self._resume(folder)
        self.resumed = len(self.machine)
        self._check_seeds()
        # All cores for the writer's big LCS batches (exact figures, under 50K): the decision
        # worker is idle then, its probes being cheap in a small pool.
        self.index = RougeLIndex(
            seed_instructions + self.machine,
            tokenizer=get_language(s.language).tokenizer,
            workers=-1,
        )
        self.dropped: Counter[str] = Counter()
        self.stalled = 0
        self.accepted: list[tuple[str, Probe, dict, int, int]] = []
        self.rejected: list[RejectedInstruction] = []  # decided, not yet written
        self.per_request = max(1, min(s.request_batch_size, ctx.model.max_batch))
        self.next_send = self.request_idx
        self.in_flight = 0
        self.reused = 0  # answers saved by an earlier run, decided now without asking again

    def _resume(self, folder: RunFolder) -> None:
        warn = self.ctx.reporter.warn
        # Only the fields needed, streamed: a kept record carries its prompt and answer, and a
        # million of them as dicts would take gigabytes (and most of a minute to parse).
        kept = list(_read_decided(folder.instructions, warn, kept=True))
        rejected = list(_read_decided(folder.rejected, warn, kept=False))
        cut = self.answers.unfinished({r.request_idx for r in kept + rejected})
        if cut:
            # A kill stopped this decision half-way. It is made again from the saved answer,
            # to the same result; the records already on disk stay as they are, the rest follow.
            warn(f"instructions: finishing the decision on request {min(cut)} (saved answer)")
        self.written = {r.candidate_idx for r in kept + rejected if r.request_idx in cut}
        for record in kept:
            if record.request_idx in cut:
                continue
            self.machine.append(record.instruction)
            self.kept_requests.append(record.request_idx)
            self._continue_after(record)
        # A rerun goes on numbering after the rejected candidates (and their requests) too.
        for record in rejected:
            if record.request_idx not in cut:
                self._continue_after(record)
        self.kept_requests.sort()  # runs made before the lag decided out of order

    def _continue_after(self, record: _Decided) -> None:
        self.request_idx = max(self.request_idx, record.request_idx + 1)
        self.next_candidate = max(self.next_candidate, record.candidate_idx + 1)

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

    def start(self, kept: JsonlAppender, rejected: JsonlAppender, bar: Bar) -> None:
        """Where decisions go once the files are open; the worker starts deciding."""
        self.out, self.out_rejected, self.bar = kept, rejected, bar
        self.answers.open(self.request_idx)
        self.writer = InOrder(self.write, start=self.request_idx, name="selfinstruct-write")
        self.order = InOrder(self.decide, start=self.request_idx)

    def finish(self, *, drain: bool) -> None:
        """Stop deciding (after what was handed over, if `drain`); what is decided is written
        either way, so that an interrupted run keeps every decision it made."""
        try:
            self.order.close(drain=drain)
        finally:
            try:
                self.writer.close(drain=True)
            finally:
                self.answers.close()

    # --- requests (the event loop) ----------------------------------------------------------

    def still_needed(self) -> int:
        return self.s.num_instructions - len(self.machine)

    def make_prompts(self, request: int) -> list[str]:
        """The prompts of one request: from the pool as it stood once request - lag was
        decided, with a random stream of the request's own."""
        s = self.s
        rng = random.Random(f"{s.seed}:prompts:{request}")
        pool = bisect_right(self.kept_requests, request - s.lag)
        prompts = []
        for _ in range(self.per_request):
            picked = rng.sample(range(pool), min(s.num_machine_in_prompt, pool))
            chosen = [self.machine[i] for i in picked]
            chosen += rng.sample(self.seed_instructions, s.num_prompt_instructions - len(chosen))
            rng.shuffle(chosen)
            prompts.append(bootstrap_prompt(chosen, classification=s.classification_only))
        return prompts

    def next_request(self) -> Request | None:
        order = self.order
        while True:
            order.check()
            decided = order.decided
            if order.stopped or self.still_needed() <= 0:
                return None
            undecided = self.next_send - decided
            # Enough prompts undecided to finish (one candidate each is expected), or the lag
            # reached: an answer must be decided first.
            if undecided >= self.s.lag or undecided * self.per_request >= self.still_needed():
                if self.in_flight:
                    return WAIT  # its answer will ask again
                order.wait(decided)  # only answers in hand hold the next request back
                continue
            request = self.next_send
            prompts = self.make_prompts(request)
            self.next_send += 1
            saved = self.answers.take(request, prompts)
            if saved is not None:
                self.reused += 1
                order.put(request, (prompts, saved))
                continue
            self.in_flight += 1
            return Request(prompts, self.s.sampling, key=request)

    def on_result(self, request: Request, completions: list[Completion]) -> None:
        self._arrived(request, completions)

    def on_failure(self, request: Request, failure: RequestFailed) -> None:
        self._arrived(request, failure.reason)

    def _arrived(self, request: Request, outcome: Outcome) -> None:
        self.in_flight -= 1
        self.answers.arrived(request.key, request.prompts, outcome)
        self.order.put(request.key, (request.prompts, outcome))

    # --- decisions (the worker thread) ------------------------------------------------------

    def decide(self, request: int, item: tuple[list[str], Outcome]) -> bool:
        """Decide every candidate of one request and write them all; False once the pool is
        full or the model keeps repeating itself."""
        prompts, outcome = item
        if isinstance(outcome, str):  # failed for good: its slot stays empty, counted
            for _ in prompts:
                self._reject(None, f"request_failed_{outcome}", request)
        else:
            pool_before = len(self.machine)
            items = [
                item
                for prompt, completion in zip(prompts, outcome, strict=True)
                for item in self._candidates(prompt, completion)
            ]
            self._decide_all(items, request)
            self.stalled = 0 if len(self.machine) > pool_before else self.stalled + 1
        self.writer.put(request, (self.accepted, self.rejected))
        self.accepted, self.rejected = [], []
        self.bar.note(self.dropped)
        # A bounded backlog: a kill loses at most this many requests' decisions (made again
        # from the saved answers on resume), and memory stays flat if the writer is slower.
        # None at a lag of 1, the original serial loop: there a request's records are on disk
        # before the next prompt is built.
        self.writer.throttle(0 if self.s.lag == 1 else WRITE_BACKLOG)
        return self.still_needed() > 0 and self.stalled < self.s.max_stalled_requests

    # --- records (the writer thread) --------------------------------------------------------

    def write(self, request: int, item: tuple[list[tuple], list[RejectedInstruction]]) -> bool:
        """Write one decided request's records, kept ones with their figures, and mark it
        decided in the answer log."""
        accepted, rejected = item
        # Scored together, because one batched call costs far less than one per record. Kept
        # records first: a crash in between loses rejection records only, never a kept
        # instruction that a written rejection was compared with; and the request is marked
        # decided last, so that a decision cut short is made again on resume.
        for record in _records(self.index, accepted):
            if record.candidate_idx not in self.written:
                self.out.write(record.to_dict())
        for record in rejected:
            if record.candidate_idx not in self.written:
                self.out_rejected.write(record.to_dict())
        self.answers.decided(request)
        self.bar.advance(len(accepted))
        return True

    def _candidates(self, prompt: str, completion: Completion) -> list[_Candidate]:
        """The answer's candidates, in order, with the reason to reject each that does not
        depend on the pool."""
        s = self.s
        raws = split_numbered_list(completion.text, first_number=s.num_prompt_instructions + 1)
        if completion.finish_reason == "length":
            # The paper drops the whole answer: its last item is cut, the rest suspect.
            return [
                _Candidate(None if raw is None else _normalise(raw, s), "cut_by_length", None)
                for raw in raws or [None]
            ]
        out = [] if raws else [_Candidate(None, "empty_answer", None)]
        usage = {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
        }
        metadata = response_metadata(
            self.ctx.model, prompt, completion.text, completion.finish_reason, usage
        )
        for raw in raws:
            text = _normalise(raw, s)
            out.append(_Candidate(text, rejection_reason(text, s.language), metadata))
        return out

    def _decide_all(self, items: list[_Candidate], key: int) -> None:
        """Keep each candidate or reject it with the first reason that applies, in order; the
        similarity search for them all in one batch (the same decisions as one by one)."""
        s = self.s
        to_probe = [c.text for c in items if c.metadata is not None and c.reason is None]
        batch = self.index.probe_many(to_probe, s.similarity_threshold)
        slot = 0
        for c in items:
            if c.metadata is None:  # the answer itself failed
                self._reject(c.text, c.reason, key)
                continue
            if c.reason is None:
                slot += 1
            if len(self.machine) >= s.num_instructions:
                self._reject(c.text, "surplus", key)
            elif c.reason is not None:
                self._reject(c.text, c.reason, key)
            else:
                self._decide(batch, slot - 1, c.metadata, key)

    def _decide(self, batch: ProbeBatch, slot: int, metadata: dict, key: int) -> None:
        """Keep candidate ``slot`` of the batch, or reject it as too similar."""
        probe = batch.probe(slot)
        candidate = batch.texts[slot]
        if probe.match is not None:
            return self._reject(candidate, "too_similar", key, probe.match)
        batch.keep(slot)
        self.accepted.append((candidate, probe, metadata, key, self.next_candidate))
        self.next_candidate += 1
        self.machine.append(candidate)
        self.kept_requests.append(key)
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

    # --- the report -------------------------------------------------------------------------

    def fill(self, report: StepReport) -> None:
        s, machine = self.s, self.machine
        report.counts = {
            "instructions_in_file": len(machine),
            "accepted_now": len(machine) - self.resumed,
            "resumed_from": self.resumed,
            "requested": s.num_instructions,
        }
        if self.reused:
            report.counts["saved_answers_decided"] = self.reused
        if self.order.left_undecided:
            # Answers that came back after the pool was full: saved for a longer run.
            report.counts["answers_not_needed"] = self.order.left_undecided
        report.dropped = dict(self.dropped)
        report.complete = len(machine) >= s.num_instructions
        if self.stalled >= s.max_stalled_requests:
            report.counts["stalled_requests"] = self.stalled
            self.ctx.reporter.warn(
                f"instructions: the last {self.stalled} answers added nothing new to the pool;"
                " stopped (try another model, a higher temperature or more varied seed tasks)"
            )


@dataclass(slots=True)
class _Candidate:
    """One item of an answer: its text, a reason to reject it known before the pool is asked
    (the filters', or the answer's own), and the answer's metadata (None when the answer
    failed as a whole)."""

    text: str | None
    reason: str | None
    metadata: dict | None


@dataclass(slots=True)
class _Decided:
    """What a resumed run needs of a record on disk."""

    instruction: str | None
    request_idx: int
    candidate_idx: int

    @classmethod
    def of(cls, record: dict, number: int = 0, path: Path | None = None) -> _Decided:
        """The record's fields; a kept one (`path` given) must hold its instruction."""
        text = record.get("instruction")
        if path is not None and not isinstance(text, str):
            raise DataFileError(f"{path}:{number}: missing field 'instruction'")
        return cls(text, _index(record, "request_idx"), _index(record, "candidate_idx"))


# Step 1 writes every record with "instruction" first and "request_idx", then
# "candidate_idx", last (``to_dict``), in json.dumps's default spacing.
_HEAD = b'{"instruction": '
_TAIL = re.compile(r', "request_idx": (-?\d+)(?:, "candidate_idx": (-?\d+))?\}$')


def _read_decided(path: Path, warn: Warn, *, kept: bool) -> Iterator[_Decided]:
    """What a resumed run needs of each record of a step-1 file. A line in the shape step 1
    writes gives its fields from its start and end alone, the long middle (prompt, answer,
    figures) not parsed: a tenth of the time. Any other line is parsed whole."""
    for number, line in iter_jsonl_lines(path, repair=True, warn=warn):
        quick = _quick_decided(line, kept)
        if quick is None:
            record = parse_jsonl_line(path, number, line)
            quick = _Decided.of(record, number, path if kept else None)
        yield quick


def _quick_decided(line: bytes, kept: bool) -> _Decided | None:
    if not line.startswith(_HEAD):
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    tail = _TAIL.search(text, len(text) - 96)
    if tail is None:
        return None
    instruction = None
    if kept:  # the instruction is the first value: a JSON string
        if text[len(_HEAD)] != '"':
            return None
        try:
            instruction, end = json.decoder.scanstring(text, len(_HEAD) + 1)
        except ValueError:
            return None
        if not text.startswith(', "', end):  # the string must end where the next key starts
            return None
    candidate = tail.group(2)
    return _Decided(instruction, int(tail.group(1)), -1 if candidate is None else int(candidate))


def _index(record: dict, key: str) -> int:
    """An integer index field of a stored record, -1 when absent (e.g. the release's files)."""
    value = record.get(key)
    return int(value) if isinstance(value, int | float) else -1


def _normalise(raw: str, s: InstructionSettings) -> str:
    """A parsed item as the filters see it."""
    return capitalize_first(raw, lowercase_rest=s.lowercase_rest)


def _records(
    index: RougeLIndex, accepted: list[tuple[str, Probe, dict, int, int]]
) -> list[MachineInstruction]:
    """The records of instructions added to the index, each scored against the pool as it
    was when that instruction was accepted (every position before its own)."""
    found = index.figures([a[1] for a in accepted], k=10)
    return [
        MachineInstruction(
            instruction=candidate,
            most_similar={index.text(p): f for p, f in top},
            avg_similarity_score=mean,
            metadata=metadata,
            request_idx=request_idx,
            candidate_idx=candidate_idx,
        )
        for (candidate, _, metadata, request_idx, candidate_idx), (top, mean) in zip(
            accepted, found, strict=True
        )
    ]
