"""`selfinstruct sweep`: step 1's similarity filter replayed at other thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from selfinstruct.cli import cli
from selfinstruct.cli.options import run_argument

SWEEP_EPILOG = """\b
What a sweep cannot know: the candidates the run never generated. It replays only the
candidates this run compared (kept + rejected as too similar). At a stricter threshold a real
run would have gone on generating to reach its target; at a looser one it would have stopped
sooner and, since prompts show pool instructions, seen other candidates after the first
difference. Candidates dropped by the other filters or left over at the target are not
replayed. See docs/sweep.md.
"""


@cli.command("sweep", epilog=SWEEP_EPILOG)
@run_argument
@click.option(
    "--thresholds",
    default="0.5,0.6,0.7,0.8",
    show_default=True,
    metavar="T1,T2,...",
    help="ROUGE-L F1 thresholds to replay (a candidate is kept when its best F1 is <= T);"
    " the run's own threshold is always added, marked with *.",
)
@click.option(
    "--seed-tasks",
    "--seed-tasks-path",
    "seed_tasks",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The seed tasks the run started from  [default: the file run.json records, else our"
    " 175 built-in tasks]",
)
@click.option(
    "--format",
    "table_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table: one line a threshold; json: one object a threshold.",
)
def sweep_command(run: Path, thresholds: str, seed_tasks: Path | None, table_format: str) -> None:
    """How many of RUN's step-1 candidates each threshold would keep, without any model call.

    Replays the greedy ROUGE-L filter over the run's kept and too-similar candidates in the
    order the run decided them, seeds first in the pool, as step 1 does. Needs a run made with
    rejected_instructions.jsonl (older runs: only thresholds below the run's are informative).
    """
    from selfinstruct.sweep import load_sweep_input, parse_thresholds

    wanted = parse_thresholds(thresholds)
    data = load_sweep_input(run, seeds=seed_tasks)
    if data.run_threshold not in wanted:
        wanted.append(data.run_threshold)
    rows = [data.row(t, is_run_threshold=t == data.run_threshold) for t in sorted(wanted)]
    if table_format == "json":
        for row in rows:
            click.echo(json.dumps(row.to_dict()))
    else:
        _print_table(run, data, rows)
    own = next(r for r in rows if r.is_run_threshold)
    if own.added or own.removed:
        click.echo(
            f"warning: at the run's own threshold the replay differs from the run ({own.added}"
            f" added, {own.removed} removed): were these the run's seeds ({data.seed_source})?",
            err=True,
        )
    if not data.has_rejected_file:
        click.echo(
            f"warning: {run} has no rejected_instructions.jsonl (a run made before it existed):"
            " only the kept instructions are replayed, so higher thresholds cannot add any",
            err=True,
        )


def _print_table(run: Path, data: object, rows: list) -> None:
    from selfinstruct.sweep import SweepInput

    assert isinstance(data, SweepInput)
    n_kept = sum(data.kept_by_run)
    target = f" of target {data.target:,}" if data.target is not None else ""
    click.echo(
        f"{run}: threshold {data.run_threshold}, {n_kept:,} kept{target};"
        f" {len(data.candidates):,} candidates replayed ({n_kept:,} kept +"
        f" {len(data.candidates) - n_kept:,} too similar)"
    )
    click.echo(f"seeds: {len(data.seeds):,} from {data.seed_source}")
    header = ["threshold", "kept", "vs run", "added", "removed", "target reached after"]
    body = []
    for r in rows:
        reached = "-" if r.to_target is None else f"{r.to_target:,} candidates"
        body.append(
            [
                f"{r.threshold:g}" + ("*" if r.is_run_threshold else ""),
                f"{r.kept:,}",
                f"{r.kept - r.run_kept:+,}",
                f"{r.added:,}",
                f"{r.removed:,}",
                reached,
            ]
        )
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    for line in [header, *body]:
        click.echo("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))
    click.echo("* the run's own threshold. Only this run's candidates are replayed: see --help.")
