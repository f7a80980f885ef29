"""Rating a run's examples through the engine, and reading the ratings back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfinstruct.engine import Request, RequestFailed
from selfinstruct.io import JsonlAppender, iter_jsonl
from selfinstruct.judge.verdict import (
    ANSWER_PRIMER,
    JUDGE_MAX_TOKENS,
    QUESTIONS,
    RATING_ORDER,
    judge_prompt,
    judge_sampling,
    normalize_rating,
    parse_verdict,
)
from selfinstruct.models.base import Completion, Model
from selfinstruct.records import Example, Rating
from selfinstruct.runfolder import RunFolder
from selfinstruct.steps import StepContext, StepReport
from selfinstruct.steps.common import batched
from selfinstruct.validation import check_values

Warn = Callable[[str], None]


def model_id(model: Model) -> str:
    """How a judgment names the judge: backend:name?api=... (and the LoRA adapter, if any), so
    that the same weights asked another way, or fine-tuned, count as another judge."""
    info = model.info
    name = f"{info.backend}:{info.name}?api={info.api}"
    if info.details.get("lora"):
        name += f"&lora={info.details['lora']}"
    return name


# --- judging examples ---------------------------------------------------------------------


@dataclass
class JudgeSettings:
    """How examples are put to the judge. Sampling is deterministic (temperature 0)."""

    num_examples: int | None = None  # only the first N examples of the file
    request_batch_size: int = 5  # prompts per request where the API takes a list
    max_field_chars: int = 3000  # instruction, input and output are each cut to this
    max_tokens: int = JUDGE_MAX_TOKENS
    # An example whose answers could not be read this many times is not asked again: the judge
    # will not rate it (a refusal, a format it cannot follow); it counts as unrated, by reason.
    max_unreadable: int = 3

    def __post_init__(self) -> None:
        check_values(
            self,
            {
                "num_examples": (1, None),
                "request_batch_size": (1, None),
                "max_field_chars": (1, None),
                "max_tokens": (1, None),
                "max_unreadable": (1, None),
            },
        )


@dataclass
class _Item:
    example: Example
    out: JsonlAppender
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Tally:
    ratings: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    records: dict[str, Rating] = field(default_factory=dict)


def _judge_items(
    ctx: StepContext, items: list[_Item], settings: JudgeSettings, report: StepReport, bar: Any
) -> _Tally:
    """Put each item to the model through the engine; write one judgment line per answer."""
    tally = _Tally()
    if not items:
        return tally
    primed = ctx.model.info.api != "chat"
    sampling = judge_sampling(primed, settings.max_tokens)
    who = model_id(ctx.model)
    per_request = max(1, min(settings.request_batch_size, ctx.model.max_batch))

    def on_result(request: Request, completions: list[Completion]) -> None:
        for item, completion in zip(request.key, completions, strict=True):
            raw = completion.text
            verdict = parse_verdict(f"{ANSWER_PRIMER}{raw}" if primed else raw)
            problem = verdict.problem
            if verdict.rating is None and completion.finish_reason == "length":
                problem = "cut_by_length"
            e = item.example
            record = {
                "key": e.key,
                "instruction": e.instruction,
                "input": e.input,
                "output": e.output,
                "rating": verdict.rating,
                **verdict.questions(),
                "raw": raw,
                "model": who,
                "unparsed": None if verdict.rating else problem,
                **item.extra,
            }
            item.out.write(record)
            if verdict.rating is None:
                tally.dropped[f"unparsed_{problem}"] += 1
            else:
                tally.ratings[verdict.rating] += 1
                tally.records[e.key] = Rating.from_dict(record)
            bar.advance()
        bar.note({**tally.ratings, "unparsed": sum(tally.dropped.values())})

    def on_failure(request: Request, failure: RequestFailed) -> None:
        tally.dropped[f"request_failed_{failure.reason}"] += len(request.key)

    requests = (
        Request(
            [
                judge_prompt(
                    *i.example.texts, primed=primed, max_chars=settings.max_field_chars
                )
                for i in chunk
            ],
            sampling,
            key=chunk,
        )
        for chunk in batched(items, per_request)
    )  # fmt: skip
    engine = ctx.make_engine("judge", report.usage)
    report.engine = engine.stats
    ctx.run(engine.run(requests, on_result, on_failure))
    return tally


def judges_of(run: RunFolder | str | Path, *, warn: Warn | None = None) -> list[str]:
    """The judges (as `model_id` names them) with at least one rating in the run, in the
    order they first rated; lines that name no judge (written by hand) count as one, "None"."""
    run = RunFolder.of(run)
    found: dict[str, None] = {}
    for record in iter_jsonl(run.judgments_file, warn=warn):
        if normalize_rating(record.get("rating")):
            found.setdefault(str(record.get("model")), None)  # "None": a line naming no judge
    return list(found)


def find_judge(judges: list[str], name: str) -> str | None:
    """The one judge `name` stands for: its full id, the id without its ?options, or the
    model's name alone ("gpt-4o-mini" for "openai:gpt-4o-mini?api=chat"); None if no judge or
    several match."""

    def forms(judge: str) -> set[str]:
        bare = judge.split("?", 1)[0]
        return {judge, bare, bare.split(":", 1)[-1]}

    matches = [j for j in judges if name in forms(j)]
    return matches[0] if len(matches) == 1 else None


def load_ratings(
    run: RunFolder | str | Path, *, model: str | None = None, warn: Warn | None = None
) -> dict[str, str]:
    """key -> rating ("A".."D") from the run's judgments; the last rated line of a key wins.

    Lines the judge could not read (rating null) are skipped. `model` keeps only one judge's
    ratings when several judged the same run.
    """
    found = RunFolder.of(run).judgments(model=model, rated_only=True, warn=warn or _ignore)
    return {key: normalize_rating(r.rating) for key, r in found.items()}  # type: ignore[misc]


def _ignore(_: str) -> None:
    pass


def judge_run(
    ctx: StepContext, run: RunFolder | str | Path, settings: JudgeSettings | None = None
) -> StepReport:
    """Rate every example of step 4's file that this model has not rated yet.

    Appends to `run.judgments_file` one line per answer as it arrives (`key`, `instruction`,
    `input`, `output`, `rating`, `valid_instruction`, `input_fits`, `output_correct`, `raw`,
    `model`, `unparsed`); an answer without a readable rating is written with `rating: null`
    and its reason, counted, and asked again by the next run, up to `max_unreadable` answers an
    example; then it stays unrated, counted by reason. Request failures are counted by reason.
    Returns the step's report: counts per rating (in the file, for this model) and the examples
    left unrated by reason.
    """
    s = settings or JudgeSettings()
    run = RunFolder.of(run)
    warn = ctx.reporter.warn
    examples = run.read_examples(unique=True, warn=warn)
    if s.num_examples is not None:
        examples = examples[: s.num_examples]
    who = model_id(ctx.model)
    report = ctx.new_report("judge", outputs=[str(run.judgments_file)])
    # Reading with repair cuts a torn last line before the appender opens the file.
    list(iter_jsonl(run.judgments_file, repair=True, warn=warn))
    done = run.judgments(model=who, rated_only=True)
    unreadable = _unreadable(run, who)
    given_up = {k: r for k, r in unreadable.items() if len(r) >= s.max_unreadable}
    pending = [e for e in examples if e.key not in done and e.key not in given_up]
    with (
        JsonlAppender(run.judgments_file, warn=warn) as out,
        ctx.reporter.bar("judge", len(examples), completed=len(examples) - len(pending)) as bar,
    ):
        items = [_Item(e, out) for e in pending]
        tally = _judge_items(ctx, items, s, report, bar)

    rated = run.judgments(model=who, rated_only=True)
    in_file = [rated[e.key] for e in examples if e.key in rated]
    per_rating = Counter(r.rating for r in in_file)
    report.counts = {
        "examples": len(examples),
        "rated_in_file": len(in_file),
        "rated_now": sum(tally.ratings.values()),
        **{f"rated_{r}": per_rating[r] for r in RATING_ORDER},
        **{f"{q}_yes": sum(1 for r in in_file if r.answers[q] is True) for q in QUESTIONS},
        "unrated": len(examples) - len(in_file),
    }
    report.dropped = dict(tally.dropped)
    # Given up on: unrated for good, by the reason of their last unreadable answer.
    unreadable = _unreadable(run, who)
    gave_up = Counter(
        unreadable[k][-1]
        for k in (e.key for e in examples)
        if k not in rated and len(unreadable.get(k, ())) >= s.max_unreadable
    )
    for reason, n in gave_up.items():
        report.counts[f"unrated_given_up_{reason}"] = n
    if gave_up:
        ctx.reporter.info(
            f"judge: {sum(gave_up.values())} examples left unrated after {s.max_unreadable}"
            " unreadable answers each; they are not asked again (counted above by reason)"
        )
    report.complete = len(in_file) + sum(gave_up.values()) == len(examples)
    return report


def _unreadable(run: RunFolder, who: str) -> dict[str, list[str]]:
    """key -> the reasons of this judge's unreadable answers to it, in file order."""
    found: dict[str, list[str]] = {}
    for record in iter_jsonl(run.judgments_file):
        if record.get("model") == who and record.get("rating") is None:
            found.setdefault(str(record.get("key")), []).append(str(record.get("unparsed")))
    return found
