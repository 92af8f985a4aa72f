"""The layer rule of docs/architecture.md: components/ imports neither Prefect nor MLflow, nor steps/ or flows/;
steps/ imports neither Prefect nor flows/; flows/ talks to MLflow only through steps/ (steps.support.pipeline_run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "components": {"prefect", "mlflow", "steps", "flows"},
    "steps": {"prefect", "flows"},
    "flows": {"mlflow"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_only_point_downwards(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
        if _imports(path) & FORBIDDEN[package]
    }
    assert not offenders


def test_no_step_imports_another() -> None:
    """Steps hand each other URIs through steps.support's formats, never Python objects of another step."""
    steps = {path.stem for path in (ROOT / "steps").glob("*.py") if path.stem != "__init__"}
    offenders = {}
    for path in (ROOT / "steps").glob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "steps":
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("steps."):
                imported.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                imported.update(a.name.split(".")[1] for a in node.names if a.name.startswith("steps."))
        if others := (imported & steps) - {path.stem}:
            offenders[path.name] = sorted(others)
    assert not offenders


MAX_MODULE_LINES = 500  # docs/architecture.md: a module a newcomer can read in one sitting


def test_no_module_is_longer_than_a_newcomer_reads_at_once() -> None:
    packages = ("components", "steps", "flows", "bench")
    lengths = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for d in packages for p in (ROOT / d).rglob("*.py")
    }
    assert not {path: n for path, n in lengths.items() if n > MAX_MODULE_LINES}
