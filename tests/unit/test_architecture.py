"""The layout's rules, read off the source: nothing imports an entry point, entry points stay
thin, and the pipeline never branches on a dataset's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT

ENTRY_POINTS = {"src.run", "src.eval", "src.score", "src.summary", "src.table1", "src.results", "src.compare"}
SOURCES = sorted(
    path
    for folder in ("src", "hydra_plugins", "benchmarks", "tests")
    for path in (PROJECT_ROOT / folder).rglob("*.py")
)


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_no_module_imports_an_entry_point(path: Path) -> None:
    assert not imported_modules(path) & ENTRY_POINTS


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_points_are_thin(name: str) -> None:
    path = PROJECT_ROOT / (name.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    definitions = [node for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)]
    assert len(definitions) <= 1, [node.name for node in definitions]
    assert len(path.read_text().splitlines()) <= 40


def test_the_pipeline_does_not_branch_on_dataset_names() -> None:
    names = {"lines", "lines2x2", "mnist", "fashion_mnist"}
    for path in (PROJECT_ROOT / "src" / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                constants = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant)}
                assert not constants & names, f"{path.name}:{node.lineno} compares with a dataset name"


def test_readme_layout_names_every_source_file() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    rows = {line.split()[0].rstrip("/"): line for line in layout.splitlines() if line.startswith("  ")}
    folders = {"models", "data", "evaluation", "reporting", "pipeline", "analysis"}
    assert folders <= set(rows)
    listed = {}
    for line in layout.splitlines():
        if line.startswith("  ") and line.split()[0].rstrip("/") in folders:
            current = line.split()[0].rstrip("/")
        elif not line.startswith("                   "):
            current = None
        if current:
            listed.setdefault(current, set()).update(word for word in line.split() if word.endswith(".py"))
    for folder in folders:
        on_disk = {p.name for p in (PROJECT_ROOT / "src" / folder).glob("*.py")} - {"__init__.py"}
        assert listed[folder] == on_disk, folder
    entry_points = {p.name for p in (PROJECT_ROOT / "src").glob("*.py")} - {"__init__.py"}
    assert entry_points <= set(layout.split())
