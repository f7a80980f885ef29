"""The `report` command: a run folder's HTML report, figures and numbers."""

from __future__ import annotations

from pathlib import Path

import click

from selfinstruct.cli import cli
from selfinstruct.cli.options import run_argument


@cli.command("report")
@run_argument
@click.option(
    "--out-dir",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for report.html, the figures (PNG and SVG) and stats.json  [default: RUN/report]",
)
@click.option(
    "--sample-rows",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Examples shown in the sample table (rows).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the random sample of examples.",
)
@click.option(
    "--parser",
    default="auto",
    show_default=True,
    help="Verb/object parse for Figure 2: auto (spaCy with an installed en_core_web_*"
    " pipeline, else rules), heuristic, spacy or spacy:MODEL.",
)
@click.option(
    "--seed-tasks",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Seed tasks Figure 3 compares with  [default: the seed file step 1's settings in"
    " run.json record, else the built-in 175]",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the report's path (and errors).")
def report_cmd(
    run: Path,
    out_dir: Path | None,
    sample_rows: int,
    seed: int,
    parser: str,
    seed_tasks: Path | None,
    quiet: bool,
) -> None:
    """Write RUN/report/report.html: counts per step, the paper's Figures 2-4, ratings, samples.

    The page is self-contained (figures embedded, no network needed); each figure is also
    written as PNG and SVG beside it. Prints the page's path.
    """
    from selfinstruct.report import build_report

    def progress(message: str) -> None:
        if not quiet or message.startswith("warning:"):
            click.echo(message, err=True)

    result = build_report(
        run,
        out_dir=out_dir,
        sample_rows=sample_rows,
        seed=seed,
        progress=progress,
        parser=parser,
        seed_tasks=seed_tasks,
    )
    click.echo(str(result.html))
