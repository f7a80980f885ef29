"""Replay step 1's ROUGE-L filter at other thresholds, without any model call.

Step 1 decides on each candidate in turn: the filters first (on the text alone), then the
similarity test against the pool (seeds and every instruction kept so far). The candidates that
reached the similarity test are the kept ones and those rejected as `too_similar`; with
`candidate_idx` (written by step 1 on both files) they can be put back in the order they were
decided, and the greedy filter run again over them at any threshold:

    rows = sweep("runs/x", [0.5, 0.6, 0.7, 0.8])
    for row in rows:
        print(row.threshold, row.kept, row.kept - row.run_kept)

At the run's own threshold the replay keeps exactly the run's instructions (a check that the
seeds and files are the run's). What a replay cannot know: the candidates the run never
generated. A run stops at its target; at a stricter threshold it would have gone on asking for
more, and at a looser one it would have stopped sooner and shown the model other prompts (the
prompt lists pool instructions), so every later candidate would have been different. The
figures are therefore "what this run's candidates give", not "what a run at that threshold
would give". Candidates dropped by the other filters, cut by the length limit, or left over
once the target was reached (`surplus`, never compared) are not replayed.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError
from selfinstruct.language import recorded as recorded_language
from selfinstruct.language import tokenizer_of
from selfinstruct.records import SeedTask
from selfinstruct.runfolder import RunFolder, RunRecord
from selfinstruct.similarity import greedy_dedup

__all__ = ["SweepInput", "SweepRow", "load_sweep_input", "sweep"]

DEFAULT_THRESHOLD = 0.7  # step 1's default, for a run.json that does not record it

Seeds = str | Path | Sequence[SeedTask] | Sequence[str]


@dataclass(frozen=True)
class SweepRow:
    """The greedy filter replayed at one threshold."""

    threshold: float
    candidates: int  # candidates replayed (the run's kept + too_similar)
    kept: int  # kept at this threshold
    run_kept: int  # kept by the run (at its own threshold)
    added: int  # kept here, rejected by the run
    removed: int  # kept by the run, rejected here
    # Candidates needed to reach the run's target at this threshold (None: never reached, or
    # the run's target is unknown).
    to_target: int | None
    is_run_threshold: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "candidates": self.candidates,
            "kept": self.kept,
            "run_kept": self.run_kept,
            "added": self.added,
            "removed": self.removed,
            "to_target": self.to_target,
            "is_run_threshold": self.is_run_threshold,
        }


@dataclass
class SweepInput:
    """What a sweep replays: the seeds, the candidates in decision order, the run's choices."""

    seeds: list[str]
    seed_source: str
    candidates: list[str]
    kept_by_run: list[bool]
    run_threshold: float
    target: int | None  # the run's num_instructions, when run.json records it
    has_rejected_file: bool
    language: str = "en"  # step 1's language, whose tokenizer the filter used

    def row(self, threshold: float, *, is_run_threshold: bool = False) -> SweepRow:
        result = greedy_dedup(
            self.candidates, threshold, initial=self.seeds, tokenizer=tokenizer_of(self.language)
        )
        kept_here = set(result.kept)
        run_kept = {i for i, k in enumerate(self.kept_by_run) if k}
        to_target = None
        if self.target is not None and len(result.kept) >= self.target:
            to_target = result.kept[self.target - 1] + 1
        return SweepRow(
            threshold=threshold,
            candidates=len(self.candidates),
            kept=len(kept_here),
            run_kept=len(run_kept),
            added=len(kept_here - run_kept),
            removed=len(run_kept - kept_here),
            to_target=to_target,
            is_run_threshold=is_run_threshold,
        )


def sweep(
    run: str | Path | RunFolder,
    thresholds: Iterable[float],
    *,
    seeds: Seeds | None = None,
) -> list[SweepRow]:
    """The run's similarity filter replayed at each threshold (in the order given).

    `seeds`: a seed file, seed tasks or instruction texts; by default the seed file recorded in
    run.json, else the default seed set (classification seeds only when the run used only
    those). Raises DataFileError when the run folder has no step-1 file.
    """
    data = load_sweep_input(run, seeds=seeds)
    return [data.row(t, is_run_threshold=t == data.run_threshold) for t in thresholds]


def load_sweep_input(run: str | Path | RunFolder, *, seeds: Seeds | None = None) -> SweepInput:
    """Read a run folder for a sweep: see `sweep`."""
    rf = RunFolder.of(run)
    record = rf.run_record()
    threshold = record.similarity_threshold or DEFAULT_THRESHOLD
    seed_texts, source = _seed_texts(record, seeds)
    candidates: list[str] = []
    kept: list[bool] = []
    for decision in rf.read_decisions():
        if decision["kept"] or decision.get("reason") == "too_similar":
            text = decision.get("instruction")
            if isinstance(text, str):
                candidates.append(text)
                kept.append(bool(decision["kept"]))
    return SweepInput(
        seeds=seed_texts,
        seed_source=source,
        candidates=candidates,
        kept_by_run=kept,
        run_threshold=threshold,
        target=record.num_instructions,
        has_rejected_file=rf.rejected.exists(),
        language=recorded_language(record.data) or "en",
    )


def _seed_texts(record: RunRecord, seeds: Seeds | None) -> tuple[list[str], str]:
    from selfinstruct import seeds as seed_sets

    tasks: list[SeedTask] | None = None
    if seeds is None:
        if record.seed_file is None:
            code = recorded_language(record.data) or "en"
            tasks, source = seed_sets.default(code), "the default seed set"
            source += "" if code == "en" else f" ({code})"
        else:
            path = record.find_seed_file()
            if path is None:
                raise ConfigError(
                    f"{record.path} names the seed file {record.seed_file!r}, which is not"
                    " there any more; give the seed tasks"
                )
            tasks, source = seed_sets.load_seed_tasks(path), f"{path} (from run.json)"
    elif isinstance(seeds, str | Path):
        tasks, source = seed_sets.load_seed_tasks(seeds), str(seeds)
    elif all(isinstance(s, SeedTask) for s in seeds):
        tasks, source = list(seeds), "the seed tasks given"  # type: ignore[arg-type]
    else:
        return [str(s) for s in seeds], "the instructions given"
    if record.classification_only:
        tasks = [t for t in tasks if t.is_classification]
        source += ", classification tasks only (as the run)"
    return [t.instruction for t in tasks], source


def parse_thresholds(text: str) -> list[float]:
    """'0.5,0.6,0.7' -> [0.5, 0.6, 0.7]; ConfigError naming the option otherwise."""
    out = []
    for part in shlex.split(text.replace(",", " ")):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"`thresholds`: {part!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"`thresholds`: {value} is outside [0, 1]")
        out.append(value)
    if not out:
        raise ConfigError("`thresholds`: give at least one threshold, e.g. 0.5,0.6,0.7,0.8")
    return out
