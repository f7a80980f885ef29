"""A run's identity: the settings that decide which data it makes, fixed on its first write.

A run folder's steps append to their files across invocations, so a rerun with another seed
set or another similarity threshold would silently mix data made two ways. The identity stops
that: the first write into a folder records the seed tasks (a copy beside the data, and their
hash), the model, the seed, and each step's data-changing settings (`STEP_FIELDS`) in run.json;
every later invocation compares what it was asked for with that record before any model call.
A difference is refused (`RunIdentityError`, naming each setting) unless the caller chooses to
continue anyway, and every invocation is appended to run.json's history with what it changed.

Settings that change only how fast or how far a run goes (concurrency, budgets, timeouts,
endpoints, the number of instructions to reach) are not part of the identity. A setting a caller
leaves out takes the run's recorded value (`RunIdentity.defaults`), so a shorter command line
resumes the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError
from selfinstruct.records import SeedTask

# The settings of each step that change which data it makes, by their settings-dataclass names.
# Adding a data-changing setting to a step is one line here (tests/test_identity.py checks that
# each name is a field of the step's settings).
STEP_FIELDS: dict[str, tuple[str, ...]] = {
    "instructions": (
        "num_prompt_instructions",
        "num_machine_in_prompt",
        "classification_only",
        "similarity_threshold",
        "lowercase_rest",
        "lag",  # prompt i is built from the pool as it stood after request i - lag
        "language",  # the similarity tokenizer, threshold and filters
        "sampling",
    ),
    "classify": ("lenient_labels", "sampling"),
    "instances": ("max_instances_to_generate",),
}
# Settings recorded as the run's choice, the default for a later invocation that leaves them
# out, but free to change: step 4 rewrites its files whole each time, so nothing mixes.
CHOICE_FIELDS: dict[str, tuple[str, ...]] = {"prepare": ("include_seed_tasks",)}
# Run-wide parts of the identity, and the steps whose data each one shapes.
RUN_FIELDS: dict[str, tuple[str, ...]] = {
    "model": ("instructions", "classify", "instances"),
    "seed": ("instructions", "classify", "instances"),
    "seed_tasks": ("instructions", "prepare"),
    "templates": ("instructions", "classify", "instances"),
}
# Continue a run whose recorded identity differs: refuse (the default), or carry on and record
# the change in the history.
REFUSE, CONTINUE = "refuse", "continue"


@dataclass(frozen=True)
class Difference:
    """One setting asked for that differs from the run's record."""

    setting: str  # a settings-field name, or a run-wide part ("seed_tasks", "model", ...)
    step: str | None  # None for a run-wide part
    recorded: Any
    requested: Any

    def describe(self, name: str | None = None) -> str:
        return f"{name or self.setting} {_show(self.requested)} (the run: {_show(self.recorded)})"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RunIdentityError(ConfigError):
    """A rerun asked for data-changing settings other than those the run was made with."""

    def __init__(self, folder: Path, differences: list[Difference], names: Any = None):
        self.folder = folder
        self.differences = differences
        super().__init__(self.render(names or {}))

    def render(self, names: dict[str, str], ways_out: str | None = None) -> str:
        """One line; `names` maps setting names to how the caller spells them (CLI flags)."""
        said = "; ".join(d.describe(names.get(d.setting)) for d in self.differences)
        return f"{self.folder}: made with other settings: {said}. " + (
            ways_out
            or "Use another run folder, or pass changed_settings='continue' to mix them"
            " (recorded in run.json's history)"
        )


def _show(value: Any) -> str:
    if isinstance(value, dict) and "sha256" in value:  # seed tasks
        return f"{value.get('source')} ({value.get('count')} tasks, sha256 {value['sha256'][:12]})"
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def _json(value: Any) -> Any:
    """A setting's value as run.json stores it (tuples as lists, paths as strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=str))


def step_identity(step: str, settings: Any) -> dict[str, Any]:
    """The data-changing settings (and recorded choices) of one step, as stored."""
    names = STEP_FIELDS.get(step, ()) + CHOICE_FIELDS.get(step, ())
    return {name: _json(getattr(settings, name)) for name in names}


def seeds_identity(seeds: list[SeedTask], source: str) -> dict[str, Any]:
    """The seed tasks as the identity records them: where they came from, how many, and a hash
    of their content (so the same tasks in a moved or renamed file are the same identity)."""
    text = "".join(json.dumps(t.to_dict(), sort_keys=True) + "\n" for t in seeds)
    return {
        "source": source,
        "count": len(seeds),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }


def seeds_source(path: str | Path, folder: Path) -> str:
    """A seed file's path as stored: relative to the run folder, so any working directory (and
    a moved run folder with its seed file beside it) finds it."""
    return os.path.relpath(Path(path).resolve(), folder.resolve())


def templates_identity() -> str:
    """A hash of the package's prompt templates (an upgrade that changes them changes data)."""
    from importlib import resources

    digest = hashlib.sha256()
    files = resources.files("selfinstruct.prompts")
    for name in sorted(p.name for p in files.iterdir() if p.name.endswith(".txt")):
        digest.update(name.encode() + b"\0" + files.joinpath(name).read_bytes())
    return digest.hexdigest()[:16]


def model_identity(spec: str | None, info: Any = None) -> str:
    """The model as far as it changes the data: backend, name, API and adapter; not the
    endpoint, key, batching or context size."""
    if spec is None:
        name = f"{info.backend}:{info.name}?api={info.api}"
        return name + (f"&lora={info.details['lora']}" if info.details.get("lora") else "")
    from selfinstruct.models.spec import parse_spec

    parsed = parse_spec(spec)
    kept = {"api": parsed.api}
    kept.update({k: v for k, v in parsed.options.items() if k in ("lora", "lora_scale")})
    text = parsed.backend + (f":{parsed.name}" if parsed.name else "")
    return text + "?" + "&".join(f"{k}={v}" for k, v in kept.items())


class RunIdentity:
    """The identity part of a run.json (a dict, read and changed in place)."""

    def __init__(self, data: dict[str, Any]):
        self.data = data
        if "identity" not in data and data.get("config"):
            data["identity"] = _from_config(data["config"])
        self.recorded: dict[str, Any] = data.setdefault("identity", {})

    def defaults(self, step: str) -> dict[str, Any]:
        """A step's recorded scalar settings, for the options a caller leaves out."""
        stored = self.recorded.get("steps", {}).get(step, {})
        return {k: v for k, v in stored.items() if not isinstance(v, dict | list)}

    def differences(self, proposed: dict[str, Any], steps: list[str]) -> list[Difference]:
        """Each part of `proposed` (run-wide parts and `steps`) that differs from the record.
        A part never recorded differs from nothing: it is recorded on this write."""
        out = []
        for part, users in RUN_FIELDS.items():
            if part not in proposed or part not in self.recorded:
                continue
            if not any(s in users for s in steps):
                continue
            old, new = self.recorded[part], proposed[part]
            same = old.get("sha256") == new.get("sha256") if part == "seed_tasks" else old == new
            if not same:
                out.append(Difference(part, None, old, new))
        for step in steps:
            old = self.recorded.get("steps", {}).get(step, {})
            new = proposed.get("steps", {}).get(step, {})
            for name in STEP_FIELDS.get(step, ()):
                if name in old and name in new and old[name] != new[name]:
                    out.append(Difference(name, step, old[name], new[name]))
        return out

    def merge(self, proposed: dict[str, Any], steps: list[str]) -> None:
        """Make `proposed` the record for the given steps and the run-wide parts they use."""
        for part, users in RUN_FIELDS.items():
            if part in proposed and any(s in users for s in steps):
                self.recorded[part] = proposed[part]
        for step in steps:
            if step in proposed.get("steps", {}):
                self.recorded.setdefault("steps", {})[step] = {
                    **self.recorded.get("steps", {}).get(step, {}),
                    **proposed["steps"][step],
                }


def _from_config(config: dict[str, Any]) -> dict[str, Any]:
    """The identity of a run made before identities were recorded, as far as its run.json's
    per-step configuration tells it (the seed tasks' content it cannot tell)."""
    identity: dict[str, Any] = {"steps": {}}
    for step, names in STEP_FIELDS.items():
        stored = config.get(step) or {}
        identity["steps"][step] = {n: stored[n] for n in names if n in stored}
        if isinstance(stored.get("model"), str) and "model" not in identity:
            try:
                identity["model"] = model_identity(stored["model"])
            except ConfigError:
                pass
    return identity


def check_choice(changed_settings: str) -> str:
    if changed_settings not in (REFUSE, CONTINUE):
        raise ConfigError(
            f"changed_settings: {changed_settings!r} is not one of {REFUSE!r}, {CONTINUE!r}"
        )
    return changed_settings
