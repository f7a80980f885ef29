"""Publish a run as a dataset: Parquet that `datasets.load_dataset(DIR)` reads with no arguments,
a dataset card, the run's record, and an upload to the Hugging Face Hub.

    from selfinstruct.export import export_dataset, push_to_hub

    result = export_dataset("runs/x", "runs/x-dataset", license="cc-by-4.0", test_size=0.1)
    url = push_to_hub(result.folder, "me/my-self-instruct", private=True)

The folder holds ``data/<config>/<split>-00000-of-00001.parquet`` for each config
(`tables.read_tables`), ``README.md`` (the card: `card`), ``run.json`` (and the seed file when the
run used its own), and ``figures/`` (the report's PNG figures). It is built beside its target
and moved into place whole, so a failed export leaves the previous one as it was.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError, SelfInstructError
from selfinstruct.export.card import (
    HUB_LICENSES,
    CardInput,
    SeedInfo,
    body,
    check_language,
    metadata,
)
from selfinstruct.export.hub import push_to_hub, render_card
from selfinstruct.export.tables import Table, read_tables, write_parquet
from selfinstruct.runfolder import RunFolder, RunRecord

__all__ = ["LICENSE_NEEDED", "ExportResult", "export_dataset", "push_to_hub"]

Progress = Callable[[str], None]
CARD_FILE = "README.md"
RUN_FILE = "run.json"
SEED_FILE = "seed_tasks.jsonl"
LICENSE_NEEDED = (
    "choose the dataset's license (a Hub license id such as cc-by-4.0, apache-2.0, mit, odc-by"
    " or other): the card notes the seed tasks' license and the model's terms of use, but only"
    " you can license the data"
)
BUILT_IN_SEEDS_LICENSE = (
    "Apache-2.0, as the selfinstruct package they ship with (written for the project; not the"
    " paper's seed tasks)."
)


@dataclass
class ExportResult:
    """What `export_dataset` wrote."""

    folder: Path
    rows: dict[str, dict[str, int]]  # config -> split -> rows
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things the user should know

    @property
    def card(self) -> Path:
        return self.folder / CARD_FILE


def export_dataset(
    run: str | Path | RunFolder,
    out: str | Path,
    *,
    license: str | None,
    languages: list[str] | None = None,
    test_size: float | None = None,
    seed: int = 0,
    pretty_name: str | None = None,
    repo_id: str | None = None,
    figures: bool = True,
    progress: Progress | None = None,
) -> ExportResult:
    """Write the dataset folder `out` from the run folder `run`.

    `license` is the dataset's license id on the Hub (cc-by-4.0, apache-2.0, mit, other, ...):
    required, since only the publisher can choose it. `languages` default to the run's.
    `test_size` (a share of the instructions below 1, else their number) adds a seeded test
    split with no instruction in both. `figures` draws the report's figures into the card.
    """
    say = progress or (lambda _m: None)
    license = _check_license(license, say)
    rf = RunFolder.of(run)
    if not rf.path.is_dir():
        raise ConfigError(f"{rf.path}: no such run folder")
    # The folder's lock: no step appends to a file while it is read, so the counts agree.
    with rf.lock():
        record = rf.run_record()
        run_json = record.data
        seeds, seed_file = _seed_info(record)
        card = CardInput(
            pretty_name=pretty_name or _default_name(run_json, repo_id),
            license=license,
            languages=_languages(languages, run_json),
            tables=read_tables(rf, test_size=test_size, seed=seed),
            sizes={},
            run=run_json,
            seeds=seeds,
            calibration=_read_json(rf.calibration_report),
            repo_id=repo_id,
            folder=None if repo_id else str(out),
        )
        result = ExportResult(Path(out), _tables_rows(card.tables))
        with _staging(Path(out)) as stage:
            card.sizes = {t.config: write_parquet(t, stage) for t in card.tables}
            card.figures = result.figures = _figures(rf, stage / "figures", say) if figures else []
            card.config_files = _copy_record(rf, seed_file, stage, result.notes)
            text = render_card(metadata(card), body(card))
            (stage / CARD_FILE).write_text(text, encoding="utf-8")
    return result


# --- checks and defaults --------------------------------------------------------------------


def _check_license(license: str | None, say: Progress) -> str:
    if not license or not license.strip():
        raise ConfigError(f"license: {LICENSE_NEEDED}")
    license = license.strip().lower()
    if not all(ch.isalnum() or ch in "-._" for ch in license):
        raise ConfigError(f"license: {license!r} is not a license id (e.g. cc-by-4.0, mit)")
    if license not in HUB_LICENSES:
        say(f"warning: license: {license!r} is not a Hub license id known here; the Hub may refuse")
    return license


def _languages(given: list[str] | None, run_json: dict[str, Any]) -> list[str]:
    """The languages given, else the run's `language` setting, else English: before a language
    setting existed, every prompt of the pipeline was English."""
    found: list[str] = list(given or [])
    if not found:
        for config in (run_json.get("config") or {}).values():
            value = config.get("language") if isinstance(config, dict) else None
            found += [value] if isinstance(value, str) else list(value or [])
    codes = list(dict.fromkeys(code.strip().lower() for code in found if code)) or ["en"]
    for code in codes:
        try:
            check_language(code)
        except ValueError:
            raise ConfigError(
                f"language: {code!r} is not a language code (ISO 639-1 or 639-3, e.g. en, fr)"
            ) from None
    return codes


def _default_name(run_json: dict[str, Any], repo_id: str | None) -> str:
    if repo_id:
        return repo_id.rsplit("/", 1)[-1]
    model = (run_json.get("model") or {}).get("name")
    return f"Self-Instruct data from {model}" if model else "Self-Instruct data"


def _seed_info(record: RunRecord) -> tuple[SeedInfo, Path | None]:
    """The seed tasks the run was made from, and their file when it is not the built-in set."""
    from selfinstruct import seeds

    if "instructions" not in (record.steps or {}):
        return SeedInfo("seed tasks the run folder does not record", "unknown"), None
    recorded = record.seed_file
    if not recorded:
        tasks = seeds.default()
        info = SeedInfo("the built-in seed tasks of selfinstruct", BUILT_IN_SEEDS_LICENSE)
        return _with_tasks(info, tasks), None
    path = record.find_seed_file()
    info = SeedInfo(
        f"the seed file `{Path(recorded).name}`",
        "that of the seed file's authors (not recorded by the run); the paper's own 175 seed"
        " tasks are Apache-2.0.",
    )
    if path is None:
        return info, None
    try:
        return _with_tasks(info, seeds.load_seed_tasks(path)), path
    except SelfInstructError:
        return info, path


def _with_tasks(info: SeedInfo, tasks: list[Any]) -> SeedInfo:
    info.count = len(tasks)
    info.classification = sum(t.is_classification for t in tasks)
    info.examples = [t.instruction for t in tasks[:5]]
    return info


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- the folder -----------------------------------------------------------------------------


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A fresh folder beside `out`, moved into its place when the block succeeds. `out` may be
    missing, empty or an earlier export; anything else is refused rather than replaced."""
    if out.exists() and not _replaceable(out):
        raise ConfigError(
            f"{out}: exists and is not a dataset folder written by 'selfinstruct export';"
            " choose a new or empty folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield stage
        old = out.with_name(stage.name + ".old")
        if out.exists():
            out.rename(old)
        stage.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _replaceable(out: Path) -> bool:
    if not out.is_dir():
        return False
    names = {p.name for p in out.iterdir()}
    return not names or ({CARD_FILE, "data"} <= names and (out / "data" / "default").is_dir())


def _copy_record(rf: RunFolder, seed_file: Path | None, stage: Path, notes: list[str]) -> list[str]:
    copied = []
    if rf.run_file.exists():
        shutil.copyfile(rf.run_file, stage / RUN_FILE)
        copied.append(RUN_FILE)
    if seed_file is not None:
        shutil.copyfile(seed_file, stage / SEED_FILE)
        copied.append(SEED_FILE)
        notes.append(
            f"included the run's seed file {seed_file} as {SEED_FILE}: check you may share it"
        )
    return copied


def _figures(rf: RunFolder, folder: Path, say: Progress) -> list[str]:
    """The report's figures as PNG: drawn afresh, else those of an earlier report, else none."""
    from selfinstruct.report import build_report

    with tempfile.TemporaryDirectory() as tmp:
        try:
            drawn = build_report(rf, out_dir=tmp, sample_rows=0, progress=lambda _m: None)
            pngs = [png for png, _ in drawn.figures.values()]
        except SelfInstructError as e:
            say(f"warning: figures: the report could not be drawn ({e}); using any earlier one")
            pngs = sorted(rf.report_dir.glob("fig*.png"))
        folder.mkdir(parents=True, exist_ok=True)
        for png in pngs:
            shutil.copyfile(png, folder / png.name)
    return sorted(png.name for png in pngs)


def _tables_rows(tables: list[Table]) -> dict[str, dict[str, int]]:
    return {t.config: {s: len(r) for s, r in t.splits.items()} for t in tables}
