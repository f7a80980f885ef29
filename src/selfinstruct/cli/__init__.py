"""The `selfinstruct` command: thin commands over the library, one module per command group.

Every command module registers its commands on `cli`; `main()` is the one place where typed
errors become one line on stderr and an exit code.
"""

from __future__ import annotations

import importlib
import sys

import click

from selfinstruct.errors import SelfInstructError

RESUME_HINT = "interrupted: everything accepted so far is saved; rerun the same command to resume"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# One module per command group; each registers its commands on `cli` when imported.
COMMAND_MODULES = ("generate", "data", "train", "review", "report", "sweep", "judge")


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="selfinstruct")
def cli() -> None:
    """Self-Instruct: grow an instruction-tuning dataset from a few seed tasks, on any model."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"selfinstruct.cli.{_name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: typed errors become one line on stderr and an exit code."""
    try:
        cli.main(args=argv, prog_name="selfinstruct", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo(RESUME_HINT, err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except SelfInstructError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        click.echo(f"error: {e.filename or ''}: {e.strerror or e}", err=True)
        sys.exit(1)
