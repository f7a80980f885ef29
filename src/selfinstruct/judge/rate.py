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
    and its reason, counted, and asked again by the next run. Request failures are counted by
    reason. Returns the step's report: counts per rating (in the file, for this model) and the
    examples left unrated by reason.
    """
    s = settings or JudgeSettings()
    run = RunFolder.of(run)
    warn = ctx.reporter.warn
    examples = run.read_examples(unique=True, warn=warn)
    if s.num_examples is not None:
        examples = examples[: s.num_examples]
    who = model_id(ctx.model)
    report = StepReport("judge", outputs=[str(run.judgments_file)])
    # Reading with repair cuts a torn last line before the appender opens the file.
    list(iter_jsonl(run.judgments_file, repair=True, warn=warn))
    done = run.judgments(model=who, rated_only=True)
    pending = [e for e in examples if e.key not in done]
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
    report.complete = len(in_file) == len(examples)
    return report
