"""No import runs back up the layers (docs/architecture.md draws them), no step imports another
step, and no two modules import each other.

Each module of the package sits in one layer; it may import modules of its own layer and of the
layers below, never above. The CLI is the top: nothing in the library imports it. Relative
imports (`from .errors import ...`) count as what they name.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "selfinstruct"

# Lowest first. A module not listed here fails the test, so that a new one is placed on purpose.
LAYERS: list[set[str]] = [
    {"errors", "io", "records", "validation"},
    {"models", "similarity", "filters", "prompts", "formats", "runfolder", "progress", "seeds"}
    | {"language"}  # the tokenizer for every script, detection, per-language settings
    | {"verbs"},  # the verb/object parse: a leaf, used by the report only
    {"engine", "batchapi"},
    {"steps", "runfile", "identity", "finetune", "dedup"},
    {
        "pipeline",
        "evaluation",
        "judge",
        "report",
        "review",
        "sweep",
        "decontaminate",
        "forecast",
        "export",
    },
    {"cli"},
    {"__init__"},
]
# The modules of steps/ that are steps of the method: none may import another. The others
# (`__init__`, `common`, `parsing`) are what the steps share.
STEPS = {"instructions", "classify", "instances", "prepare"}


def _module_name(path: Path) -> str:
    """src/selfinstruct/steps/classify.py -> 'selfinstruct.steps.classify'."""
    parts = ["selfinstruct", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names, relative ones resolved against `path`."""
    if node.level == 0:
        return node.module or ""
    here = _module_name(path).split(".")
    base = here if _is_package(path) else here[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _imported_modules(path: Path, *, top_level_only: bool = False) -> set[str]:
    """The package's modules a file imports (`from a import b` counts as `a.b` when that is a
    module, else as `a`); with `top_level_only`, the imports that run when it is imported."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            module = _resolve(path, node)
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if _exists(sub) else module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "selfinstruct" or m.startswith("selfinstruct.")}


def _top(module: str) -> str:
    """'selfinstruct.steps.classify' -> 'steps'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"selfinstruct.{name} is in no layer of tests/test_layers.py")


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_import_runs_back_up_the_layers() -> None:
    offences = []
    for path in _files():
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0].removesuffix(".py")
        for imported in {_top(m) for m in _imported_modules(path)}:
            if imported != own and _layer(imported) > _layer(own):
                offences.append(f"{rel} imports selfinstruct.{imported}")
    assert not offences, "\n".join(offences)


def test_relative_imports_are_resolved() -> None:
    """The check above sees `from .x import y` (dedup.py has such imports)."""
    dedup = PACKAGE / "dedup.py"
    assert "selfinstruct.errors" in _imported_modules(dedup)
    node = ast.parse("from ..records import Example").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert _resolve(PACKAGE / "steps" / "prepare.py", node) == "selfinstruct.records"
    assert _resolve(PACKAGE / "steps" / "__init__.py", node) == "selfinstruct.records"


def test_no_step_imports_another() -> None:
    offences = []
    for name in sorted(STEPS):
        path = PACKAGE / "steps" / f"{name}.py"
        for imported in _imported_modules(path):
            other = imported.split(".")[2:3]
            if imported.startswith("selfinstruct.steps.") and other[0] in STEPS - {name}:
                offences.append(f"steps/{name}.py imports {imported}")
    assert not offences, "\n".join(offences)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that comes back to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _with_parents(module: str) -> set[str]:
    """'selfinstruct.judge.rubric' -> itself and 'selfinstruct.judge': importing a module runs
    its packages' `__init__` first (the root package's, the public API, is left out)."""
    parts = module.split(".")
    return {".".join(parts[:k]) for k in range(2, len(parts) + 1)}


def test_no_import_cycle() -> None:
    """The imports a module runs when it is imported never lead back to it (a package's
    `__init__` importing its own modules is how a package is built, and is left out)."""
    graph: dict[str, set[str]] = {}
    for path in _files():
        me = _module_name(path)
        imported = set().union(*map(_with_parents, _imported_modules(path, top_level_only=True)))
        graph[me] = {
            m for m in imported
            if m != me and not (_is_package(path) and m.startswith(me + "."))
            and not me.startswith(m + ".")  # a module's own packages are already running
        }  # fmt: skip
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_every_module_has_a_layer() -> None:
    names = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.glob("*")}
    names = {n for n in names if not n.startswith("__pycache__") and n not in ("static",)}
    for name in names:
        if (PACKAGE / name).is_dir() and not (PACKAGE / name / "__init__.py").exists():
            continue
        _layer(name)
