"""The package's dependencies: the ranges it declares, the pins it is tested with, what it imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

import mmedpo
from mmedpo.configs import DEMO

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SRC = Path(mmedpo.__file__).parent


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(*extras: str) -> list[Requirement]:
    lines = PYPROJECT["dependencies"] + [line for extra in extras for line in PYPROJECT["optional-dependencies"][extra]]
    return [Requirement(line) for line in lines]


def pins() -> dict[str, str]:
    """constraints.txt as {distribution: version}."""
    found = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not an exact pin"
            found[canonical(name)] = version
    return found


def imported_top_level_names(folder: Path) -> set[str]:
    """Top-level names of every absolute import in the folder's Python files, at any depth."""
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def distributions_imported(folder: Path) -> set[str]:
    provided_by = packages_distributions()  # import name -> the installed distributions providing it
    return {canonical(dist) for name in imported_top_level_names(folder) for dist in provided_by.get(name, [])}


def test_every_runtime_dependency_is_imported_by_the_package():
    used = distributions_imported(SRC)
    unused = [str(req) for req in requirements() if canonical(req.name) not in used]
    assert unused == []


def test_every_third_party_import_of_the_package_is_declared():
    declared = {canonical(req.name) for req in requirements(*PYPROJECT["optional-dependencies"])}
    provided_by = packages_distributions()
    undeclared = {}
    for name in imported_top_level_names(SRC) - set(sys.stdlib_module_names) - {"mmedpo"}:
        dists = {canonical(dist) for dist in provided_by.get(name, [name])}
        if not dists & declared:
            undeclared[name] = sorted(dists)
    assert undeclared == {}


def test_test_only_packages_are_not_runtime_dependencies():
    runtime = {canonical(req.name) for req in requirements()}
    test_extra = {canonical(req.name) for req in requirements("test")} - runtime
    assert "diffusers" in test_extra and "diffusers" in distributions_imported(ROOT / "tests")
    assert not {"diffusers", "pytest", "ruff"} & runtime
    assert not {"rouge-score", "nltk"} & runtime  # once declared, never imported


def test_only_trl_is_pinned_exactly_and_python_is_not_capped():
    exact = [req.name for req in requirements() if any(spec.operator == "==" for spec in req.specifier)]
    assert exact == ["trl"]
    assert PYPROJECT["requires-python"] == ">=3.11"


def test_constraints_pin_every_dependency_inside_its_range():
    pinned = pins()
    every = requirements(*(extra for extra in PYPROJECT["optional-dependencies"] if extra != "radeval"))
    missing = [req.name for req in every if canonical(req.name) not in pinned]
    outside = [
        f"{req.name}=={pinned[canonical(req.name)]} not in {req.specifier}"
        for req in every
        if canonical(req.name) in pinned and not req.specifier.contains(pinned[canonical(req.name)], prereleases=True)
    ]
    assert missing == [] and outside == []
    assert pinned["torch"] == "2.13.0"  # the CPU wheel on the machines' disk, not a multi-GB CUDA build


def test_make_and_ci_install_from_the_constraints():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "pip install --quiet -c constraints.txt -e '.[test]'" in makefile
    assert re.search(r"^\$\(STAMP\): pyproject.toml constraints.txt$", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_repository_demo_config_is_the_packaged_one():
    assert (ROOT / "configs" / "demo.yaml").read_bytes() == DEMO.read_bytes()
    assert (
        "configs/*.yaml"
        in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mmedpo"]
    )
