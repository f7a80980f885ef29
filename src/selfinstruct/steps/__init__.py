"""The method, one module per step. Each step reads the previous step's file from the run
folder, appends its own records as they are accepted, and resumes where it stopped."""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from selfinstruct.engine import Engine, EngineSettings, EngineStats, run_sync
from selfinstruct.errors import ConfigError
from selfinstruct.models.base import Model, Usage
from selfinstruct.progress import Reporter

S = TypeVar("S")


def check_settings(cls: type, options: Mapping[str, Any]) -> None:
    """ConfigError naming the first of `options` that is not a field of the settings class
    `cls` (and the field it was probably meant to be), before anything runs."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in options:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (it has: {', '.join(names)})"
            raise ConfigError(f"{cls.__name__} has no setting {key!r}{hint}")


def make_settings(cls: type[S], **options: Any) -> S:
    """`cls(**options)`, a misspelled name a ConfigError rather than a TypeError."""
    check_settings(cls, options)
    return cls(**options)


@dataclass
class StepContext:
    """What every model-calling step needs, whatever backend or storage it runs on.

    With a `runner`, every step of a pipeline runs on that one event loop, so HTTP connections
    are reused from step to step; without one, each call gets its own loop and the model's
    connections are released when it ends.
    """

    model: Model
    engine: EngineSettings = field(default_factory=EngineSettings)
    reporter: Reporter = field(default_factory=lambda: Reporter(quiet=True))
    runner: asyncio.Runner | None = None
    # The reports the step has started, so that the usage of a step stopped halfway (Ctrl-C,
    # SIGTERM, a crash) can still be recorded.
    started: list[StepReport] = field(default_factory=list)

    def new_report(self, step: str, **fields: Any) -> StepReport:
        report = StepReport(step, **fields)
        self.started.append(report)
        return report

    #: builds the engine a step drives, from (step name, usage, jitter seed); None: the online
    #: `Engine`. Batch API mode puts a `BatchEngine` here: same interface, so steps are unchanged.
    engines: Callable[[str, Usage, int | None], Any] | None = None

    def make_engine(self, step: str, usage: Usage, jitter_seed: int | None = None) -> Any:
        """The engine for one step's requests (`Engine` or one with its interface)."""
        if self.engines is not None:
            return self.engines(step, usage, jitter_seed)
        return Engine(self.model, self.engine, usage=usage, jitter_seed=jitter_seed)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self.runner is not None:
            return self.runner.run(coro)
        return run_sync(coro, release=self.model)


@dataclass
class StepReport:
    """Counts of one step's run (this invocation), merged into run.json."""

    step: str
    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    engine: EngineStats | None = None
    outputs: list[str] = field(default_factory=list)
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "counts": dict(self.counts),
            "dropped": dict(self.dropped),
            "usage": self.usage.to_dict(),
            "outputs": list(self.outputs),
            "complete": self.complete,
        }
        if self.engine is not None:
            out["engine"] = self.engine.to_dict()
        return out

    def rows(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [(k.replace("_", " "), v) for k, v in self.counts.items()]
        rows += [
            (f"dropped: {k.replace('_', ' ')}", v) for k, v in sorted(self.dropped.items()) if v
        ]
        if self.engine is not None:
            e = self.engine
            rows.append(("requests sent", e.requests))
            for reason, n in sorted(e.retries.items()):
                rows.append((f"retried: {reason}", n))
            for reason, n in sorted(e.failures.items()):
                rows.append((f"requests failed: {reason}", n))
            if e.budget_stop:
                rows.append(("stopped by budget", e.budget_stop))
            batch = getattr(e, "batch", None)  # Batch API mode
            if batch is not None:
                rows.append(("batches created", batch.batches_created))
                if batch.lines_reused:
                    rows.append(("answers from earlier batches", batch.lines_reused))
                for code, n in sorted(batch.failed_lines.items()):
                    rows.append((f"batch lines failed: {code}", n))
        if self.usage.requests:
            rows.append(("tokens (prompt + completion)", f"{self.usage.total_tokens:,}"))
        return rows


def response_metadata(
    model: Model, prompt: str, text: str, finish_reason: str, usage: dict[str, int]
) -> dict[str, Any]:
    """Per-response metadata in the original release's shape (prompt, response.choices, ...)."""
    from datetime import datetime

    info = model.info
    return {
        "prompt": prompt,
        "response": {"choices": [{"text": text, "finish_reason": finish_reason}]},
        "created_at": str(datetime.now()),
        "model": f"{info.backend}:{info.name}",
        "usage": usage,
    }


def finish_reason_of(metadata: dict[str, Any]) -> str | None:
    """The finish reason stored by us or by the original scripts (response.choices[0])."""
    try:
        return metadata["response"]["choices"][0]["finish_reason"]
    except (KeyError, IndexError, TypeError):
        return None
