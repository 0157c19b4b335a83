"""The import graph of ift/ and analysis/, read from the source with `ast`: no circle and a plain engine.

Every import counts, wherever it sits: at the top, inside a function (a lazy import hides a circle, it does
not remove it) or under `if TYPE_CHECKING:`. An import of a package counts as an import of its __init__; an
import of a submodule's parent package by the submodule itself is not counted (Python runs that one anyway).
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

try:
    import tomllib  # Python >= 3.11
except ImportError:
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"].items()) if tomllib else []
PACKAGES = ("ift", "analysis")
# the experiment layer's libraries: the engine (ift/ minus ift/experiment/) must run without them
EXPERIMENT_ONLY = ("hydra", "wandb", "submitit")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imported_names(name: str, path: Path) -> set[str]:
    """Every module name an import statement of this file names (absolute, relative resolved), with each
    `from X import Y` also read as X.Y (Y may be a submodule)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            out.add(source)
            out.update(f"{source}.{alias.name}" for alias in node.names)
    return out


def graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a name that is no project module is not an edge)."""
    mods = modules()
    edges = {}
    for name, path in mods.items():
        targets = set()
        for imported in imported_names(name, path):
            # `import a.b.c` names a.b.c; the deepest project module it names is the one imported
            parts = imported.split(".")
            for n in range(len(parts), 0, -1):
                candidate = ".".join(parts[:n])
                if candidate in mods:
                    targets.add(candidate)
                    break
        edges[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (depth-first search, colours white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_lazy_and_type_checking_imports(tmp_path):
    """The reader must count what a lazy import or a TYPE_CHECKING block names, or the check proves nothing."""
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ift.tasks.spec import TaskSpec\n"
                      "def f():\n    from ift.experiment import resume\n    import ift.tuner\n")
    names = imported_names("ift.tasks.m", source)
    assert {"ift.tasks.spec", "ift.experiment.resume", "ift.tuner"} <= names
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    edges = graph()
    assert "ift.experiment.config" in edges and "ift.tasks.spec" in edges  # the graph covers the project
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_engine_imports_no_experiment_library():
    bad = []
    for name, path in modules().items():
        if not name.startswith("ift") or name.startswith("ift.experiment"):
            continue
        for imported in imported_names(name, path):
            if imported.split(".")[0] in EXPERIMENT_ONLY:
                bad.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not bad, "the engine must not import Hydra, wandb or submitit:\n" + "\n".join(bad)


@pytest.mark.skipif(tomllib is None, reason="reading pyproject.toml needs Python >= 3.11")
@pytest.mark.parametrize("name,target", SCRIPTS)
def test_console_scripts_name_callables(name, target):
    """Every console script of pyproject.toml (ift-lmeval, ift-study ...) points at a function that exists."""
    module, _, attr = target.partition(":")
    if module == "ift.lmeval":
        pytest.importorskip("lm_eval")
    assert callable(getattr(importlib.import_module(module), attr)), name


def test_methods_are_step_generators_that_know_no_store_resume_or_tracking():
    """The job owns resuming, the store and tracking; a method only yields steps (and so adding one cannot
    bring back the circle through ift/experiment/config.py)."""
    imported = graph()["ift.experiment.methods"]
    assert not imported & {f"ift.experiment.{m}" for m in ("config", "job", "resume", "schema", "store", "tracking")}
