"""The `export` command: a run as a dataset folder, or on the Hugging Face Hub."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from selfinstruct.cli import cli
from selfinstruct.cli.options import quiet_option, run_argument
from selfinstruct.errors import ConfigError

EXPORT_EPILOG = """\b
Examples:
  selfinstruct export runs/x --to runs/x-dataset --license cc-by-4.0
  selfinstruct export runs/x --to runs/x-dataset --license mit --test-size 0.1
  HF_TOKEN=hf_... selfinstruct export runs/x --to hub me/my-data --license mit --private
"""


def _test_size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        size = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a share below 1 or a count") from None
    if size <= 0 or (size >= 1 and size != int(size)):
        raise click.BadParameter(f"{value!r}: expected a share in (0, 1) or a whole count")
    return size


@cli.command("export", epilog=EXPORT_EPILOG)
@run_argument
@click.argument("repo", required=False, metavar="[REPO]")
@click.option(
    "--to",
    "to",
    required=True,
    help="A folder to write the dataset to, or 'hub' to upload it to the Hugging Face Hub"
    " repository REPO (NAMESPACE/NAME). A folder named hub: --to ./hub.",
)
@click.option(
    "--license",
    "license",
    default=None,
    help="The dataset's license, a Hub license id (cc-by-4.0, apache-2.0, mit, other, ...);"
    " required.",
)
@click.option(
    "--test-size",
    callback=_test_size,
    default=None,
    help="Hold out a test split of whole tasks: a share of the instructions (0.1) or their"
    " number (50)  [default: no test split]",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the test split's choice."
)
@click.option(
    "--language",
    "languages",
    multiple=True,
    help="Language code of the data (repeatable)  [default: the run's language, else en]",
)
@click.option("--name", "pretty_name", default=None, help="The dataset's display name.")
@click.option("--private", is_flag=True, help="[hub] Create the repository private (if it is new).")
@click.option("--no-figures", is_flag=True, help="Leave the report's figures out of the card.")
@quiet_option
def export_command(
    run: Path,
    repo: str | None,
    to: str,
    license: str | None,
    test_size: float | None,
    seed: int,
    languages: tuple[str, ...],
    pretty_name: str | None,
    private: bool,
    no_figures: bool,
    quiet: bool,
) -> None:
    """Write RUN as a dataset `datasets.load_dataset(DIR)` reads: Parquet configs (default:
    the training examples; instructions, instances, rejected), a dataset card (README.md) and
    the run's record. With --to hub REPO, upload it in one commit and print its URL."""
    from selfinstruct.export import LICENSE_NEEDED, export_dataset, push_to_hub

    def say(message: str) -> None:
        if not quiet or message.startswith("warning:"):
            click.echo(message, err=True)

    if not license:
        raise ConfigError(f"--license: {LICENSE_NEEDED}")
    to_hub = to == "hub"
    if to_hub and not repo:
        raise ConfigError("--to hub: name the repository: selfinstruct export RUN --to hub NS/NAME")
    if repo and not to_hub:
        raise ConfigError(f"{repo}: a repository is only taken with --to hub")
    options = dict(
        license=license,
        languages=list(languages) or None,
        test_size=test_size,
        seed=seed,
        pretty_name=pretty_name,
        figures=not no_figures,
        progress=say,
    )
    if not to_hub:
        result = export_dataset(run, Path(to), **options)
        _report(result, say)
        click.echo(str(result.folder))
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = export_dataset(run, Path(tmp) / "dataset", repo_id=repo, **options)
        _report(result, say)
        click.echo(push_to_hub(result.folder, repo, private=private, progress=say))


def _report(result, say) -> None:  # noqa: ANN001
    for config, splits in result.rows.items():
        say(f"{config}: " + ", ".join(f"{s} {n:,}" for s, n in splits.items()))
    for note in result.notes:
        say(note)
