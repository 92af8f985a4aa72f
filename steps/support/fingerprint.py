"""The code fingerprint in every reuse key: which code shapes a step's result, found from its imports.

A step's result depends on its own module and on every module of the project it imports, directly or through
another module, at any depth, including imports inside functions. :func:`code_modules` follows those imports in the
source files (nothing is imported) and :func:`code_fingerprint` hashes the package version and the code of each
module found, so a fix anywhere a step reaches (a loss, a metric, the training loop) makes it run again, while a
docstring, a comment or a module it never imports does not.

A module that moves data without computing it (MLflow I/O, locks, file hashes, object storage, the step CLI, error
classes) says so with ``SHAPES_RESULTS = False`` at its top level: it is not hashed, though its imports are still
followed. Forgetting the flag costs a needless re-run; nothing is ever reused that should not be. Imports built at
run time (``importlib.import_module`` with a computed name) are not seen: the project has none.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

SHAPES_RESULTS = False

PROJECT_PACKAGES = ("components", "steps")
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding components/ and steps/ (checkout or wheel)


def code_fingerprint(step: str) -> str:
    """A short hash of the package version and of the code of ``steps.<step>`` and every module it reaches.

    Each module's source is parsed and printed back with ``ast`` after its docstrings are removed, so comments,
    docstrings, blank lines and formatting do not count; what is hashed depends only on the source files and the
    package version, never on paths, the machine or the order of imports, so two hosts running the same checkout
    (or wheel) agree.
    """
    return _fingerprint(step, SOURCE_ROOT)


@functools.cache
def _fingerprint(step: str, source_root: Path) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("odir")
    except PackageNotFoundError:  # running from a plain checkout
        package = "unversioned"
    digest = hashlib.sha256(package.encode())
    for module in code_modules(f"steps.{step}", source_root):
        digest.update(module.encode())
        digest.update(_code_of(_text(module, source_root)).encode())
    return digest.hexdigest()[:16]


def compute_all() -> None:
    """Every step's fingerprint computed now and kept for the process (``odir full``'s start-up does it while the
    Prefect server comes up, 1-3 s on 2 cores that the steps' first runs no longer wait for): one per module of
    ``steps/``, as :func:`code_fingerprint` would compute it on first use, from the same source files."""
    for path in sorted((SOURCE_ROOT / "steps").glob("*.py")):
        if path.stem != "__init__":
            code_fingerprint(path.stem)


def code_modules(root: str, source_root: Path | None = None) -> tuple[str, ...]:
    """``root`` and every project module it imports, transitively (with the packages they sit in), less those
    flagged ``SHAPES_RESULTS = False``; sorted.

    Raises:
        ModuleNotFoundError: when ``root`` or a project module it imports has no source file under ``source_root``.
    """
    source_root = source_root or SOURCE_ROOT
    seen: set[str] = set()
    pending = [root]
    shaping = []
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        text = _text(module, source_root)
        if _shapes_results(text):
            shaping.append(module)
        pending.extend(_project_imports(text, source_root))
        pending.extend(_parents(module))
    return tuple(sorted(shaping))


def _project_imports(text: str, source_root: Path) -> set[str]:
    """The project modules a module's source imports: ``from a.b import c`` is module ``a.b.c`` when that is a file,
    else ``a.b``."""
    found = set()
    for module, names in _imports_of(text):
        if names is None:
            found.add(module)
        for name in names or ():
            submodule = f"{module}.{name}"
            found.add(submodule if _source(submodule, source_root) else module)
    return found


@functools.cache
def _imports_of(text: str) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
    """The project imports in a module's source: ``(module, None)`` for ``import module``, ``(module, names)`` for
    ``from module import names``. Kept per source text: a file that changes is parsed again."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names if _in_project(alias.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _in_project(node.module):
            found.append((node.module, tuple(alias.name for alias in node.names)))
    return tuple(found)


def _in_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT_PACKAGES


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def _source(module: str, source_root: Path) -> Path | None:
    base = source_root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _text(module: str, source_root: Path) -> str:
    """The module's source, read now (what is derived from it is kept per text, never per file)."""
    path = _source(module, source_root)
    if path is None:
        raise ModuleNotFoundError(f"code fingerprint: module {module} not found under {source_root}")
    return path.read_text(encoding="utf-8")


@functools.cache
def _shapes_results(text: str) -> bool:
    for node in ast.parse(text).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(target, ast.Name) and target.id == "SHAPES_RESULTS" for target in node.targets)
            and isinstance(node.value, ast.Constant)
        ):
            return bool(node.value.value)
    return True


@functools.cache
def _code_of(text: str) -> str:
    """The module's code without its docstrings, comments and formatting. Kept per source text: steps share most of
    the modules they reach."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)
