"""A run's report: one self-contained HTML page, its figures as PNG and SVG, and the numbers.

``build_report(run)`` reads a run folder (ours or the original release's) and writes into
``RUN/report/``:

* ``report.html``: opens offline (figures embedded as PNG, inline CSS, no script);
* ``<figure>.png`` and ``<figure>.svg`` for each figure;
* ``stats.json``: every number the page shows;
* ``verb_noun_cache.json``: the verb/object parse of each instruction, reused by the next report.

What it shows: counts and drops per step (from ``run.json`` and from the files), the paper's
Table 1 statistics, Figure 2 (root verbs and their direct noun objects), Figure 3 (ROUGE-L of
each instruction to the seed tasks and to the pool), Figure 4 (lengths of instructions, inputs
and outputs), the share of classification tasks, a seeded sample of examples, ratings by an LLM
judge and by a person where they exist, and the reasons step 1 rejected candidates for.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import random
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from selfinstruct.errors import ConfigError, DataFileError, SeedFileError
from selfinstruct.io import write_atomic
from selfinstruct.judge.rubric import QUESTION_TEXT, QUESTIONS, RATING_MEANING
from selfinstruct.judge.rubric import RATING_ORDER as RATINGS
from selfinstruct.records import Example, Rating
from selfinstruct.runfolder import RunFolder, RunRecord
from selfinstruct.verbs import Pair, verb_noun_pairs

Progress = Callable[[str], None]

HTML_FILE = "report.html"
STATS_FILE = "stats.json"
PARSE_CACHE_FILE = "verb_noun_cache.json"

TOP_VERBS = 20
TOP_NOUNS = 4
DEFAULT_THRESHOLD = 0.7


@dataclass
class ReportResult:
    """What `build_report` wrote and computed."""

    out_dir: Path
    html: Path
    stats_file: Path
    figures: dict[str, tuple[Path, Path]]  # name -> (png, svg)
    stats: dict[str, Any]
    parse_method: str
    warnings: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        """Every file written, the page first."""
        out = [self.html, self.stats_file]
        for png, svg in self.figures.values():
            out += [png, svg]
        return out


# --------------------------------------------------------------------------------------------
# Reading the run folder


@dataclass
class _Run:
    rf: RunFolder
    record: RunRecord  # run.json
    instructions: list[dict[str, Any]] | None  # step 1 records
    labels: dict[str, bool] | None
    labels_file: Path | None
    instance_tasks: int | None  # step 3: distinct instructions with an answer
    examples: list[Example] | None  # step 4
    rejected: list[dict[str, Any]] | None
    judgments: dict[str, Rating] | None  # last record per key
    reviews: dict[str, Rating] | None


def _step_files(rf: RunFolder) -> list[Path]:
    files = [rf.instructions, rf.instances, rf.all_instances, *rf.classification_files()]
    return [p for p in files if p.exists()]


def _check_not_empty(path: Path, records: Iterable[Any]) -> None:
    if not any(True for _ in records):
        raise DataFileError(f"{path}: empty file (no records); rerun the step that writes it")


def _check_run_folder(rf: RunFolder) -> None:
    if not rf.path.exists():
        raise ConfigError(f"{rf.path}: no such run folder")
    if not rf.path.is_dir():
        raise ConfigError(f"{rf.path}: not a folder (give the run folder, e.g. runs/demo)")
    if not _step_files(rf):
        raise DataFileError(
            f"{rf.path}: no step files ({rf.instructions.name}, {rf.all_instances.parent.name}/"
            f"{rf.all_instances.name}, ...); run 'selfinstruct run --out {rf.path}' first"
        )


def _read_instructions(rf: RunFolder, warn: Progress) -> list[dict[str, Any]] | None:
    if not rf.instructions.exists():
        return None
    instructions = rf.read_instructions(warn=warn)
    _check_not_empty(rf.instructions, instructions)
    return instructions


def _read_labels(rf: RunFolder, warn: Progress) -> tuple[dict[str, bool] | None, Path | None]:
    """Step 2's labels from the file the run folder's one policy picks, and that file."""
    if not rf.classification_files():
        return None, None
    labels_file = rf.find_classification_file()
    labels = rf.read_labels([labels_file], warn=warn)
    _check_not_empty(labels_file, labels)
    return labels, labels_file


def _count_instance_tasks(rf: RunFolder, warn: Progress) -> int | None:
    if not rf.instances.exists():
        return None
    seen = {r["instruction"] for r in rf.read_instance_generations(warn=warn)
            if isinstance(r.get("instruction"), str)}  # fmt: skip
    _check_not_empty(rf.instances, seen)
    return len(seen)


def _read_examples(rf: RunFolder, warn: Progress) -> list[Example] | None:
    if not rf.all_instances.exists():
        return None
    examples = rf.read_examples(warn=warn)
    _check_not_empty(rf.all_instances, examples)
    return examples


def _read_run(rf: RunFolder, warn: Progress) -> _Run:
    """Every step file of the run, read in the steps' order (so are the warnings)."""
    _check_run_folder(rf)
    record = rf.run_record()
    instructions = _read_instructions(rf, warn)
    labels, labels_file = _read_labels(rf, warn)
    return _Run(
        rf,
        record,
        instructions,
        labels,
        labels_file,
        _count_instance_tasks(rf, warn),
        _read_examples(rf, warn),
        rf.read_rejected(warn=warn) if rf.rejected.exists() else None,
        rf.judgments(warn=warn) if rf.judgments_file.exists() else None,
        rf.reviews(warn=warn) if rf.reviews_file.exists() else None,
    )


# --------------------------------------------------------------------------------------------
# The numbers


def _words(text: Any) -> int:
    return len(str(text or "").split())


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _instruction_texts(run: _Run) -> list[str]:
    """The run's instructions: step 1's, else step 4's distinct ones, else step 2's."""
    if run.instructions is not None:
        return [r["instruction"] for r in run.instructions]
    if run.examples is not None:
        return list(dict.fromkeys(str(e.instruction) for e in run.examples))
    return list(run.labels or {})


def _file_counts(run: _Run) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    rf = run.rf
    if run.instructions is not None:
        counts[rf.instructions.name] = {"instructions": len(run.instructions)}
    if run.rejected is not None:
        counts[rf.rejected.name] = {"rejected_candidates": len(run.rejected)}
    if run.labels is not None and run.labels_file is not None:
        yes = sum(run.labels.values())
        counts[run.labels_file.name] = {
            "labelled": len(run.labels),
            "classification": yes,
            "not_classification": len(run.labels) - yes,
        }
    if run.instance_tasks is not None:
        counts[rf.instances.name] = {"tasks_with_instances": run.instance_tasks}
    if run.examples is not None:
        empty = sum(1 for e in run.examples if not e.input.strip())
        counts[f"{rf.finetuning_dir.name}/{rf.all_instances.name}"] = {
            "examples": len(run.examples),
            "distinct_instructions": len({e.instruction for e in run.examples}),
            "with_empty_input": empty,
        }
    for path, data in ((rf.judgments_file, run.judgments), (rf.reviews_file, run.reviews)):
        if data is not None:
            counts[path.name] = {"rated_examples": len(data)}
    return counts


def _run_json_steps(record: RunRecord) -> dict[str, Any] | None:
    steps = record.steps
    if steps is None:
        return None
    return {name: dataclasses.asdict(step) for name, step in steps.items()}


def _table1(run: _Run, texts: list[str]) -> dict[str, Any]:
    """The paper's Table 1: instructions, classification share, instances, average lengths."""
    t: dict[str, Any] = {"instructions": len(texts)}
    if run.labels is not None:
        known = [run.labels[x] for x in texts if x in run.labels]
        t["labelled_instructions"] = len(known)
        t["classification_instructions"] = sum(known)
        t["non_classification_instructions"] = len(known) - sum(known)
        t["classification_share"] = _share(sum(known), len(known))
    if texts:
        t["avg_instruction_words"] = float(np.mean([_words(x) for x in texts]))
    if run.examples is not None:
        inputs = [e.input for e in run.examples]
        non_empty = [x for x in inputs if x.strip()]
        t["instances"] = len(run.examples)
        t["instances_with_empty_input"] = len(inputs) - len(non_empty)
        if non_empty:
            t["avg_nonempty_input_words"] = float(np.mean([_words(x) for x in non_empty]))
        t["avg_output_words"] = float(np.mean([_words(e.output) for e in run.examples]))
    return t


def _verb_stats(
    texts: list[str], pairs: dict[str, Pair | None], method: str
) -> tuple[dict[str, Any], list[tuple[str, int, list[tuple[str, int]]]]]:
    found = [pairs[t] for t in texts if pairs.get(t)]
    verbs = Counter(v for v, _ in found)
    nouns: dict[str, Counter[str]] = {}
    for v, n in found:
        nouns.setdefault(v, Counter())[n] += 1
    top = [(v, c, nouns[v].most_common(TOP_NOUNS)) for v, c in verbs.most_common(TOP_VERBS)]
    stats = {
        "method": method,
        "instructions": len(texts),
        "with_verb_noun": len(found),
        "share": _share(len(found), len(texts)),
        "distinct_verbs": len(verbs),
        "distinct_pairs": len(set(found)),
        "top": [
            {"verb": v, "count": c, "objects": [{"noun": n, "count": k} for n, k in objs]}
            for v, c, objs in top
        ],
    }
    return stats, top


def _seed_instructions(record: RunRecord, seed_tasks: str | Path | None) -> tuple[list[str], str]:
    """The seed instructions Figure 3 compares with, and where they came from: the file
    given, else the one step 1's config records (when it is still there), else our default."""
    from selfinstruct import seeds

    path: Path | None = Path(seed_tasks) if seed_tasks is not None else None
    source = "given"
    if path is None:
        path, source = record.find_seed_file(), "from run.json's config"
    if path is None:
        return [t.instruction for t in seeds.default()], "the built-in 175 seed tasks"
    try:
        tasks = seeds.load_seed_tasks(path)
    except SeedFileError as e:
        raise ConfigError(f"seed tasks: {e}") from None
    return [t.instruction for t in tasks], f"{path} ({source})"


def _max_to(index_texts: list[str], queries: list[str], chunk: int = 2048) -> np.ndarray:
    """Each query's highest ROUGE-L F1 to any of ``index_texts``."""
    from selfinstruct.similarity import RougeLIndex

    index = RougeLIndex(index_texts)
    out = np.zeros(len(queries), dtype=np.float64)
    if not index_texts:
        return out
    for start in range(0, len(queries), chunk):
        part = queries[start : start + chunk]
        out[start : start + len(part)] = index.scores_many(part).max(axis=1)
    return out


def _pool_scores(
    texts: list[str],
    records: list[dict[str, Any]] | None,
    seeds: list[str],
    progress: Progress,
    *,
    limit: int,
    seed: int,
) -> tuple[np.ndarray, int, int]:
    """Each instruction's highest ROUGE-L to the seeds and the instructions before it, as step 1
    saw it: the best of its stored ``most_similar``, computed where that field is missing.

    Computing costs time in the square of the pool, so where more than ``limit`` instructions
    lack the field, a seeded random sample of ``limit`` of them is computed and the others are
    NaN. Returns the scores, how many lack the field and how many of those were computed.
    """
    from selfinstruct.similarity import RougeLIndex

    scores = np.zeros(len(texts), dtype=np.float64)
    missing: list[int] = []
    for i in range(len(texts)):
        stored = (records[i].get("most_similar") if records is not None else None) or {}
        values = [v for v in stored.values() if isinstance(v, int | float)]
        if values:
            scores[i] = max(values)
        else:
            missing.append(i)
    if not missing:
        return scores, 0, 0
    chosen = set(missing)
    if len(missing) > limit:
        chosen = set(random.Random(f"pool:{seed}").sample(missing, limit))
        scores[[i for i in missing if i not in chosen]] = np.nan
    progress(f"computing ROUGE-L to the pool for {len(chosen):,} instructions")
    last = max(chosen) if chosen else -1
    index = RougeLIndex(seeds)
    for i, text in enumerate(texts[: last + 1]):
        if i in chosen:
            scores[i] = index.max_score(text) if len(index) else 0.0
        index.add(text)
    return scores, len(missing), len(chosen)


def _histogram(values: np.ndarray, bins: np.ndarray) -> dict[str, list[float]]:
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}


def _summary(values: Iterable[float]) -> dict[str, float] | None:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return None
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "p90": float(np.percentile(arr, 90)),
        "max": float(arr.max()),
    }


def _rating_stats(records: dict[str, Rating], keys: set[str] | None) -> dict[str, Any]:
    ratings: Counter[str] = Counter()
    for r in records.values():
        if r.rating is not None and r.rating.strip().upper() in RATINGS:
            ratings[r.rating.strip().upper()] += 1
        elif r.rating is None:
            ratings["unrated"] += 1
        else:
            ratings["invalid"] += 1
    rated = sum(ratings[g] for g in RATINGS)
    questions = {}
    for q in QUESTIONS:
        answers = [r.answers[q] for r in records.values() if r.answers[q] is not None]
        if answers:
            questions[q] = {"answered": len(answers), "yes": sum(answers)}
            questions[q]["share_yes"] = _share(sum(answers), len(answers))
    all_three = [r for r in records.values() if None not in r.answers.values()]
    out: dict[str, Any] = {
        "examples": len(records),
        "rated": rated,
        "counts": {g: ratings[g] for g in RATINGS},
        "shares": {g: _share(ratings[g], rated) for g in RATINGS},
        "unrated": ratings["unrated"],
        "invalid_rating": ratings["invalid"],
        "questions": questions,
    }
    if all_three:
        ok = sum(all(r.answers.values()) for r in all_three)
        out["all_fields_valid"] = {
            "answered": len(all_three),
            "yes": ok,
            "share_yes": _share(ok, len(all_three)),
        }
    if keys is not None:
        out["still_in_data"] = sum(1 for k in records if k in keys)
    return out


@dataclass
class _Similarity:
    """Figure 3's numbers: each instruction's highest ROUGE-L to the seeds and to the pool."""

    seed_tasks: int
    seed_source: str
    threshold: float
    to_seeds: np.ndarray
    to_pool: np.ndarray  # the instructions whose score is known (no NaN)
    lacking: int  # instructions without step 1's most_similar
    computed: int  # of those, how many were scored here

    def stats(self) -> dict[str, Any]:
        bins = np.linspace(0, 1, 21)
        return {
            "seed_tasks": self.seed_tasks,
            "seed_source": self.seed_source,
            "threshold": self.threshold,
            "pool_lacking_most_similar": self.lacking,
            "pool_computed": self.computed,
            "to_seeds": _summary(self.to_seeds),
            "to_pool": _summary(self.to_pool),
            "hist_to_seeds": _histogram(self.to_seeds, bins),
            "hist_to_pool": _histogram(self.to_pool, bins),
        }


def _similarity(
    data: _Run,
    texts: list[str],
    seed_tasks: str | Path | None,
    progress: Progress,
    *,
    pool_sample: int,
    seed: int,
) -> _Similarity:
    progress("scoring ROUGE-L to the seed tasks")
    seeds, seed_source = _seed_instructions(data.record, seed_tasks)
    to_seeds = _max_to(seeds, texts)
    to_pool, lacking, computed = _pool_scores(
        texts, data.instructions, seeds, progress, limit=pool_sample, seed=seed
    )
    threshold = data.record.similarity_threshold or DEFAULT_THRESHOLD
    known = to_pool[~np.isnan(to_pool)]
    return _Similarity(len(seeds), seed_source, threshold, to_seeds, known, lacking, computed)


@dataclass
class _Lengths:
    """Figure 4's numbers: the words in each instruction, non-empty input and output."""

    instructions: list[int]
    inputs: list[int]  # the non-empty ones
    outputs_with_input: list[int]
    outputs_without_input: list[int]

    def stats(self) -> dict[str, Any]:
        return {
            "instructions": _summary(self.instructions),
            "non_empty_inputs": _summary(self.inputs),
            "outputs_with_input": _summary(self.outputs_with_input),
            "outputs_without_input": _summary(self.outputs_without_input),
        }


def _lengths(texts: list[str], examples: list[Example]) -> _Lengths:
    instr_len = [_words(x) for x in texts]
    input_len = [_words(e.input) for e in examples if e.input.strip()]
    out_with = [_words(e.output) for e in examples if e.input.strip()]
    out_without = [_words(e.output) for e in examples if not e.input.strip()]
    return _Lengths(instr_len, input_len, out_with, out_without)


def _ratings(data: _Run) -> dict[str, Any]:
    """The statistics of the LLM judge's and the person's ratings, where they exist."""
    keys = {e.key for e in data.examples} if data.examples is not None else None
    ratings = {}
    if data.judgments is not None:
        ratings["LLM judge"] = _rating_stats(data.judgments, keys)
    if data.reviews is not None:
        ratings["person"] = _rating_stats(data.reviews, keys)
    return ratings


def _rejected_stats(rejected: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if rejected is None:
        return None
    reasons = Counter(str(r.get("reason") or "unknown") for r in rejected)
    return {"total": len(rejected), "reasons": dict(reasons.most_common())}


def _draw_samples(
    examples: list[Example], texts: list[str], rows: int, seed: int
) -> list[dict[str, Any]]:
    """``rows`` examples drawn with ``random.Random(seed)``; instructions alone where the run
    has no examples."""
    rng = random.Random(seed)
    drawn = rng.sample(examples, min(rows, len(examples))) if examples else []
    samples = [e.to_dict() for e in drawn]
    if not samples and rows and not examples:
        samples = [{"instruction": t} for t in rng.sample(texts, min(rows, len(texts)))]
    return samples


def _run_header(rf: RunFolder, record: RunRecord) -> dict[str, Any]:
    """The run's folder, name, model, token usage and cost."""
    model = record.model
    model_name = f"{model.get('backend', '')}:{model.get('name', '')}" if model else None
    return {
        "path": str(rf.path),
        "name": rf.path.resolve().name,
        "model": model_name,
        "usage": record.usage,
        "cost_usd": record.cost_usd,
    }


# --------------------------------------------------------------------------------------------
# Figures


class _Figures:
    """Draws with matplotlib (Agg) and saves each figure as PNG and SVG."""

    def __init__(self, out_dir: Path):
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        self.plt = plt
        self.out_dir = out_dir
        self.saved: dict[str, tuple[Path, Path]] = {}
        self.png_data: dict[str, bytes] = {}
        self.rc = {
            "svg.fonttype": "none",  # text stays text: smaller, searchable files
            "svg.hashsalt": "selfinstruct-report",  # stable ids between runs
            "font.size": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }

    def save(self, name: str, fig: Any) -> None:
        png, svg = self.out_dir / f"{name}.png", self.out_dir / f"{name}.svg"
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        data = buf.getvalue()
        write_atomic(png, data)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
        write_atomic(svg, buf.getvalue())
        self.plt.close(fig)
        self.saved[name] = (png, svg)
        self.png_data[name] = data

    def sunburst(self, top: list[tuple[str, int, list[tuple[str, int]]]]) -> None:
        plt = self.plt
        with plt.rc_context(self.rc):
            fig, ax = plt.subplots(figsize=(9.5, 9.5))
            total = sum(c for _, c, _ in top)
            cmap = plt.get_cmap("tab20")
            inner_colors = [cmap(i % 20) for i in range(len(top))]
            outer_sizes, outer_colors, outer_labels = self._outer_ring(top, inner_colors)
            kw = {"startangle": 90, "counterclock": False}
            ax.pie(
                [c for _, c, _ in top],
                radius=0.62,
                colors=inner_colors,
                wedgeprops={"width": 0.34, "edgecolor": "white", "linewidth": 0.8},
                **kw,
            )
            ax.pie(
                outer_sizes,
                radius=1.0,
                colors=outer_colors,
                wedgeprops={"width": 0.38, "edgecolor": "white", "linewidth": 0.6},
                **kw,
            )
            self._ring_labels(ax, [v for v, _, _ in top], [c for _, c, _ in top], total, 0.45, 3)
            self._ring_labels(ax, outer_labels, outer_sizes, total, 0.81, 1.6)
            ax.set(aspect="equal")
            ax.set_title(
                f"Top {len(top)} root verbs (inner) and their top {TOP_NOUNS} direct noun"
                " objects (outer)",
                pad=4,
            )
            self.save("fig2_verbs", fig)

    @staticmethod
    def _outer_ring(
        top: list[tuple[str, int, list[tuple[str, int]]]], inner_colors: list[Any]
    ) -> tuple[list[int], list[Any], list[str]]:
        """Sizes, colours and labels of the outer ring: each verb's top objects in a lighter
        shade of the verb's colour, then a blank wedge for its other objects."""
        sizes: list[int] = []
        colors: list[Any] = []
        labels: list[str] = []
        for i, (_, count, objs) in enumerate(top):
            base = np.asarray(inner_colors[i])
            for n, k in objs:
                sizes.append(k)
                colors.append(tuple(0.55 * base + 0.45))  # a lighter shade
                labels.append(n)
            rest = count - sum(k for _, k in objs)
            if rest > 0:
                sizes.append(rest)
                colors.append((1, 1, 1, 0))  # the verb's other objects: blank
                labels.append("")
        return sizes, colors, labels

    @staticmethod
    def _ring_labels(
        ax: Any, labels: list[str], sizes: list[int], total: int, radius: float, min_deg: float
    ) -> None:
        done = 0.0
        for label, size in zip(labels, sizes, strict=True):
            span = 360.0 * size / total
            mid = 90.0 - 360.0 * (done + size / 2) / total  # clockwise from the top
            done += size
            if not label or span < min_deg:
                continue
            rad = math.radians(mid)
            angle = (mid + 180) % 360 - 180
            rotation = angle if -90 <= angle <= 90 else angle + 180
            fontsize = 9 if span >= 6 else 7 if span >= 3 else 6
            ax.text(
                radius * math.cos(rad),
                radius * math.sin(rad),
                label,
                rotation=rotation,
                rotation_mode="anchor",
                ha="center",
                va="center",
                fontsize=fontsize,
            )

    def rouge(self, to_seeds: np.ndarray, to_pool: np.ndarray, threshold: float) -> None:
        plt = self.plt
        bins = np.linspace(0, 1, 21)
        with plt.rc_context(self.rc):
            fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=False)
            panels = (
                (to_seeds, "to the seed tasks", "#4878a8"),
                (to_pool, "to the seed tasks and earlier instructions\n(when accepted)", "#d1884c"),
            )
            for ax, (values, what, color) in zip(axes, panels, strict=True):
                ax.hist(values, bins=bins, color=color, edgecolor="white")
                ax.axvline(threshold, color="#444", linestyle="--", linewidth=1)
                ax.text(threshold, ax.get_ylim()[1] * 0.95, f" {threshold:g}", va="top")
                ax.set_xlabel(f"highest ROUGE-L F1 {what}")
                ax.set_ylabel("instructions")
                ax.set_xlim(0, 1)
            fig.tight_layout()
            self.save("fig3_rouge", fig)

    def lengths(
        self, instr: list[int], inputs: list[int], out_with: list[int], out_without: list[int]
    ) -> None:
        plt = self.plt
        with plt.rc_context(self.rc):
            fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
            panels = (
                ("instruction", [(instr, "instructions", "#4878a8")]),
                ("non-empty input", [(inputs, "inputs", "#6a9f58")]),
                (
                    "output",
                    [
                        (out_with, "with an input", "#d1884c"),
                        (out_without, "without input", "#8e6bb0"),
                    ],
                ),
            )
            for ax, (what, series) in zip(axes, panels, strict=True):
                values = [v for s, _, _ in series for v in s]
                if not values:
                    ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
                    ax.set_xlabel(f"{what} length (words)")
                    continue
                cap = max(5, int(np.percentile(values, 99)) + 1)
                bins = np.arange(0, cap + 2) if cap <= 60 else np.linspace(0, cap + 1, 61)
                data = [np.minimum(np.asarray(s), cap) for s, _, _ in series]
                ax.hist(
                    data,
                    bins=bins,
                    stacked=True,
                    color=[c for _, _, c in series],
                    label=[f"{label} ({len(s):,})" for s, label, _ in series],
                    edgecolor="white",
                    linewidth=0.3,
                )
                ax.set_xlabel(f"{what} length (words; the last bar is \u2265{cap})")
                ax.set_ylabel("count")
                ax.legend(frameon=False, fontsize=8, loc="best")
            fig.tight_layout()
            self.save("fig4_lengths", fig)

    def ratings(self, sources: dict[str, dict[str, Any]]) -> None:
        plt = self.plt
        questions = [*QUESTIONS, "all_fields_valid"]
        answered = {n: s for n, s in sources.items() if any(_share_yes(s, q) for q in questions)}
        with plt.rc_context(self.rc):
            ncols = 2 if answered else 1
            fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 3.8), squeeze=False)
            colors = {name: c for name, c in zip(sources, ("#4878a8", "#d1884c"), strict=False)}
            self._rating_bars(axes[0][0], sources, colors)
            if answered:
                self._question_bars(axes[0][1], answered, colors, questions)
            fig.tight_layout()
            self.save("fig5_ratings", fig)

    @staticmethod
    def _rating_bars(ax: Any, sources: dict[str, dict[str, Any]], colors: dict[str, Any]) -> None:
        """The share of each rating, one bar per source."""
        width = 0.8 / len(sources)
        for i, (name, s) in enumerate(sources.items()):
            x = np.arange(len(RATINGS)) + (i - (len(sources) - 1) / 2) * width
            shares = [100 * (s["shares"][g] or 0) for g in RATINGS]
            ax.bar(x, shares, width, label=f"{name} ({s['rated']:,} rated)", color=colors[name])
        ax.set_xticks(
            range(len(RATINGS)),
            [f"{g}\n" + "\n".join(textwrap.wrap(RATING_MEANING[g], 16)) for g in RATINGS],
        )
        ax.tick_params(axis="x", labelsize=8)
        ax.set_ylabel("% of rated examples")
        ax.legend(frameon=False)

    @staticmethod
    def _question_bars(
        ax: Any, answered: dict[str, dict[str, Any]], colors: dict[str, Any], questions: list[str]
    ) -> None:
        """The share of yes to each question, one bar per source that answered any."""
        width = 0.8 / len(answered)
        for i, (name, s) in enumerate(answered.items()):
            x = np.arange(len(questions)) + (i - (len(answered) - 1) / 2) * width
            y = [100 * (_share_yes(s, q) or 0) for q in questions]
            ax.bar(x, y, width, label=name, color=colors[name])
        labels = ["valid\ninstruction", "input\nfits", "output\ncorrect", "all three"]
        ax.set_xticks(range(len(questions)), labels)
        ax.set_ylabel("% yes (of the answered)")
        ax.set_ylim(0, 100)
        ax.legend(frameon=False)


def _share_yes(source: dict[str, Any], question: str) -> float | None:
    """A rating source's share of yes to a question, None where none was answered."""
    answered = source["questions"].get(question) or source.get(question)
    return None if not answered else answered["share_yes"]


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:1.2em 1.6em 4em;background:#fff}
h1{margin:.2em 0 .1em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.92em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
.samples td{white-space:pre-wrap;word-break:break-word;max-width:28em}
.note{color:#555;font-size:.92em}nav a{margin-right:1em}code{background:#f3f3f3;padding:0 .2em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer():
            return f"{int(value):,}"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _pct(value: float | None) -> str:
    return "\u2013" if value is None else f"{100 * value:.1f}%"


def _table(headers: list[str], rows: list[list[Any]], *, cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, int | float) and not isinstance(cell, bool)
            text = _fmt(cell)
            cells.append(f'<td class="n">{_e(text)}</td>' if numeric else f"<td>{_e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    attr = f' class="{_e(cls)}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(figs: _Figures, name: str, alt: str) -> str:
    if name not in figs.png_data:
        return ""
    data = base64.b64encode(figs.png_data[name]).decode("ascii")
    png, svg = figs.saved[name]
    return (
        f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
        f'<p class="note">Files: <a href="{_e(png.name)}">{_e(png.name)}</a>, '
        f'<a href="{_e(svg.name)}">{_e(svg.name)}</a></p>'
    )


def _label(key: str) -> str:
    return key.replace("_", " ")


def _render(stats: dict[str, Any], figs: _Figures, samples: list[dict[str, Any]]) -> str:
    parts = [
        *_header(stats),
        *_counts_section(stats),
        *_table1_section(stats["table1"]),
        *_verbs_section(stats, figs),
        *_rouge_section(stats["rouge"], figs),
        *_lengths_section(stats["lengths"], figs),
        *_ratings_section(stats.get("ratings"), figs),
        *_rejected_section(stats.get("rejected")),
        *_samples_section(samples, stats["seed"]),
    ]
    body = "\n".join(p for p in parts if p)
    title = _e(f"selfinstruct report: {stats['run']['name']}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{title}</title><style>{_CSS}</style></head>"
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def _nav_sections(s: dict[str, Any]) -> list[tuple[str, str]]:
    sections = [
        ("counts", "Counts per step"),
        ("table1", "Statistics"),
        ("verbs", "Verbs and objects"),
        ("rouge", "Similarity"),
        ("lengths", "Lengths"),
    ]
    if s.get("ratings"):
        sections.append(("ratings", "Ratings"))
    if s.get("rejected") is not None:
        sections.append(("rejected", "Rejected"))
    sections.append(("samples", "Samples"))
    return sections


def _header(s: dict[str, Any]) -> list[str]:
    """The title, the run's folder, model and date, the links to the sections, the warnings."""
    meta = [f"run folder <code>{_e(s['run']['path'])}</code>"]
    model = s["run"].get("model")
    if model:
        meta.append(f"model <code>{_e(model)}</code>")
    meta.append(f"report written {_e(s['generated_at'])}")
    links = "".join(f'<a href="#{k}">{_e(t)}</a>' for k, t in _nav_sections(s))
    return [
        f"<h1>Self-Instruct run report: {_e(s['run']['name'])}</h1>",
        '<p class="meta">' + " \u00b7 ".join(meta) + "</p>",
        f"<nav>{links}</nav>",
        *[f'<p class="note">Warning: {_e(w)}</p>' for w in s["warnings"]],
    ]


def _counts_section(s: dict[str, Any]) -> list[str]:
    parts = ['<h2 id="counts">Counts per step</h2>']
    steps = s.get("steps_run_json")
    if steps:
        parts += _run_json_counts(steps, s["run"])
    else:
        parts.append(
            '<p class="note">No <code>run.json</code>: the counts below come from the files.</p>'
        )
    parts.append("<h3>In the files</h3>")
    rows = [[f, _label(k), v] for f, c in s["file_counts"].items() for k, v in c.items()]
    parts.append(_table(["file", "what", "count"], rows))
    return parts


def _run_json_counts(steps: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """One table per step of run.json, then one of the whole run's usage."""
    parts = ["<p>From <code>run.json</code> (counts of the last invocation of each step; drops"
             " and token usage added up over all invocations).</p>"]  # fmt: skip
    for name, step in steps.items():
        rows: list[list[Any]] = [[_label(k), v] for k, v in step["counts"].items()]
        rows += [[f"dropped: {_label(k)}", v] for k, v in step["dropped"].items()]
        rows += [[f"usage: {_label(k)}", v] for k, v in step["usage"].items()]
        if step.get("complete") is not None:
            rows.append(["complete", step["complete"]])
        parts.append(f"<h3>{_e(name)}</h3>" + _table(["what", "count"], rows))
    usage = run.get("usage")
    if usage:
        rows = [[_label(k), v] for k, v in usage.items()]
        if run.get("cost_usd") is not None:
            rows.append(["cost (USD)", run["cost_usd"]])
        parts.append("<h3>whole run</h3>" + _table(["what", "count"], rows))
    return parts


def _table1_section(t: dict[str, Any]) -> list[str]:
    rows = [["instructions", t["instructions"]]]
    if "labelled_instructions" in t:
        rows += [
            ["\u2003classification instructions", t["classification_instructions"]],
            ["\u2003non-classification instructions", t["non_classification_instructions"]],
            ["\u2003share of classification tasks", _pct(t["classification_share"])],
        ]
        if t["labelled_instructions"] != t["instructions"]:
            rows.append(["\u2003instructions with a step-2 label", t["labelled_instructions"]])
    if "instances" in t:
        rows += [
            ["instances", t["instances"]],
            ["\u2003instances with empty input", t["instances_with_empty_input"]],
        ]
    for key, what in (
        ("avg_instruction_words", "average instruction length (words)"),
        ("avg_nonempty_input_words", "average non-empty input length (words)"),
        ("avg_output_words", "average output length (words)"),
    ):
        if key in t:
            rows.append([what, round(t[key], 1)])
    parts = ['<h2 id="table1">Statistics (the paper\'s Table 1)</h2>']
    parts.append(_table(["statistic", "value"], rows))
    if "labelled_instructions" not in t:
        parts.append(
            '<p class="note">No step-2 file: the share of classification tasks is unknown.</p>'
        )
    return parts


def _verbs_section(s: dict[str, Any], figs: _Figures) -> list[str]:
    v, note = s["verbs"], s["verbs_method_note"]
    parts = [
        '<h2 id="verbs">Root verbs and their direct noun objects (the paper\'s Figure 2)</h2>',
        f"<p>{_fmt(v['with_verb_noun'])} of {_fmt(v['instructions'])} instructions"
        f" (<b>{_pct(v['share'])}</b>) have a root verb with a direct noun object;"
        f" {_fmt(v['distinct_verbs'])} distinct verbs, {_fmt(v['distinct_pairs'])} distinct"
        f" verb\u2013object pairs.</p>",
        f'<p class="note">Method: <code>{_e(v["method"])}</code>. {_e(note)}</p>',
        _img(figs, "fig2_verbs", "Sunburst of root verbs and their direct noun objects"),
    ]
    if v["top"]:
        rows = [
            [
                x["verb"],
                x["count"],
                ", ".join(f"{o['noun']} ({o['count']:,})" for o in x["objects"]),
            ]
            for x in v["top"]
        ]
        parts.append(_table(["verb", "instructions", f"top {TOP_NOUNS} objects"], rows))
    return parts


def _rouge_section(r: dict[str, Any], figs: _Figures) -> list[str]:
    parts = [
        '<h2 id="rouge">ROUGE-L to the seed tasks and to the pool (the paper\'s Figure 3)</h2>',
        f"<p>Highest ROUGE-L F1 of each instruction to the {_fmt(r['seed_tasks'])} seed tasks"
        f" ({_e(r['seed_source'])}), and to the seed tasks plus the instructions accepted"
        " before it (the best score in step 1's <code>most_similar</code>)."
        f" Dashed line: the step-1 threshold {_fmt(r['threshold'])}.</p>",
    ]
    if r["pool_lacking_most_similar"]:
        parts.append(_pool_note(r["pool_lacking_most_similar"], r["pool_computed"]))
    rows = [
        [what, *[r[key][k] for k in ("mean", "median", "p90", "max")]]
        for what, key in (
            ("to the seed tasks", "to_seeds"),
            ("to seeds and earlier pool", "to_pool"),
        )
        if r[key]
    ]
    if rows:
        parts.append(_table(["highest ROUGE-L", "mean", "median", "90th pct", "max"], rows))
    parts.append(_img(figs, "fig3_rouge", "Histograms of the highest ROUGE-L per instruction"))
    return parts


def _pool_note(lacking: int, computed: int) -> str:
    """How the score to the pool was found for the instructions without ``most_similar``."""
    how = (
        "computed here for all of them"
        if computed == lacking
        else f"computed here for a random sample of {_fmt(computed)} of them only, and the"
        " right-hand histogram counts that sample in their place"
    )
    return (
        f'<p class="note">{_fmt(lacking)} instructions have no <code>most_similar</code>:'
        f" their score to the pool was {how}.</p>"
    )


def _lengths_section(ln: dict[str, Any], figs: _Figures) -> list[str]:
    rows = [
        [_label(k), x["n"], x["mean"], x["median"], x["p90"], x["max"]]
        for k, x in ln.items()
        if x is not None
    ]
    return [
        '<h2 id="lengths">Lengths of instructions, inputs and outputs (the paper\'s Figure 4)</h2>',
        _table(["words in", "n", "mean", "median", "90th pct", "max"], rows),
        _img(figs, "fig4_lengths", "Histograms of instruction, input and output lengths"),
    ]


def _ratings_section(sources: dict[str, Any] | None, figs: _Figures) -> list[str]:
    if not sources:
        return []
    return [
        '<h2 id="ratings">Ratings</h2>',
        _ratings_table(sources),
        _questions_table(sources),
        _img(figs, "fig5_ratings", "Rating distribution and share of yes per question"),
    ]


def _ratings_table(sources: dict[str, Any]) -> str:
    """Count and share of each rating per source (judge, person), then the unrated ones."""
    names = list(sources)
    rows = []
    for g in RATINGS:
        row: list[Any] = [f"{g}: {RATING_MEANING[g]}"]
        for n in names:
            row.append(f"{sources[n]['counts'][g]:,} ({_pct(sources[n]['shares'][g])})")
        rows.append(row)
    rows.append(["rated", *[sources[n]["rated"] for n in names]])
    rows.append(["not rated (null)", *[sources[n]["unrated"] for n in names]])
    if any(sources[n]["invalid_rating"] for n in names):
        rows.append(["rating not A\u2013D", *[sources[n]["invalid_rating"] for n in names]])
    if any("still_in_data" in sources[n] for n in names):
        rows.append(["examples still in step 4", *[sources[n].get("still_in_data") for n in names]])
    return _table(["rating", *names], rows)


def _questions_table(sources: dict[str, Any]) -> str:
    """The share of yes to each question per source."""
    names = list(sources)
    rows = []
    for q, text in [*QUESTION_TEXT.items(), ("all_fields_valid", "All three fields valid")]:
        row = [text]
        for n in names:
            a = sources[n]["questions"].get(q) or sources[n].get(q)
            row.append(f"{_pct(a['share_yes'])} of {a['answered']:,}" if a else "\u2013")
        rows.append(row)
    return _table(["question (share of yes)", *names], rows)


def _rejected_section(rej: dict[str, Any] | None) -> list[str]:
    if rej is None:
        return []
    rows = [[_label(k), n, _pct(_share(n, rej["total"]))] for k, n in rej["reasons"].items()]
    return [
        '<h2 id="rejected">Rejected step-1 candidates</h2>',
        f"<p>{_fmt(rej['total'])} candidates rejected.</p>",
        _table(["reason", "candidates", "share"], rows),
    ]


def _samples_section(samples: list[dict[str, Any]], seed: int) -> list[str]:
    parts = ['<h2 id="samples">Sample of examples</h2>']
    if not samples:
        return [*parts, '<p class="note">No examples to show.</p>']
    rows = [[x.get("instruction", ""), x.get("input", ""), x.get("output", "")] for x in samples]
    return [
        *parts,
        f'<p class="note">{len(samples)} examples drawn at random (seed {seed}).</p>',
        _table(["instruction", "input", "output"], rows, cls="samples"),
    ]


# --------------------------------------------------------------------------------------------
# The entry point


def build_report(
    run: str | Path | RunFolder,
    *,
    out_dir: str | Path | None = None,
    sample_rows: int = 20,
    seed: int = 0,
    progress: Progress | None = None,
    parser: str = "auto",
    seed_tasks: str | Path | None = None,
    pool_sample: int = 5000,
) -> ReportResult:
    """Write the report of a run folder; return the paths written and the numbers.

    ``out_dir`` defaults to the run's ``report/`` folder. ``sample_rows`` examples are drawn
    with ``random.Random(seed)``. ``progress`` is told what is being done and every warning.
    ``parser`` chooses the verb/object parse (see :func:`selfinstruct.verbs.resolve_parser`).
    ``seed_tasks`` is the seed file Figure 3 compares with; by default the one step 1's
    config in run.json records, else the built-in seed tasks. Where more than ``pool_sample`` instructions
    lack step 1's ``most_similar``, their ROUGE-L to the pool is computed on a seeded random
    sample of that many (the computation grows with the square of the pool).

    Raises ConfigError for a missing run folder and DataFileError for a folder without step
    files, an empty step file or a malformed line.
    """
    rf = run if isinstance(run, RunFolder) else RunFolder(run)
    if sample_rows < 0:
        raise ConfigError(f"sample rows: expected 0 or more, got {sample_rows}")
    warnings: list[str] = []
    say: Progress = progress or (lambda _m: None)

    def warn(message: str) -> None:
        warnings.append(message)
        say(f"warning: {message}")

    data = _read_run(rf, warn)
    out = Path(out_dir) if out_dir is not None else rf.report_dir
    out.mkdir(parents=True, exist_ok=True)
    found = _analyse(
        data, out, say, parser=parser, seed_tasks=seed_tasks, pool_sample=pool_sample, seed=seed
    )
    samples = _draw_samples(data.examples or [], found.texts, sample_rows, seed)
    stats = _stats(data, found, seed, warnings)
    figs = _draw_figures(out, found, say)
    page, stats_file = _write_files(out, stats, figs, samples)
    say(f"wrote {page}")
    return ReportResult(out, page, stats_file, dict(figs.saved), stats, found.method, warnings)


@dataclass
class _Analysis:
    """What the figures are drawn from."""

    texts: list[str]  # the run's instructions
    method: str  # of the verb/object parse
    verbs: dict[str, Any]
    top: list[tuple[str, int, list[tuple[str, int]]]]  # verbs, counts, their top objects
    similarity: _Similarity
    lengths: _Lengths
    ratings: dict[str, Any]


def _analyse(
    data: _Run,
    out: Path,
    say: Progress,
    *,
    parser: str,
    seed_tasks: str | Path | None,
    pool_sample: int,
    seed: int,
) -> _Analysis:
    texts = _instruction_texts(data)
    say(f"read {data.rf.path}: {len(texts):,} instructions, {len(data.examples or []):,} examples")
    pairs, method = verb_noun_pairs(
        texts, parser=parser, cache=out / PARSE_CACHE_FILE, progress=say
    )
    verbs, top = _verb_stats(texts, pairs, method)
    similarity = _similarity(data, texts, seed_tasks, say, pool_sample=pool_sample, seed=seed)
    lengths = _lengths(texts, data.examples or [])
    return _Analysis(texts, method, verbs, top, similarity, lengths, _ratings(data))


def _stats(data: _Run, found: _Analysis, seed: int, warnings: list[str]) -> dict[str, Any]:
    """Every number the page shows, in stats.json's order."""
    return {
        "run": _run_header(data.rf, data.record),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "steps_run_json": _run_json_steps(data.record),
        "file_counts": _file_counts(data),
        "table1": _table1(data, found.texts),
        "verbs": found.verbs,
        "verbs_method_note": _method_note(found.method),
        "rouge": found.similarity.stats(),
        "lengths": found.lengths.stats(),
        "ratings": found.ratings,
        "rejected": _rejected_stats(data.rejected),
        "warnings": warnings,  # the same list: a later warning still shows
    }


def _draw_figures(out: Path, found: _Analysis, say: Progress) -> _Figures:
    say("drawing the figures")
    figs = _Figures(out)
    if found.top:
        figs.sunburst(found.top)
    if found.texts:
        sim, ln = found.similarity, found.lengths
        figs.rouge(sim.to_seeds, sim.to_pool, float(sim.threshold))
        figs.lengths(ln.instructions, ln.inputs, ln.outputs_with_input, ln.outputs_without_input)
    if found.ratings:
        figs.ratings(found.ratings)
    return figs


def _write_files(
    out: Path, stats: dict[str, Any], figs: _Figures, samples: list[dict[str, Any]]
) -> tuple[Path, Path]:
    """Write the page and stats.json (the figures are written as they are drawn)."""
    page = out / HTML_FILE
    write_atomic(page, _render(stats, figs, samples))
    stats_file = out / STATS_FILE
    write_atomic(stats_file, json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return page, stats_file


def _method_note(method: str) -> str:
    if method.startswith("spacy:"):
        return (
            "Dependency parse with spaCy: the root of the first sentence, if it is a verb, and"
            " its first direct object that is a noun, both lemmatized."
        )
    return (
        "No spaCy English pipeline is installed, so a rule-based parse was used: skip openers"
        " (\u201cPlease\u201d, \u201cCan you\u201d, a leading \u201cGiven \u2026,\u201d clause);"
        " the verb is the first word unless it is a wh-word, auxiliary, pronoun or another word"
        " that cannot be an imperative verb; the object is"
        " the last word of the noun phrase after it (determiners, numbers and indirect-object"
        " pronouns skipped; it ends at a preposition, conjunction, relative word or punctuation),"
        " put in the singular. Install spaCy and an en_core_web_* pipeline for a real parse."
    )
