"""No import runs back up the layers (docs/architecture.md draws them).

Each module of the package sits in one layer; it may import modules of its own layer and of the
layers below, never above. The CLI is the top: nothing in the library imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "selfinstruct"

# Lowest first. A module not listed here fails the test, so that a new one is placed on purpose.
LAYERS: list[set[str]] = [
    {"errors", "io", "records"},
    {"models", "similarity", "filters", "prompts", "formats", "runfolder", "progress", "seeds"},
    {"engine"},
    {"steps", "runfile", "finetune", "dedup"},
    {"pipeline", "evaluation", "judge", "report", "verbs", "review", "sweep", "decontaminate"},
    {"cli"},
    {"__init__"},
]


def _top(module: str) -> str | None:
    """'selfinstruct.steps.classify' -> 'steps'."""
    parts = module.split(".")
    if parts[0] != "selfinstruct":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"selfinstruct.{name} is in no layer of tests/test_layers.py")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "selfinstruct":
                found.update(f"selfinstruct.{a.name}" for a in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {top for m in found if (top := _top(m)) is not None}


def test_no_import_runs_back_up_the_layers() -> None:
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0].removesuffix(".py")
        for imported in _imports(path):
            if imported == own:
                continue
            if _layer(imported) > _layer(own):
                offences.append(f"{rel} imports selfinstruct.{imported}")
    assert not offences, "\n".join(offences)


def test_every_module_has_a_layer() -> None:
    names = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.glob("*")}
    names = {n for n in names if not n.startswith("__pycache__") and n not in ("static",)}
    for name in names:
        if (PACKAGE / name).is_dir() and not (PACKAGE / name / "__init__.py").exists():
            continue
        _layer(name)
