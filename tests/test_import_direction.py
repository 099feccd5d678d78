"""Imports run one way: core → nothing above it, `kernels` → nothing of the project but itself.

Checked on the source with `ast` (no module is imported, so the check is fast and sees every file, even one whose
dependencies are missing here). The rules:

- **core** (``spatialreward/*.py`` and ``spatialreward/synth/``, and the integrations ``spatialreward/serving/``
  and ``spatialreward/rl/``, which reach the student through `RewardModel`) never imports ``spatialreward.student``,
  ``spatialreward.teacher`` or ``spatialreward.export`` at module level. An import inside a function is the lazy
  pattern of the backend registry and the runtime (``RewardModel`` loads the student when it is built), so it is
  allowed; so is one under ``if TYPE_CHECKING:``. ``spatialreward/cli/`` assembles everything and is not core.
- **kernels** (``kernels/``, installed as ``spatialreward.kernels``) imports nothing of the project except itself,
  anywhere in the file: the kernels are a library the student uses, never the reverse.

A violation is reported as ``file:line: the import``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "spatialreward"
ABOVE_CORE = ("spatialreward.student", "spatialreward.teacher", "spatialreward.export")
# Folders that pyproject.toml's package-dir installs under another name.
PACKAGE_DIRS = {"spatialreward": "spatialreward", "student": "spatialreward.student",
                "teacher": "spatialreward.teacher", "kernels": "spatialreward.kernels",
                "export": "spatialreward.export"}


def module_name(path: Path) -> str:
    """The dotted name a source file is imported as (``kernels/onnx.py`` → ``spatialreward.kernels.onnx``)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = PACKAGE_DIRS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.Module, module: str, *, is_package: bool) -> Iterator[tuple[int, str, bool]]:
    """``(line, imported module, at module level)`` for every import in ``tree`` (relative ones resolved)."""

    def absolute(node: ast.ImportFrom) -> list[str]:
        if node.level == 0:
            base = node.module or ""
        else:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        if node.module is None:  # `from . import a, b`: each name may be a submodule
            return [f"{base}.{alias.name}" for alias in node.names]
        return [base] + [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import sub`: sub may be one

    def visit(node: ast.AST, top: bool) -> Iterator[tuple[int, str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield child.lineno, alias.name, top
            elif isinstance(child, ast.ImportFrom):
                for name in absolute(child):
                    yield child.lineno, name, top
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                yield from visit(ast.Module(body=child.body, type_ignores=[]), False)
                for stmt in child.orelse:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), top)
            else:  # class bodies, try/except, if/else at module level still run at import
                yield from visit(child, top)

    yield from visit(tree, True)


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(path: Path, source: str | None = None) -> list[str]:
    """The import-direction violations of one file, as ``file:line: import X (reason)``."""
    source = path.read_text(encoding="utf-8") if source is None else source
    module = module_name(path)
    tree = ast.parse(source, filename=str(path))
    rel = path.relative_to(ROOT)
    found = {}  # line -> message: the first offending name of an import statement
    for line, name, top in imports(tree, module, is_package=path.name == "__init__.py"):
        if line in found:
            continue
        if _within(module, "spatialreward.kernels"):
            if _within(name, PROJECT) and not _within(name, "spatialreward.kernels"):
                found[line] = f"{rel}:{line}: import {name} (kernels import nothing of the project but kernels)"
        elif top and any(_within(name, above) for above in ABOVE_CORE):
            found[line] = (f"{rel}:{line}: import {name} at module level (core must not depend on it; import it "
                           "inside the function that needs it, as the backend registry does)")
    return list(found.values())


def core_files() -> list[Path]:
    folders = [ROOT / "spatialreward" / name for name in ("synth", "serving", "rl")]
    return sorted([*(ROOT / "spatialreward").glob("*.py"), *(f for folder in folders for f in folder.rglob("*.py"))])


def kernel_files() -> list[Path]:
    return sorted((ROOT / "kernels").rglob("*.py"))


def test_the_checked_folders_hold_the_modules():
    names = {module_name(p) for p in core_files() + kernel_files()}
    for expected in ("spatialreward.types", "spatialreward.runtime", "spatialreward.synth.generate",
                     "spatialreward.serving.app", "spatialreward.rl.scorer",
                     "spatialreward.kernels", "spatialreward.kernels.roi_align"):
        assert expected in names


def test_core_never_imports_student_teacher_or_export_at_module_level():
    found = [v for path in core_files() for v in violations(path)]
    assert not found, "\n".join(found)


def test_kernels_import_nothing_of_the_project_but_themselves():
    found = [v for path in kernel_files() for v in violations(path)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        ("spatialreward/formula.py", "import os\nfrom spatialreward.student.model import Student\n",
         ["spatialreward/formula.py:2: import spatialreward.student.model at module level"]),
        ("spatialreward/synth/truth.py", "try:\n    import spatialreward.teacher\nexcept ImportError:\n    pass\n",
         ["spatialreward/synth/truth.py:2: import spatialreward.teacher at module level"]),
        ("spatialreward/runtime.py", "def load():\n    from spatialreward.export import backends\n", []),
        ("spatialreward/runtime.py",
         "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from spatialreward.student import Student\n", []),
        ("spatialreward/types.py", "from . import export\n", ["spatialreward/types.py:1: import spatialreward.export"]),
        ("spatialreward/types.py", "from spatialreward import formula, student\n",
         ["spatialreward/types.py:1: import spatialreward.student at module level"]),
        ("kernels/roi_align.py", "from ._backend import tl\ndef f():\n    from spatialreward.types import BOX_SCALE\n",
         ["kernels/roi_align.py:3: import spatialreward.types (kernels import"]),
        ("kernels/__init__.py", "from .. import formula\nfrom . import onnx\n",
         ["kernels/__init__.py:1: import spatialreward.formula (kernels import"]),
    ],
)
def test_the_checker_reports_file_and_line(path, source, expected):
    found = violations(ROOT / path, source)
    assert len(found) == len(expected), found
    for message, start in zip(found, expected):
        assert message.startswith(start), message


def module_graph() -> dict[str, set[str]]:
    """Every project module -> the project modules it imports at module level. An edge to the module's own package
    is left out: Python runs a package's ``__init__`` before its modules, whatever they import."""
    paths = {module_name(p): p for folder in PACKAGE_DIRS for p in (ROOT / folder).rglob("*.py")}
    graph = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        deps = set()
        for _, name, top in imports(tree, module, is_package=path.name == "__init__.py"):
            while top and name and name not in paths:  # `from a.b import f` -> a.b; `import a.b.c` -> a.b.c
                name = name.rpartition(".")[0]
            if top and name and name != module and not _within(module, name):
                deps.add(name)
        graph[module] = deps
    return graph


def test_module_level_imports_have_no_cycles():
    """Item 2 of issue 13 (model <-> checkpoint, model <-> presets, vlm <-> openai_backend) stays broken."""
    try:
        TopologicalSorter(module_graph()).prepare()
    except CycleError as exc:
        pytest.fail("module-level import cycle: " + " -> ".join(exc.args[1]))


def test_the_cycle_check_sees_a_cycle():
    graph = module_graph()
    assert "spatialreward.student.checkpoint" in graph["spatialreward.student.model"]
    assert "spatialreward.teacher.config" in graph["spatialreward.teacher.openai_backend"]
    graph["spatialreward.student.checkpoint"].add("spatialreward.student.model")  # the cycle issue 13 broke
    with pytest.raises(CycleError):
        TopologicalSorter(graph).prepare()
