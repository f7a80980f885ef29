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
judge and by a person where they exist, and the reasons step 1 rejected candidates for. The
page opens on a funnel from the seed tasks to the training examples, with the drops of each
step, and on the figures; the tables follow.

One module each: `reading` (the run folder, through `RunFolder`'s typed readers), `analysis`
(the numbers: stats.json), `figures` (matplotlib), `html` (the page).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError
from selfinstruct.io import write_atomic
from selfinstruct.report.analysis import Analysis, analyse, collect_stats, draw_samples
from selfinstruct.report.figures import Figures
from selfinstruct.report.html import render
from selfinstruct.report.reading import Progress, read_run
from selfinstruct.runfolder import RunFolder

__all__ = ["HTML_FILE", "STATS_FILE", "ReportResult", "build_report"]

HTML_FILE = "report.html"
STATS_FILE = "stats.json"


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
    config in run.json records, else the built-in seed tasks. Where more than ``pool_sample``
    instructions lack step 1's ``most_similar``, their ROUGE-L to the pool is computed on a
    seeded random sample of that many (the computation grows with the square of the pool).

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

    data = read_run(rf, warn)
    out = Path(out_dir) if out_dir is not None else rf.report_dir
    out.mkdir(parents=True, exist_ok=True)
    found = analyse(
        data, out, say, parser=parser, seed_tasks=seed_tasks, pool_sample=pool_sample, seed=seed
    )
    samples = draw_samples(data.examples or [], found.texts, sample_rows, seed)
    stats = collect_stats(data, found, seed, warnings)
    figs = _draw_figures(out, found, say)
    page, stats_file = _write_files(out, stats, figs, samples)
    say(f"wrote {page}")
    return ReportResult(out, page, stats_file, dict(figs.saved), stats, found.method, warnings)


def _draw_figures(out: Path, found: Analysis, say: Progress) -> Figures:
    say("drawing the figures")
    figs = Figures(out)
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
    out: Path, stats: dict[str, Any], figs: Figures, samples: list[dict[str, Any]]
) -> tuple[Path, Path]:
    """Write the page and stats.json (the figures are written as they are drawn)."""
    page = out / HTML_FILE
    write_atomic(page, render(stats, figs, samples))
    stats_file = out / STATS_FILE
    write_atomic(stats_file, json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return page, stats_file
