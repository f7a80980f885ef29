"""Near-duplicate removal for instruction files (the `selfinstruct dedup` command).

Keeps, in file order, each record whose ROUGE-L F1 (rouge-score's figure) with every record kept
before it is <= the threshold, and writes the kept lines unchanged.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, DataFileError
from .language import resolve as resolve_language
from .similarity import Tokenizer, greedy_dedup

__all__ = ["DedupReport", "Histogram", "dedup_jsonl", "read_instructions"]

BIN_WIDTH = 0.05
DEFAULT_SCORE_FLOOR = 0.5
_DETECT_FROM = 1000  # records that --language auto looks at


@dataclass(frozen=True)
class Histogram:
    """Counts of scores in bins ``(lo, hi]`` of width 0.05 from ``start`` up to 1.0, plus
    ``at_or_below`` for the scores <= ``start`` (and the records with no score above it)."""

    start: float
    bins: tuple[tuple[float, float, int], ...]
    at_or_below: int = 0

    @classmethod
    def of(cls, scores: list[float], start: float, at_or_below: int = 0) -> Histogram:
        edges = _edges(start)
        counts = [0] * (len(edges) - 1)
        below = at_or_below
        for score in scores:
            if score <= start or not counts:
                below += 1
                continue
            # bins (lo, hi]: the first bin whose upper edge is >= the score
            counts[min(bisect.bisect_left(edges, score), len(counts)) - 1] += 1
        bins = tuple((edges[k], edges[k + 1], counts[k]) for k in range(len(counts)))
        return cls(start, bins, below)

    @property
    def total(self) -> int:
        return self.at_or_below + sum(c for _, _, c in self.bins)


def _edges(start: float) -> list[float]:
    if start >= 1.0:
        return [start]
    edges = [start]
    k = 1
    while True:
        edge = round(start + k * BIN_WIDTH, 10)
        if edge >= 1.0 - 1e-12:
            edges.append(1.0)
            return edges
        edges.append(edge)
        k += 1


@dataclass
class DedupReport:
    """What :func:`dedup_jsonl` did. ``dropped_hist`` counts the dropped records by their
    highest F1 with a record kept before them; ``max_hist`` counts every record by that figure
    (exact above ``score_floor``; records at or below it are counted together)."""

    in_path: Path
    out_path: Path
    threshold: float
    field: str
    stem: bool
    total: int
    kept: int
    dropped: int
    dropped_hist: Histogram
    max_hist: Histogram
    score_floor: float
    seconds: float
    dropped_examples: list[tuple[int, int, float]] = field(default_factory=list)
    language: str = "en"  # whose tokenizer scored the records (selfinstruct.language)

    def to_dict(self) -> dict:
        """A JSON-ready summary."""

        def hist(h: Histogram) -> dict:
            return {
                "start": h.start,
                "at_or_below": h.at_or_below,
                "bins": [{"lo": lo, "hi": hi, "count": c} for lo, hi, c in h.bins],
            }

        return {
            "in": str(self.in_path),
            "out": str(self.out_path),
            "threshold": self.threshold,
            "field": self.field,
            "stem": self.stem,
            "total": self.total,
            "kept": self.kept,
            "dropped": self.dropped,
            "seconds": round(self.seconds, 3),
            "dropped_hist": hist(self.dropped_hist),
            "max_hist": hist(self.max_hist),
        } | ({} if self.language == "en" else {"language": self.language})

    def format_table(self, *, bar_width: int = 30) -> str:
        """A plain-text report: counts, then both histograms with bars."""

        def pct(n: int) -> str:
            return f"{100.0 * n / self.total:5.1f}%" if self.total else "    -"

        lines = [
            f"dedup {self.in_path} -> {self.out_path}",
            f"ROUGE-L F1 threshold {self.threshold:g} ("
            + ("rouge-score figures" if self.language == "en" else f"{self.language} tokens")
            + f"{', Porter-stemmed' if self.stem else ''}), field {self.field!r}",
            f"  records  {self.total:>9,}",
            f"  kept     {self.kept:>9,}  {pct(self.kept)}",
            f"  dropped  {self.dropped:>9,}  {pct(self.dropped)}",
            f"  time     {self.seconds:>9.2f} s",
        ]

        def table(title: str, h: Histogram, below_label: str | None) -> None:
            rows = []
            if below_label is not None:
                rows.append((below_label, h.at_or_below))
            rows += [(f"({lo:.2f}, {hi:.2f}]", c) for lo, hi, c in h.bins]
            peak = max((c for _, c in rows), default=0) or 1
            lines.append("")
            lines.append(title)
            for label, count in rows:
                bar = "#" * max(0, round(bar_width * count / peak))
                lines.append(f"  {label:<14} {count:>9,}  {bar}")

        table("dropped records by highest F1 with a kept record:", self.dropped_hist, None)
        table(
            "all records by highest F1 with an earlier kept record:",
            self.max_hist,
            f"<= {self.max_hist.start:.2f}",
        )
        return "\n".join(lines)


def read_instructions(path: str | os.PathLike[str], field: str = "instruction"):
    """The records of a JSONL file (or a .txt file, one instruction a line) as
    ``(line_number, raw_line, instruction)``, blank lines skipped.

    Raises DataFileError naming the file and line for anything unusable.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataFileError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    plain = path.suffix.lower() == ".txt"
    records: list[tuple[int, str, str]] = []
    for lineno, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError:
            raise DataFileError(f"{path}:{lineno}: not UTF-8 text") from None
        line = line.removesuffix("\r")
        if lineno == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        if plain:
            records.append((lineno, line, line))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataFileError(f"{path}:{lineno}: not a JSON object")
        if field not in obj:
            raise DataFileError(f"{path}:{lineno}: no {field!r} field")
        value = obj[field]
        if not isinstance(value, str):
            raise DataFileError(f"{path}:{lineno}: field {field!r} is not a string")
        records.append((lineno, line, value))
    return records


def _write_atomic(path: Path, lines: list[str]) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise DataFileError(f"{path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for line in lines:
                fh.write(line)
                fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def dedup_jsonl(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    threshold: float | None = 0.7,
    field: str = "instruction",
    stem: bool = False,
    progress: Callable[[int], None] | None = None,
    score_floor: float | None = DEFAULT_SCORE_FLOOR,
    tokenizer: Tokenizer | None = None,
    language: str | None = None,
) -> DedupReport:
    """Greedy ROUGE-L dedup of a JSONL file of records with a ``field`` (or of a .txt file, one
    instruction a line): keeps, in file order, each record whose ROUGE-L F1 with every record
    kept before it is <= ``threshold``, and writes the kept lines unchanged to ``out_path``
    (atomically: a temporary file in the same folder, then a rename).

    ``progress(n_done)`` is called as records are processed. ``score_floor`` (default 0.5;
    None: the threshold, which is faster) is where the histogram of every record's highest
    score starts; below it records are only counted. ``language`` (an ISO code, default
    English; ``auto``: detected from the first records) chooses the tokenizer, and the
    threshold where ``threshold`` is None (``selfinstruct.language``); ``tokenizer``, when
    given, replaces the language's (see ``similarity.tokenizer_for``).
    """
    in_path, out_path = Path(in_path), Path(out_path)
    started = time.perf_counter()
    records = read_instructions(in_path, field)
    lang = resolve_language(language, (text for _, _, text in records[:_DETECT_FROM]))
    if stem and not lang.is_english:
        raise ConfigError("stemming (stem=True) is for English only")
    threshold = lang.threshold if threshold is None else threshold
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    floor = threshold if score_floor is None else min(score_floor, threshold)
    result = greedy_dedup(
        [instruction for _, _, instruction in records],
        threshold,
        stem=stem,
        progress=progress,
        score_floor=floor,
        tokenizer=tokenizer or lang.tokenizer,
    )
    _write_atomic(out_path, [records[i][1] for i in result.kept])
    max_scores = result.max_scores or []
    above = [s for s in max_scores if not math.isnan(s)]
    report = DedupReport(
        in_path=in_path,
        out_path=out_path,
        threshold=threshold,
        field=field,
        stem=stem,
        total=len(records),
        kept=len(result.kept),
        dropped=len(result.dropped),
        dropped_hist=Histogram.of(result.dropped_scores, threshold),
        max_hist=Histogram.of(above, floor, at_or_below=len(max_scores) - len(above)),
        score_floor=floor,
        seconds=time.perf_counter() - started,
        dropped_examples=[
            (records[i][0], records[m][0] if m >= 0 else -1, s)
            for i, m, s in zip(
                result.dropped[:20],
                result.dropped_match[:20],
                result.dropped_scores[:20],
                strict=True,
            )
        ],
        language=lang.code,
    )
    return report
