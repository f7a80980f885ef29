"""Data tools: ROUGE-L dedup and the seed tasks."""

from __future__ import annotations

from pathlib import Path

import click

from selfinstruct.cli import cli
from selfinstruct.cli.options import language_option
from selfinstruct.errors import ConfigError
from selfinstruct.progress import Reporter

# --- dedup --------------------------------------------------------------------------------


@cli.command("dedup")
@click.argument("in_path", metavar="IN.jsonl", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "-o",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the kept records.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Drop a record whose ROUGE-L F1 to a kept one is above this"
    "  [default: 0.7 in English; the language's calibrated value otherwise]",
)
@click.option(
    "--field", default="instruction", show_default=True, help="JSON field that holds the text."
)
@click.option("--stem", is_flag=True, help="Porter-stem tokens (rouge-score's use_stemmer=True).")
@language_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or report.")
def dedup_cmd(
    in_path: Path,
    out_path: Path,
    threshold: float | None,
    field: str,
    stem: bool,
    language: str | None,
    quiet: bool,
) -> None:
    """Keep, in file order, each instruction whose ROUGE-L to every kept one is <= threshold."""
    from selfinstruct.dedup import dedup_jsonl

    reporter = Reporter(quiet=quiet)
    if not in_path.exists():
        raise ConfigError(f"{in_path}: no such file")
    total = sum(1 for _ in open(in_path, "rb"))
    with reporter.bar("dedup", total) as bar:
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            bar.advance(n - done)
            done = n

        report = dedup_jsonl(
            in_path,
            out_path,
            threshold=threshold,
            field=field,
            stem=stem,
            progress=progress,
            language=language,
        )
    if not quiet:
        click.echo(report.format_table(), err=True)


# --- seeds --------------------------------------------------------------------------------


@cli.group("seeds")
def seeds_group() -> None:
    """Our built-in seed tasks, and a validator for yours."""


@seeds_group.command("show")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show only the first N.")
@language_option
def seeds_show(limit: int | None, language: str | None) -> None:
    """Print the built-in seed tasks, one line each."""
    from selfinstruct import seeds

    tasks = seeds.default(language or "en")
    for task in tasks[:limit]:
        kind = "clf" if task.is_classification else "gen"
        click.echo(f"{task.id}\t{kind}\t{len(task.instances)}\t{task.instruction}")
    if limit is None or limit >= len(tasks):
        n_clf = sum(t.is_classification for t in tasks)
        click.echo(f"{len(tasks)} tasks, {n_clf} classification", err=True)


@seeds_group.command("export")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@language_option
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def seeds_export(out: Path, language: str | None, force: bool) -> None:
    """Write the built-in seed tasks to OUT in the original seed_tasks.jsonl format."""
    from selfinstruct import seeds

    if out.exists() and not force:
        raise ConfigError(f"{out}: exists; add --force to overwrite it")
    tasks = seeds.default(language or "en")
    seeds.write_seed_tasks(tasks, out)
    click.echo(f"wrote {len(tasks)} seed tasks to {out}", err=True)


@seeds_group.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
def seeds_validate(path: Path) -> None:
    """Check a seed file; print every problem with file and line; exit 1 if there is one."""
    from selfinstruct import seeds

    problems = seeds.validate_seed_file(path)
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        raise SystemExit(1)
    tasks = seeds.load_seed_tasks(path)
    n_clf = sum(t.is_classification for t in tasks)
    click.echo(f"{path}: {len(tasks)} tasks, {n_clf} classification: valid")
