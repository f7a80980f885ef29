"""The `selfinstruct` command: thin commands over the library, one module per command group.

Every command module registers its commands on `cli`; `main()` is the one place where typed
errors become one line on stderr and an exit code.
"""

from __future__ import annotations

import functools
import importlib
import re
import signal
import sys

import click

from selfinstruct.errors import SelfInstructError
from selfinstruct.identity import RunIdentityError

RESUME_HINT = "interrupted: everything accepted so far is saved; rerun the same command to resume"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# One module per command group; each registers its commands on `cli` when imported.
COMMAND_MODULES = ("generate", "data", "train", "review", "report", "sweep", "judge", "export")


# The original release's scripts, by name: `selfinstruct bootstrap_instructions.py --batch_dir
# ...` runs the same step as its `python self_instruct/bootstrap_instructions.py --batch_dir ...`.
ORIGINAL_SCRIPTS = {
    "bootstrap_instructions": "generate-instructions",
    "identify_clf_or_not": "identify-clf",
    "generate_instances": "generate-instances",
    "prepare_for_finetuning": "prepare",
}


class _Commands(click.Group):
    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        name = ORIGINAL_SCRIPTS.get(name.removesuffix(".py"), name)
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings=CONTEXT)
@click.version_option(package_name="selfinstruct")
def cli() -> None:
    """Self-Instruct: grow an instruction-tuning dataset from a few seed tasks, on any model."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"selfinstruct.cli.{_name}")


@functools.cache
def _flags() -> dict[str, str]:
    """Each option's Python name (the library setting it sets) -> its flag, over every command."""
    flags: dict[str, str] = {}

    def walk(command: click.Command) -> None:
        for param in command.params:
            longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
            if isinstance(param, click.Option) and longs and param.name:
                flags.setdefault(param.name, longs[0])
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(cli)
    # The library's `model` is a spec string or a Model; the option that takes it is named for
    # the spec.
    flags.setdefault("model", flags["model_spec"])
    return flags


def for_the_command_line(message: str) -> str:
    """A library message as the command line says it: each `setting` named by its flag."""
    flags = _flags()
    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: flags.get(m[1], m[1]), message)


_TERMINATED = False


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (kill, a scheduler's stop) ends the command as Ctrl-C does: through whatever
    handles SIGINT now (asyncio's, which lets the step record what it did), then one line."""
    global _TERMINATED
    _TERMINATED = True
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point: typed errors become one line on stderr and an exit code."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=argv, prog_name="selfinstruct", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo(("terminated: " if _TERMINATED else "") + RESUME_HINT, err=True)
        sys.exit(143 if _TERMINATED else 130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except RunIdentityError as e:
        from selfinstruct.cli.options import WAYS_OUT, setting_flag

        names = {d.setting: setting_flag(d.setting) for d in e.differences}
        click.echo(f"error: {e.render(names, WAYS_OUT)}", err=True)
        sys.exit(e.exit_code)
    except SelfInstructError as e:
        click.echo(f"error: {for_the_command_line(str(e))}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        click.echo(f"error: {e.filename or ''}: {e.strerror or e}", err=True)
        sys.exit(1)
