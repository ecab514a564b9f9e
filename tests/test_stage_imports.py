"""Stages meet only through `pipeline/` and the files one writes for the next: a walk over every import
statement (top level and inside functions) of each stage's modules keeps it so."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
STAGES = ("extract", "distill", "evaluate")
# stage -> the stages it must never import. evaluate may import distill (it finetunes distill's students).
FORBIDDEN = {"extract": ("distill", "evaluate"), "distill": ("extract", "evaluate"), "evaluate": ("extract",)}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module name) of every import in the file, however deep in a function it sits."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "<relative import>"))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def crossings(stage: str) -> list[str]:
    problems = []
    paths = sorted((REPOSITORY / stage).rglob("*.py"))
    assert len(paths) > 5, f"found only {len(paths)} modules in {stage}/: the walk would check nothing"
    for path in paths:
        for line, module in imported_modules(path):
            top = module.removeprefix("distinit.").split(".")[0]
            if top in FORBIDDEN[stage] or module == "<relative import>":
                problems.append(f"{path.relative_to(REPOSITORY)}:{line} imports {module}")
    return problems


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_never_imports_the_stages_it_must_not(stage: str):
    assert crossings(stage) == []


def test_the_walk_sees_imports_inside_functions(tmp_path: Path):
    module = tmp_path / "late.py"
    module.write_text("def build():\n    from evaluate.inflate import x\n    import extract.run\n")
    assert imported_modules(module) == [(2, "evaluate.inflate"), (3, "extract.run")]


GENERIC = ("pipeline", "extract", "distill", "evaluate")


@pytest.mark.parametrize("folder", ("pipeline", "extract", "distill", "evaluate", "tests", "bench"))
def test_nothing_imports_the_stages_under_their_generic_top_level_names(folder: str):
    """They install as distinit.pipeline, distinit.extract, ...: a bare `import evaluate` would find another
    distribution's package (Hugging Face's `evaluate`) or nothing."""
    bare = [f"{path.relative_to(REPOSITORY)}:{line} imports {module}"
            for path in sorted((REPOSITORY / folder).rglob("*.py"))
            for line, module in imported_modules(path) if module.split(".")[0] in GENERIC]
    assert bare == []
