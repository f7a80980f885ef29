"""Progress bars, warnings and end-of-step summaries, on stderr so that stdout stays data."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text


class Bar(Protocol):
    def advance(self, n: int = 1) -> None: ...
    def note(self, counters: Mapping[str, Any]) -> None: ...


class Reporter:
    """Shows progress; `quiet` keeps only warnings."""

    def __init__(self, *, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True, highlight=False)

    def warn(self, message: str) -> None:
        # The message is data (file names, instructions): never read as rich markup.
        self.console.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False)

    def info(self, message: str) -> None:
        # Never wrapped: a path or a command to copy must stay on one line.
        if not self.quiet:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    @contextmanager
    def bar(self, description: str, total: int | None, completed: int = 0) -> Iterator[Bar]:
        if self.quiet:
            yield _SilentBar()
            return
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[counters]}"),
            console=self.console,
            transient=False,
        )
        with progress:
            task = progress.add_task(description, total=total, completed=completed, counters="")
            yield _RichBar(progress, task)

    def summary(self, title: str, rows: list[tuple[str, Any]]) -> None:
        if self.quiet:
            return
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("what")
        table.add_column("value", justify="right")
        for what, value in rows:
            table.add_row(what, str(value))
        self.console.print(table)


class _SilentBar:
    def advance(self, n: int = 1) -> None:
        pass

    def note(self, counters: Mapping[str, Any]) -> None:
        pass


class _RichBar:
    def __init__(self, progress: Progress, task: Any):
        self._progress = progress
        self._task = task

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def note(self, counters: Mapping[str, Any]) -> None:
        text = " ".join(f"{k} {v}" for k, v in counters.items() if v)
        self._progress.update(self._task, counters=text)
