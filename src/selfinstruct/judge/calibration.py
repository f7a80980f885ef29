"""Calibrating the judge before anyone filters with it: against the review page's ratings, a
file of rated examples, and the paper's human evaluation of eight models (Figure 6)."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError, DataFileError
from selfinstruct.io import JsonlAppender, iter_jsonl
from selfinstruct.judge.agreement import Agreement, agreement, spearman
from selfinstruct.judge.rate import JudgeSettings, Warn, _ignore, _Item, _judge_items, model_id
from selfinstruct.judge.verdict import QUESTIONS, RATING_ORDER, RATING_SCORE, normalize_rating
from selfinstruct.records import Example, Rating
from selfinstruct.runfolder import RunFolder
from selfinstruct.steps import StepContext, StepReport

# --- the paper's human evaluation ---------------------------------------------------------

#: Where the figure's numbers come from, printed beside every comparison with them.
PAPER_SOURCE = (
    "Wang et al. 2023, Self-Instruct, arXiv:2212.10560v2, Figure 6: 252 user-oriented"
    " instructions, each response rated A-D by the instruction's author (kappa 0.57 between"
    " raters); counts read from the figure's text layer"
)

#: Figure 6's counts per model (A, B, C, D; each row sums to 252), keyed by the file name of the
#: model's predictions in the release (human_eval/predictions/<name>_predictions.jsonl). The
#: figure's bars are, left to right: vanilla GPT3, + T0 training, + SuperNI training, + SuperNI
#: and Self-Instruct, GPT3 Self-Instruct, InstructGPT 001, 002, 003; the two Self-Instruct bars
#: are told apart by the text ("GPT3 Self-Inst outperforms all the other GPT3 variants trained
#: on publicly available instruction datasets"; "if we count ... RATING-B as valid, GPT3
#: Self-Inst is only 5% behind InstructGPT001": 161/252 vs 173/252). A few counts are printed
#: twice in the PDF, one apart (187/186, 118/117, 113/112, 49/48, 129/128, 169/168, 40/39):
#: the ones kept make each bar sum to 252. The order of the eight models does not depend on it.
PAPER_FIGURE6: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "davinci": ("vanilla GPT3", (0, 1, 64, 187)),
    "davinci-t0-ft": ("GPT3 + T0 training", (44, 31, 59, 118)),
    "davinci-superni-ft": ("GPT3 + SuperNI training", (74, 30, 80, 68)),
    "davinci-self-instruct-and-superni-ft": ("GPT3 + SuperNI + Self-Instruct", (83, 54, 84, 31)),
    "davinci-self-instruct": ("GPT3 Self-Instruct", (113, 48, 66, 25)),
    "text-davinci-001": ("InstructGPT 001", (129, 44, 61, 18)),
    "text-davinci-002": ("InstructGPT 002", (169, 39, 34, 10)),
    "text-davinci-003": ("InstructGPT 003", (192, 30, 28, 2)),
}
PREDICTIONS_SUFFIX = "_predictions.jsonl"


def paper_mean(counts: tuple[int, int, int, int]) -> float:
    return sum(RATING_SCORE[r] * c for r, c in zip(RATING_ORDER, counts, strict=True)) / sum(counts)


def default_predictions_dir() -> Path:
    """The release's predictions beside the project: <project>/../shared/data/self-instruct/."""
    project = Path(__file__).resolve().parents[2]
    return project.parent / "shared" / "data" / "self-instruct" / "human_eval_predictions"


# --- calibration --------------------------------------------------------------------------


@dataclass
class CalibrationSettings:
    use_reviews: bool = True
    ratings_file: Path | None = None
    predictions_dir: Path | None = None  # None: default_predictions_dir(), when it exists
    use_predictions: bool = True
    sample_per_model: int = 10  # tasks of the 252, the same ones for every model
    seed: int = 42
    judge: JudgeSettings = field(default_factory=JudgeSettings)


@dataclass
class _Labelled:
    """An example and what a person said of it."""

    example: Example
    human: dict[str, Any]


@dataclass
class CalibrationPlan:
    """What there is to calibrate against, read before any model is opened."""

    reviews: list[_Labelled] = field(default_factory=list)
    ratings: list[_Labelled] = field(default_factory=list)
    ratings_file: Path | None = None
    predictions: dict[str, list[Example]] = field(default_factory=dict)
    predictions_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.reviews or self.ratings or self.predictions)


def read_rated_file(path: Path) -> list[_Labelled]:
    """A JSONL of examples people rated: instruction, input, output, rating (A-D), and
    optionally valid_instruction, input_fits, output_correct."""
    if not path.exists():
        raise ConfigError(f"`ratings_file` {path}: no such file")
    out = []
    for number, record in enumerate(iter_jsonl(path), start=1):
        example = Example.from_dict(record, f"{path}:{number}")
        rating = normalize_rating(record.get("rating"))
        if rating is None:
            raise DataFileError(
                f"{path}:{number}: 'rating' must be A, B, C or D, got {record.get('rating')!r}"
            )
        human = {"rating": rating, **{q: record.get(q) for q in QUESTIONS}}
        out.append(_Labelled(example, human))
    if not out:
        raise ConfigError(f"`ratings_file` {path}: no rated examples in it")
    return out


def read_predictions(directory: Path, sample: int, seed: int) -> dict[str, list[Example]]:
    """A seeded sample of the same `sample` tasks from each released model's predictions."""
    per_model: dict[str, dict[str, Example]] = {}
    for name in PAPER_FIGURE6:
        path = directory / f"{name}{PREDICTIONS_SUFFIX}"
        if not path.exists():
            continue
        by_task: dict[str, Example] = {}
        for number, record in enumerate(iter_jsonl(path), start=1):
            instruction, inp = record.get("instruction"), record.get("input") or ""
            response = record.get("response")
            if not (isinstance(instruction, str) and isinstance(response, str)):
                raise DataFileError(f"{path}:{number}: expected 'instruction' and 'response'")
            task = f"{instruction.strip()}\x1f{str(inp).strip()}"
            example = Example(instruction.strip(), str(inp).strip(), response.strip())
            by_task.setdefault(task, example)
        per_model[name] = by_task
    if not per_model:
        return {}
    common = sorted(set.intersection(*(set(t) for t in per_model.values())))
    chosen = random.Random(seed).sample(common, min(sample, len(common)))
    return {name: [tasks[t] for t in chosen] for name, tasks in per_model.items()}


def plan_calibration(
    run: RunFolder, settings: CalibrationSettings, warn: Warn | None = None
) -> CalibrationPlan:
    """Gather everything to compare the judge with; ConfigError when there is nothing."""
    plan = CalibrationPlan()
    if settings.use_reviews and run.reviews_file.exists():
        reviews = run.reviews(warn=warn or _ignore)
        examples: dict[str, Example] = {}
        if run.all_instances.exists():
            examples = {e.key: e for e in run.read_examples(unique=True, warn=warn or _ignore)}
        missing = 0
        for key, review in reviews.items():
            example = examples.get(key) or review.example()
            if example is None or example.key != key:
                missing += 1
                continue
            human = {"rating": normalize_rating(review.rating), **review.answers}
            if human["rating"] is None and all(human[q] is None for q in QUESTIONS):
                continue  # reviewed, then cleared
            plan.reviews.append(_Labelled(example, human))
        if missing:
            plan.notes.append(
                f"{missing} reviewed keys are not among the examples of"
                f" {run.all_instances.name} (prepare was rerun since?): left out"
            )
    if settings.ratings_file is not None:
        plan.ratings = read_rated_file(settings.ratings_file)
        plan.ratings_file = settings.ratings_file
    if settings.use_predictions:
        directory = settings.predictions_dir or default_predictions_dir()
        if settings.predictions_dir is not None and not directory.is_dir():
            raise ConfigError(f"`predictions_dir` {directory}: no such folder")
        if directory.is_dir() and settings.sample_per_model > 0:
            plan.predictions = read_predictions(directory, settings.sample_per_model, settings.seed)
            plan.predictions_dir = directory
            if not plan.predictions and settings.predictions_dir is not None:
                raise ConfigError(
                    f"`predictions_dir` {directory}: no <model>{PREDICTIONS_SUFFIX} files of"
                    " the release in it"
                )
    if plan.empty:
        raise ConfigError(
            f"nothing to calibrate against: rate examples on the review page ({run.reviews_file}),"
            " or give `ratings_file` FILE (JSONL: instruction, input, output, rating A-D), or"
            " `predictions_dir` DIR (the release's human_eval/predictions)"
        )
    return plan


@dataclass
class ModelRow:
    name: str
    label: str
    paper_counts: tuple[int, int, int, int]
    judged: Counter

    @property
    def n(self) -> int:
        return sum(self.judged.values())

    @property
    def paper_mean(self) -> float:
        return paper_mean(self.paper_counts)

    @property
    def paper_share_a(self) -> float:
        return self.paper_counts[0] / sum(self.paper_counts)

    @property
    def judge_mean(self) -> float | None:
        n = self.n
        return sum(RATING_SCORE[r] * c for r, c in self.judged.items()) / n if n else None

    @property
    def judge_share_a(self) -> float | None:
        return self.judged["A"] / self.n if self.n else None


@dataclass
class PaperComparison:
    rows: list[ModelRow]
    per_model: int

    @property
    def spearman(self) -> float | None:
        rows = [r for r in self.rows if r.judge_mean is not None]
        return spearman([r.paper_mean for r in rows], [r.judge_mean for r in rows])  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": PAPER_SOURCE,
            "tasks_per_model": self.per_model,
            "spearman_mean": self.spearman,
            "models": [
                {
                    "model": r.name,
                    "paper_label": r.label,
                    "paper_counts": list(r.paper_counts),
                    "paper_mean": r.paper_mean,
                    "paper_share_a": r.paper_share_a,
                    "judged": r.n,
                    "judge_counts": [r.judged[x] for x in RATING_ORDER],
                    "judge_mean": r.judge_mean,
                    "judge_share_a": r.judge_share_a,
                }
                for r in self.rows
            ],
        }


@dataclass
class CalibrationReport:
    model: str
    reviews: Agreement | None = None
    ratings: Agreement | None = None
    ratings_file: str | None = None
    paper: PaperComparison | None = None
    notes: list[str] = field(default_factory=list)
    step: StepReport = field(default_factory=lambda: StepReport("judge_calibration"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "reviews": self.reviews.to_dict() if self.reviews else None,
            "ratings_file": self.ratings_file,
            "ratings": self.ratings.to_dict() if self.ratings else None,
            "paper": self.paper.to_dict() if self.paper else None,
            "notes": self.notes,
            "usage": self.step.usage.to_dict(),
            "unrated": self.step.dropped,
        }

    def format(self) -> str:
        lines = [f"Judge calibration of {self.model}"]
        if self.reviews is not None:
            lines += ["", "Against the ratings on the review page (reviews.jsonl):"]
            lines += _format_agreement(self.reviews)
        if self.ratings is not None:
            lines += ["", f"Against the ratings in {self.ratings_file}:"]
            lines += _format_agreement(self.ratings)
        if self.paper is not None:
            lines += ["", *_format_paper(self.paper)]
        if self.step.dropped:
            unrated = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.step.dropped.items())
            lines += ["", f"left out, not rated by the judge: {unrated} (rerun to retry)"]
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)


def _num(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _format_agreement(a: Agreement) -> list[str]:
    lines = [
        f"  examples rated by both      n = {a.n}",
        f"  exact agreement             {_num(a.exact)}",
        f"  within one level            {_num(a.within_one)}",
        f"  Cohen's kappa               {_num(a.kappa)}",
        f"  kappa, quadratic weights    {_num(a.kappa_quadratic)}",
        f"  mean score (A=4..D=1)       person {_num(a.human_mean)}, judge {_num(a.judge_mean)}",
    ]
    for q, qa in a.questions.items():
        lines.append(
            f"  {q:<27} agreement {_num(qa.agreement)}, kappa {_num(qa.kappa)} (n = {qa.n})"
        )
    if a.n:
        lines.append("  confusion (rows: person, columns: judge)")
        lines.append("        " + "".join(f"{r:>6}" for r in RATING_ORDER))
        for r, row in zip(RATING_ORDER, a.confusion, strict=True):
            lines.append(f"      {r} " + "".join(f"{c:>6}" for c in row))
    return lines


def _format_paper(p: PaperComparison) -> list[str]:
    lines = [
        f"Against the paper's human evaluation ({p.per_model} tasks per model, the same for all):",
        f"  source: {PAPER_SOURCE}",
        f"  {'model':<38}{'paper mean':>11}{'paper A':>9}{'judge mean':>12}{'judge A':>9}{'n':>5}",
    ]
    for r in p.rows:
        lines.append(
            f"  {r.name:<38}{r.paper_mean:>11.2f}{r.paper_share_a:>9.0%}"
            f"{_num(r.judge_mean):>12}"
            f"{'n/a' if r.judge_share_a is None else f'{r.judge_share_a:.0%}':>9}{r.n:>5}"
        )
    judged = sum(1 for r in p.rows if r.judge_mean is not None)
    lines.append(
        f"  Spearman rank correlation, judge mean vs paper mean: {_num(p.spearman)}"
        f" ({judged} models)"
    )
    return lines


def calibrate(
    ctx: StepContext,
    run: RunFolder | str | Path,
    settings: CalibrationSettings | None = None,
    plan: CalibrationPlan | None = None,
) -> CalibrationReport:
    """Compare this model's ratings with people's, judging what it has not judged yet.

    Reviewed examples of the run are judged into `run.judgments_file` (ratings this model already
    gave there are reused); examples from a ratings file and the release's predictions are
    judged into `run.calibration_judgments`, reused the same way. Prints nothing: see
    `CalibrationReport.format()`.
    """
    s = settings or CalibrationSettings()
    run = RunFolder.of(run)
    warn = ctx.reporter.warn
    plan = plan or plan_calibration(run, s, warn)
    who = model_id(ctx.model)
    report = CalibrationReport(model=who, notes=list(plan.notes))
    step = report.step
    step.outputs = [str(run.judgments_file), str(run.calibration_judgments)]

    for path in (run.judgments_file, run.calibration_judgments):
        list(iter_jsonl(path, repair=True, warn=warn))
    known = run.judgments(model=who, rated_only=True)
    cached = run.judgments(model=who, rated_only=True, path=run.calibration_judgments)

    with (
        JsonlAppender(run.judgments_file, warn=warn) as run_out,
        JsonlAppender(run.calibration_judgments, warn=warn) as cache_out,
    ):
        items: dict[tuple[str, bool], _Item] = {}

        def want(example: Example, in_run: bool, source: str) -> None:
            done = known if in_run else cached
            if example.key in done or (example.key, in_run) in items:
                return
            extra = {} if in_run else {"source": source}
            out = run_out if in_run else cache_out
            items[(example.key, in_run)] = _Item(example, out, extra)

        for labelled in plan.reviews:
            want(labelled.example, True, "reviews")
        for labelled in plan.ratings:
            want(labelled.example, False, f"ratings:{plan.ratings_file}")
        for name, examples in plan.predictions.items():
            for example in examples:
                want(example, False, f"predictions:{name}")
        total = len(plan.reviews) + len(plan.ratings) + sum(map(len, plan.predictions.values()))
        with ctx.reporter.bar("calibrate", len(items)) as bar:
            tally = _judge_items(ctx, list(items.values()), s.judge, step, bar)
    known.update({k: r for k, r in tally.records.items() if (k, True) in items})
    cached.update({k: r for k, r in tally.records.items() if (k, False) in items})

    Pairs = list[tuple[dict[str, Any], dict[str, Any]]]

    def pairs(labelled: list[_Labelled], judged: dict[str, Rating]) -> Pairs:
        return [
            (x.human, judged[x.example.key].record) for x in labelled if x.example.key in judged
        ]

    if plan.reviews:
        report.reviews = agreement(pairs(plan.reviews, known))
    if plan.ratings:
        report.ratings = agreement(pairs(plan.ratings, cached))
        report.ratings_file = str(plan.ratings_file)
    if plan.predictions:
        rows = []
        for name, examples in plan.predictions.items():
            label, counts = PAPER_FIGURE6[name]
            judged = Counter(cached[e.key].rating for e in examples if e.key in cached)
            rows.append(ModelRow(name, label, counts, judged))
        report.paper = PaperComparison(rows, per_model=max(map(len, plan.predictions.values())))

    step.counts = {
        "examples": total,
        "judged_now": sum(tally.ratings.values()),
        "reused": total - len(items),
        "reviews": len(plan.reviews),
        "ratings_file": len(plan.ratings),
        "predictions": sum(map(len, plan.predictions.values())),
    }
    step.dropped = dict(tally.dropped)
    step.complete = not tally.dropped and (step.engine is None or step.engine.budget_stop is None)
    return report


def calibration_line(run: RunFolder | str | Path) -> str:
    """One line on the run's last calibration, for whoever filters on the ratings to print
    first; it says so when the judge was never calibrated here."""
    run = RunFolder.of(run)
    try:
        saved = json.loads(run.calibration_report.read_text("utf-8"))
    except (OSError, ValueError):
        return (
            f"the judge was not calibrated in {run.path}: run 'selfinstruct judge {run.path}"
            " --calibrate' to see how far its ratings agree with people's"
        )
    parts = []
    for source, name in (("reviews", "review page"), ("ratings", "ratings file")):
        a = saved.get(source)
        if a and a.get("n"):
            parts.append(
                f"{name} n={a['n']}: exact {_num(a['exact'])}, within one"
                f" {_num(a['within_one'])}, kappa {_num(a['kappa'])}"
            )
    paper = saved.get("paper")
    if paper and paper.get("spearman_mean") is not None:
        parts.append(
            f"the paper's {len(paper['models'])} models ({paper['tasks_per_model']} tasks"
            f" each): Spearman"
            f" {_num(paper['spearman_mean'])}"
        )
    found = "; ".join(parts) or "no example rated by both"
    return f"judge {saved.get('model')} against people: {found}"
