"""`selfinstruct review RUN`: a person rates a sample of step 4's examples on a local page."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from selfinstruct.cli import cli
from selfinstruct.cli.options import run_argument
from selfinstruct.review import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_SAMPLE,
    DEFAULT_SEED,
    make_server,
)


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@cli.command("review")
@run_argument
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=DEFAULT_SAMPLE,
    show_default=True,
    help="Examples to review, drawn at random from step 4's file (all if it has fewer).",
)
@click.option(
    "--seed",
    type=int,
    default=DEFAULT_SEED,
    show_default=True,
    help="Seed of the random sample: the same seed shows the same examples after a restart.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="TCP port of the page; 0 takes any free port.",
)
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to serve on: 127.0.0.1 only (localhost is accepted as its name).",
)
def review_cmd(run: Path, sample: int, seed: int, port: int, host: str) -> None:
    """Serve a page on 127.0.0.1 to rate a sample of RUN's examples (A-D and three yes/no
    questions, as in the paper's human evaluation). Each click is saved at once to
    RUN/reviews.jsonl; rerun the same command to carry on. Ctrl-C stops."""
    server = make_server(run, host=host, port=port, sample=sample, seed=seed, warn=_warn)
    session = server.session
    click.echo(server.url)
    click.echo(
        f"review: {len(session.rows)} of {session.total_examples} examples (seed {seed}),"
        f" {session.reviewed()} reviewed so far; answers go to {session.run.reviews_file};"
        " Ctrl-C stops",
        err=True,
    )
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    click.echo(
        f"stopped: {session.reviewed()} of {len(session.rows)} reviewed, saved in"
        f" {session.run.reviews_file}",
        err=True,
    )
