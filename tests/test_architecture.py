"""The package's layering: no import cycles, and no module imports anything above its floor.

Every import of every module under src/mmedpo counts, also those inside functions:
a lazy import is still a dependency. `from PACKAGE import NAME` depends on PACKAGE
(its `__init__` runs) and on PACKAGE.NAME when that is a module.

Floors, lowest first. A module may import modules on lower floors and modules of its
own unit (the longest entry of `FLOORS` its name starts with). Units on one floor are
siblings: none imports another, so curation, scoring, training and evaluation share
nothing but what lies below them. A new module belongs to the unit its package is in;
a new package needs an entry here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mmedpo

SRC = Path(mmedpo.__file__).parent

FLOORS: list[tuple[str, list[str]]] = [
    # Records, the progress bar, the registry of names users type, the run folder's paths, the errors
    # stages share, the packaged configs, shards and the on-disk cache of endpoint replies: everything may use them.
    ("foundations", ["records", "progress", "registry", "layout", "errors", "configs", "shards", "jsonl_cache"]),
    # Self-contained tools. training.settings is the trainer's settings model (pydantic, no torch),
    # which the run config embeds; the rest of training sits on the stages floor.
    ("tools", ["clinical", "llm", "prompts", "training.settings"]),
    ("config", ["config", "config_help"]),
    ("data", ["data"]),
    ("models", ["synth", "models"]),
    # A run's samples: SynthMed or a dataset reader, so above both.
    ("sources", ["data.sources"]),
    # Regions, localizers and regional noise: what curation's visual pairs and evaluation's
    # visual dependence both use.
    ("imaging", ["imaging"]),
    ("stages", ["curation", "scoring", "training", "evaluation"]),
    ("report", ["report"]),
    ("pipeline", ["pipeline"]),
    ("cli", ["cli"]),
    ("entry point", ["__main__"]),
]


def module_names() -> dict[str, Path]:
    """Dotted name -> file of every module under src/mmedpo (a package is its __init__.py)."""
    modules = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported mmedpo module, line) for every import statement in the module, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside module a.b
                target = target.rpartition(".")[0]
            if target.startswith("mmedpo") and target != name:
                found.append((target, node.lineno))
    return found


def graph() -> dict[str, list[tuple[str, int]]]:
    modules = module_names()
    return {name: imports(name, path, modules) for name, path in modules.items()}


def unit(name: str) -> tuple[int, str]:
    """(floor index, unit) of a module: the longest FLOORS entry its name is or starts with."""
    if name == "mmedpo":
        return 0, "mmedpo"  # the package root holds only its docstring and version
    relative = name.removeprefix("mmedpo.")
    matches = [
        (len(entry), index, entry)
        for index, (_, entries) in enumerate(FLOORS)
        for entry in entries
        if relative == entry or relative.startswith(entry + ".")
    ]
    assert matches, f"{name} has no floor: add its package to FLOORS in tests/test_architecture.py"
    _, index, entry = max(matches)
    return index, entry


def cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _ in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_imports_are_found_inside_functions_and_through_packages(tmp_path):
    path = tmp_path / "example.py"
    path.write_text("def f():\n    from mmedpo.evaluation import llava_med\n    import mmedpo.records\n")
    found = imports("mmedpo.example", path, module_names())
    assert found == [("mmedpo.evaluation", 2), ("mmedpo.evaluation.llava_med", 2), ("mmedpo.records", 3)]


def test_there_are_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(component) for component in found)


def test_no_module_imports_above_its_floor_or_a_sibling():
    wrong = []
    for name, targets in graph().items():
        floor, own = unit(name)
        for target, line in targets:
            target_floor, other = unit(target)
            if target_floor > floor or (target_floor == floor and other != own):
                what = "a sibling" if target_floor == floor else f"floor '{FLOORS[target_floor][0]}'"
                wrong.append(f"{name}:{line} imports {target}: {what}, from floor '{FLOORS[floor][0]}'")
    assert not wrong, "imports against the floors (tests/test_architecture.py):\n" + "\n".join(wrong)


def test_every_floor_entry_names_a_module():
    modules = module_names()
    missing = [
        entry
        for _, entries in FLOORS
        for entry in entries
        if not any(name == f"mmedpo.{entry}" or name.startswith(f"mmedpo.{entry}.") for name in modules)
    ]
    assert not missing, f"FLOORS names modules that do not exist: {missing}"
