"""Step 3: generate instances, output-first for classification tasks, input-first otherwise.

The raw answer is stored as the original release did (`raw_instances`); the prepare step parses
it, so a better parser can be applied later to old runs without calling the model again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selfinstruct.engine import Request, RequestFailed
from selfinstruct.io import JsonlAppender
from selfinstruct.models.base import Completion, Sampling
from selfinstruct.prompts import instance_prompt
from selfinstruct.records import InstanceGeneration
from selfinstruct.runfolder import RunFolder
from selfinstruct.steps import StepContext, StepReport, response_metadata
from selfinstruct.steps.common import batched
from selfinstruct.validation import check_values

# The classification template is longer, so the paper left it fewer tokens.
CLASSIFICATION_MAX_TOKENS = 300
GENERATION_MAX_TOKENS = 350


def paper_sampling(max_tokens: int, max_instances: int) -> Sampling:
    return Sampling(
        max_tokens=max_tokens,
        temperature=0.0,
        top_p=0.0,
        frequency_penalty=0.0,
        presence_penalty=1.5,
        stop=(f"Example {max_instances + 1}", "Task:"),
    )


def batch_max_tokens(is_classification: list[bool]) -> int:
    """The token limit of a batch of tasks: the shorter one if any of them is classification."""
    return CLASSIFICATION_MAX_TOKENS if any(is_classification) else GENERATION_MAX_TOKENS


@dataclass
class InstanceSettings:
    max_instances_to_generate: int = 5
    num_instructions: int | None = None
    request_batch_size: int = 5
    generation_tasks_only: bool = False
    classification_tasks_only: bool = False
    input_file: str | None = None  # default: the run folder's instructions file
    output_file: str | None = None  # default: the run folder's instances file
    classification_file: str | None = None  # default: the folder's is_clf_or_not file

    def __post_init__(self) -> None:
        check_values(
            self,
            {
                "max_instances_to_generate": (1, None),
                "num_instructions": (1, None),
                "request_batch_size": (1, None),
            },
        )


def generate_instances(
    ctx: StepContext, run: str | Path | RunFolder, settings: InstanceSettings | None = None
) -> StepReport:
    s = settings or InstanceSettings()
    rf = RunFolder.of(run)
    warn = ctx.reporter.warn
    out_path = rf.path / s.output_file if s.output_file else rf.instances
    report = ctx.new_report("instances", outputs=[str(out_path)])
    records, labels, unlabelled = _tasks(rf, s, warn)
    done = rf.done_instructions(out_path, warn=warn)
    pending = sum(1 for r in records if r["instruction"] not in done)
    requests = _requests(records, labels, done, s, ctx.model.max_batch)
    counts: Counter[str] = Counter()

    with (
        JsonlAppender(out_path, warn=warn) as out,
        ctx.reporter.bar("instances", len(records), completed=len(records) - pending) as bar,
    ):

        def on_result(request: Request, completions: list[Completion]) -> None:
            for record, prompt, completion in zip(
                request.key, request.prompts, completions, strict=True
            ):
                out.write(_generation(ctx, record, prompt, completion).to_dict())
                counts["generated_now"] += 1
                if completion.finish_reason == "length":
                    counts["cut_by_length_now"] += 1
                bar.advance()

        def on_failure(request: Request, failure: RequestFailed) -> None:
            counts[f"request_failed_{failure.reason}"] += len(request.key)
            bar.note({k: v for k, v in counts.items() if k.startswith("request_failed")})

        engine = ctx.make_engine("instances", report.usage)
        report.engine = engine.stats
        ctx.run(engine.run(requests, on_result, on_failure))

    done_after = rf.done_instructions(out_path, warn=warn)
    report.counts = {
        "tasks": len(records),
        "in_file": len(done_after),
        "generated_now": counts["generated_now"],
        "cut_by_length_now": counts["cut_by_length_now"],
        "unlabelled_skipped": len(unlabelled),
    }
    report.dropped = {k: v for k, v in counts.items() if k.startswith("request_failed")}
    report.complete = not unlabelled and all(r["instruction"] in done_after for r in records)
    return report


def _tasks(
    rf: RunFolder, s: InstanceSettings, warn: Callable[[str], None]
) -> tuple[list[dict], dict[str, bool], list[dict]]:
    """The labelled instructions this invocation covers, their labels, and the unlabelled."""
    input_path = rf.path / s.input_file if s.input_file else None
    records = rf.read_instructions(path=input_path, limit=s.num_instructions, warn=warn)
    labels = rf.read_labels([rf.find_classification_file(s.classification_file)], warn=warn)
    unlabelled = [r for r in records if r["instruction"] not in labels]
    records = [r for r in records if r["instruction"] in labels]
    if s.classification_tasks_only:
        records = [r for r in records if labels[r["instruction"]]]
    if s.generation_tasks_only:
        records = [r for r in records if not labels[r["instruction"]]]
    return records, labels, unlabelled


def _requests(
    records: list[dict],
    labels: dict[str, bool],
    done: set[str],
    s: InstanceSettings,
    max_batch: int,
) -> list[Request]:
    """As the paper's script: batches of request_batch_size tasks in file order, kinds mixed,
    and a batch with any classification task gets the shorter limit.

    Batches are cut over all the tasks, done or not, so that a resumed run gives each task the
    limit a fresh run would; a batch wider than the model takes in one request goes as several.
    """
    per_request = max(1, min(s.request_batch_size, max_batch))
    requests = []
    for batch in batched(records, max(1, s.request_batch_size)):
        todo = [r for r in batch if r["instruction"] not in done]
        if not todo:
            continue
        max_tokens = batch_max_tokens([labels[r["instruction"]] for r in batch])
        sampling = paper_sampling(max_tokens, s.max_instances_to_generate)
        for chunk in batched(todo, per_request):
            prompts = [
                instance_prompt(r["instruction"], is_classification=labels[r["instruction"]])
                for r in chunk
            ]
            requests.append(Request(prompts, sampling, key=chunk))
    return requests


def _generation(
    ctx: StepContext, record: dict, prompt: str, completion: Completion
) -> InstanceGeneration:
    """The record of one task's answer, in the release's shape."""
    usage = {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
    }
    return InstanceGeneration(
        instruction=record["instruction"],
        raw_instances=completion.text,
        instance_metadata=response_metadata(
            ctx.model, prompt, completion.text, completion.finish_reason, usage
        ),
        instruction_metadata=record.get("metadata") or {},
        most_similar=record.get("most_similar") or {},
        avg_similarity_score=float(record.get("avg_similarity_score") or 0.0),
    )
