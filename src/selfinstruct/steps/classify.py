"""Step 2: ask the model, few-shot, whether each instruction is a classification task."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from selfinstruct.engine import Request, RequestFailed
from selfinstruct.io import JsonlAppender
from selfinstruct.models.base import Completion, Sampling
from selfinstruct.prompts import classification_prompt
from selfinstruct.records import ClassificationLabel
from selfinstruct.runfolder import RunFolder
from selfinstruct.steps import StepContext, StepReport
from selfinstruct.steps.common import batched
from selfinstruct.steps.parsing import answer_kind, classification_answer
from selfinstruct.validation import check_values

PAPER_SAMPLING = Sampling(
    max_tokens=3,
    temperature=0.0,
    top_p=0.0,
    frequency_penalty=0.0,
    presence_penalty=0.0,
    stop=("\n", "Task"),
)


@dataclass
class ClassifySettings:
    num_instructions: int | None = None  # only the first N instructions
    request_batch_size: int = 5
    input_file: str | None = None  # default: the run folder's instructions file
    output_file: str | None = None  # default: is_clf_or_not_{engine}_template_1.jsonl
    # Off: store the answer text as the paper's script did (only an exact yes counts later).
    # On: an answer starting with a clear yes/no word ("Yes.", "no, ...") is stored as Yes/No.
    lenient_labels: bool = False
    sampling: Sampling = field(default_factory=lambda: PAPER_SAMPLING)

    def __post_init__(self) -> None:
        check_values(self, {"num_instructions": (1, None), "request_batch_size": (1, None)})


def identify_classification(
    ctx: StepContext, run: str | Path | RunFolder, settings: ClassifySettings | None = None
) -> StepReport:
    s = settings or ClassifySettings()
    rf = RunFolder.of(run)
    warn = ctx.reporter.warn
    out_path = (
        rf.path / s.output_file
        if s.output_file
        else rf.classification_file_for(ctx.model.info.name)
    )
    report = ctx.new_report("classify", outputs=[str(out_path)])
    input_path = rf.path / s.input_file if s.input_file else None
    records = rf.read_instructions(path=input_path, limit=s.num_instructions, warn=warn)
    done = rf.done_instructions(out_path, warn=warn)
    pending = [r["instruction"] for r in records if r["instruction"] not in done]
    per_request = max(1, min(s.request_batch_size, ctx.model.max_batch))
    answers: Counter[str] = Counter()

    with (
        JsonlAppender(out_path, warn=ctx.reporter.warn) as out,
        ctx.reporter.bar("classify", len(records), completed=len(records) - len(pending)) as bar,
    ):

        def on_result(request: Request, completions: list[Completion]) -> None:
            for instruction, completion in zip(request.key, completions, strict=True):
                label_text = classification_answer(completion.text, lenient=s.lenient_labels)
                answers[answer_kind(label_text)] += 1
                out.write(ClassificationLabel(instruction, label_text).to_dict())
                bar.advance()
            bar.note(answers)

        def on_failure(request: Request, failure: RequestFailed) -> None:
            answers[f"request_failed_{failure.reason}"] += len(request.key)

        requests = (
            Request([classification_prompt(i) for i in chunk], s.sampling, key=chunk)
            for chunk in batched(pending, per_request)
        )
        engine = ctx.make_engine("classify", report.usage)
        report.engine = engine.stats
        ctx.run(engine.run(requests, on_result, on_failure))

    labelled = len(rf.done_instructions(out_path, warn=warn))
    report.counts = {
        "instructions": len(records),
        "labelled_in_file": labelled,
        "labelled_now": answers["yes"] + answers["no"] + answers["neither"],
        # As the paper's scripts read them: exact yes, exact no, anything else (not classification)
        "yes": answers["yes"],
        "no": answers["no"],
        "neither": answers["neither"],
    }
    report.dropped = {k: v for k, v in answers.items() if k.startswith("request_failed")}
    report.complete = labelled >= len(records)
    return report
