"""The report's numbers: the paper's Table 1, Figure 2's verbs and objects, Figure 3's
ROUGE-L, Figure 4's lengths, the ratings and the rejections; `collect_stats` is stats.json."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from selfinstruct.errors import ConfigError, SeedFileError
from selfinstruct.forecast import beside_actual
from selfinstruct.judge.rubric import QUESTIONS
from selfinstruct.judge.rubric import RATING_ORDER as RATINGS
from selfinstruct.language import get as get_language
from selfinstruct.language import recorded as recorded_language
from selfinstruct.language import tokenizer_of
from selfinstruct.records import Example, Rating
from selfinstruct.report.reading import Progress, Run
from selfinstruct.runfolder import RunFolder, RunRecord
from selfinstruct.verbs import Pair, verb_noun_pairs

PARSE_CACHE_FILE = "verb_noun_cache.json"
TOP_VERBS = 20
TOP_NOUNS = 4
DEFAULT_THRESHOLD = 0.7


def _words(text: Any) -> int:
    return len(str(text or "").split())


def share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _instruction_texts(run: Run) -> list[str]:
    """The run's instructions: step 1's, else step 4's distinct ones, else step 2's."""
    if run.instructions is not None:
        return [r["instruction"] for r in run.instructions]
    if run.examples is not None:
        return list(dict.fromkeys(str(e.instruction) for e in run.examples))
    return list(run.labels or {})


def _file_counts(run: Run) -> dict[str, Any]:
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


def _table1(run: Run, texts: list[str]) -> dict[str, Any]:
    """The paper's Table 1: instructions, classification share, instances, average lengths."""
    t: dict[str, Any] = {"instructions": len(texts)}
    if run.labels is not None:
        known = [run.labels[x] for x in texts if x in run.labels]
        t["labelled_instructions"] = len(known)
        t["classification_instructions"] = sum(known)
        t["non_classification_instructions"] = len(known) - sum(known)
        t["classification_share"] = share(sum(known), len(known))
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
        "share": share(len(found), len(texts)),
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
        code = recorded_language(record.data) or "en"
        if code in seeds.BUILTIN_FILES and code != "en":
            return [t.instruction for t in seeds.default(code)], f"the built-in {code} seed tasks"
        return [t.instruction for t in seeds.default()], "the built-in 175 seed tasks"
    try:
        tasks = seeds.load_seed_tasks(path)
    except SeedFileError as e:
        raise ConfigError(f"seed tasks: {e}") from None
    return [t.instruction for t in tasks], f"{path} ({source})"


def _max_to(
    index_texts: list[str], queries: list[str], tokenizer: Any = None, chunk: int = 2048
) -> np.ndarray:
    """Each query's highest ROUGE-L F1 to any of ``index_texts``."""
    from selfinstruct.similarity import RougeLIndex

    index = RougeLIndex(index_texts, tokenizer=tokenizer)
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
    tokenizer: Any = None,
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
    index = RougeLIndex(seeds, tokenizer=tokenizer)
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
            questions[q]["share_yes"] = share(sum(answers), len(answers))
    all_three = [r for r in records.values() if None not in r.answers.values()]
    out: dict[str, Any] = {
        "examples": len(records),
        "rated": rated,
        "counts": {g: ratings[g] for g in RATINGS},
        "shares": {g: share(ratings[g], rated) for g in RATINGS},
        "unrated": ratings["unrated"],
        "invalid_rating": ratings["invalid"],
        "questions": questions,
    }
    if all_three:
        ok = sum(all(r.answers.values()) for r in all_three)
        out["all_fields_valid"] = {
            "answered": len(all_three),
            "yes": ok,
            "share_yes": share(ok, len(all_three)),
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
    data: Run,
    texts: list[str],
    seed_tasks: str | Path | None,
    progress: Progress,
    *,
    pool_sample: int,
    seed: int,
) -> _Similarity:
    progress("scoring ROUGE-L to the seed tasks")
    seeds, seed_source = _seed_instructions(data.record, seed_tasks)
    # Step 1's language (run.json), so that the figures are the filter's own.
    tokenizer = tokenizer_of(recorded_language(data.record.data))
    to_seeds = _max_to(seeds, texts, tokenizer)
    to_pool, lacking, computed = _pool_scores(
        texts,
        data.instructions,
        seeds,
        progress,
        limit=pool_sample,
        seed=seed,
        tokenizer=tokenizer,
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


def _lengths(
    texts: list[str], examples: list[Example], words: Callable[[Any], int] = _words
) -> _Lengths:
    """Figure 4's lengths, in words (or, in a language without spaces, the tokens `words`
    counts: characters in Chinese)."""
    instr_len = [words(x) for x in texts]
    input_len = [words(e.input) for e in examples if e.input.strip()]
    out_with = [words(e.output) for e in examples if e.input.strip()]
    out_without = [words(e.output) for e in examples if not e.input.strip()]
    return _Lengths(instr_len, input_len, out_with, out_without)


def _ratings(data: Run) -> dict[str, Any]:
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


def draw_samples(
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


@dataclass
class Analysis:
    """What the figures are drawn from."""

    texts: list[str]  # the run's instructions
    method: str  # of the verb/object parse
    verbs: dict[str, Any]
    top: list[tuple[str, int, list[tuple[str, int]]]]  # verbs, counts, their top objects
    similarity: _Similarity
    lengths: _Lengths
    ratings: dict[str, Any]


def analyse(
    data: Run,
    out: Path,
    say: Progress,
    *,
    parser: str,
    seed_tasks: str | Path | None,
    pool_sample: int,
    seed: int,
) -> Analysis:
    texts = _instruction_texts(data)
    say(f"read {data.rf.path}: {len(texts):,} instructions, {len(data.examples or []):,} examples")
    pairs, method = verb_noun_pairs(
        texts, parser=parser, cache=out / PARSE_CACHE_FILE, progress=say
    )
    verbs, top = _verb_stats(texts, pairs, method)
    similarity = _similarity(data, texts, seed_tasks, say, pool_sample=pool_sample, seed=seed)
    lang = get_language(recorded_language(data.record.data))
    words = _words if lang.is_english else (lambda x: len(lang.tokens(str(x or ""))))
    lengths = _lengths(texts, data.examples or [], words)
    return Analysis(texts, method, verbs, top, similarity, lengths, _ratings(data))


def collect_stats(data: Run, found: Analysis, seed: int, warnings: list[str]) -> dict[str, Any]:
    """Every number the page shows, in stats.json's order."""
    stats = {
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
    beside = _forecast_beside_actual(data.rf, data.record)
    if beside:  # only where `selfinstruct estimate` left a forecast.json
        stats["forecast_beside_actual"] = beside
    return stats


def _forecast_beside_actual(rf: RunFolder, record: RunRecord) -> list[list[Any]] | None:
    """forecast.json's figures beside run.json's, when both exist."""
    if not record.exists or not rf.forecast.exists():
        return None
    try:
        plan = json.loads(rf.forecast.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return (
        [list(row) for row in beside_actual(plan, record.data)] if isinstance(plan, dict) else None
    )


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
