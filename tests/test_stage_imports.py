"""Stages meet only through `pipeline/` and the files one writes for the next: a walk over every import
statement (top level and inside functions) of each stage's modules keeps it so.

Three rules: a stage never imports the stages it must not; evaluate takes from distill only the student and its
checkpoint (rule A); the ground floor of pipeline/ imports no stage, nor the stage graph, nor the CLI (rule B).
Each rule has a test on a file written here that breaks it, so a walk that sees nothing cannot pass unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
STAGES = ("extract", "distill", "evaluate")
# stage -> the stages it must never import. evaluate may import distill (it finetunes distill's students).
FORBIDDEN = {"extract": ("distill", "evaluate"), "distill": ("extract", "evaluate"), "evaluate": ("extract",)}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of everything each import in the file binds, however deep in a function it sits:
    `import a.b` gives a.b; `from a.b import c` gives a.b.c (c a submodule of a.b or a name defined in it)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "<relative import>"))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return sorted(found)


def stage_modules(folder: str) -> list[Path]:
    paths = sorted((REPOSITORY / folder).rglob("*.py"))
    assert len(paths) > 5, f"found only {len(paths)} modules in {folder}/: the walk would check nothing"
    return paths


def crossings(stage: str) -> list[str]:
    problems = []
    for path in stage_modules(stage):
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
    assert imported_modules(module) == [(2, "evaluate.inflate.x"), (3, "extract.run")]


# --- rule A: evaluate takes from distill only the student and its checkpoint ---------------------------------------
# evaluate finetunes what distill wrote: it reads a checkpoint (`checkpoint`) and rebuilds the student in it (`students`
# and the modules that define a student's architecture). How distill trains (its clips, augmentation, sampling,
# losses, loop) is not evaluate's to import: what both stages use to turn a video into a normalised clip lives in
# pipeline/clips/ and the training machinery in pipeline/training/, so a change to distillation cannot silently
# change evaluation.
EVALUATE_MAY_IMPORT_FROM_DISTILL = frozenset({
    "students", "checkpoint",
    "heads", "trunks", "trunk_resnet18_3d", "trunk_efficientnet3d", "efficientnet3d",  # the student's architecture
})


def distill_internals_imported(paths: Iterable[Path], root: Path) -> list[str]:
    """Every import of distill that names no module of the allow-list (the bare package counts: it reaches them all)."""
    problems = []
    for path in paths:
        for line, module in imported_modules(path):
            parts = module.split(".")
            if parts[:2] != ["distinit", "distill"]:
                continue
            if len(parts) < 3 or parts[2] not in EVALUATE_MAY_IMPORT_FROM_DISTILL:
                problems.append(f"{path.relative_to(root)}:{line} imports {module}")
    return problems


def test_evaluate_takes_from_distill_only_the_student_and_its_checkpoint():
    assert distill_internals_imported(stage_modules("evaluate"), REPOSITORY) == []


def test_rule_a_catches_an_import_of_distills_internals(tmp_path: Path):
    module = tmp_path / "clips.py"
    module.write_text(
        "from distinit.distill.augment import FLIP_PROBABILITY\n"
        "from distinit.distill.students import create_student\n"
        "from distinit.distill.checkpoint import load_checkpoint\n"
        "def build():\n"
        "    from distinit.distill import windows, heads\n"
        "    from distinit import distill\n"
        "    import distinit.distill.train\n"
    )
    assert distill_internals_imported([module], tmp_path) == [
        "clips.py:1 imports distinit.distill.augment.FLIP_PROBABILITY",
        "clips.py:5 imports distinit.distill.windows",
        "clips.py:6 imports distinit.distill",
        "clips.py:7 imports distinit.distill.train",
    ]


# --- rule B: the ground floor imports nothing above it --------------------------------------------------------------
# pipeline/ is what the stages share. Above it sit the stages, the stage graph with its stamps (pipeline/stages/: it
# reads every stage's config) and the CLI (pipeline/cli/, pipeline/__main__.py), which run the stages. The rest of
# pipeline/, the ground floor, imports none of them, so any stage can use any of it.
ABOVE_THE_GROUND_FLOOR = (("distinit", "extract"), ("distinit", "distill"), ("distinit", "evaluate"),
                          ("distinit", "pipeline", "stages"), ("distinit", "pipeline", "cli"))


def ground_floor_modules() -> list[Path]:
    pipeline = REPOSITORY / "pipeline"
    above = (pipeline / "cli", pipeline / "stages")
    return [path for path in stage_modules("pipeline")
            if path != pipeline / "__main__.py" and not any(path.is_relative_to(folder) for folder in above)]


def imports_from_above(paths: Iterable[Path], root: Path) -> list[str]:
    problems = []
    for path in paths:
        for line, module in imported_modules(path):
            parts = tuple(module.split("."))
            if module == "<relative import>" or any(parts[:len(prefix)] == prefix for prefix in ABOVE_THE_GROUND_FLOOR):
                problems.append(f"{path.relative_to(root)}:{line} imports {module}")
    return problems


def test_the_ground_floor_imports_no_stage_nor_the_stage_graph_nor_the_cli():
    modules = ground_floor_modules()
    relative = {path.relative_to(REPOSITORY).as_posix() for path in modules}
    assert {"pipeline/clips/views.py", "pipeline/training/seeding.py", "pipeline/weights/inflation.py"} <= relative
    assert not any(name.startswith(("pipeline/stages/", "pipeline/cli/")) for name in relative)
    assert imports_from_above(modules, REPOSITORY) == []


def test_rule_b_catches_an_import_from_above_the_ground_floor(tmp_path: Path):
    module = tmp_path / "stamps.py"
    module.write_text(
        "from distinit.pipeline.stages.graph import STAGES\n"
        "from distinit.pipeline.config import load_config\n"
        "from distinit.pipeline import cli, errors\n"
        "def late():\n"
        "    import distinit.extract.run\n"
        "    from distinit.evaluate.config import EvalConfig\n"
        "    from . import hashing\n"
    )
    assert imports_from_above([module], tmp_path) == [
        "stamps.py:1 imports distinit.pipeline.stages.graph.STAGES",
        "stamps.py:3 imports distinit.pipeline.cli",
        "stamps.py:5 imports distinit.extract.run",
        "stamps.py:6 imports distinit.evaluate.config.EvalConfig",
        "stamps.py:7 imports <relative import>",
    ]


GENERIC = ("pipeline", "extract", "distill", "evaluate")


@pytest.mark.parametrize("folder", ("pipeline", "extract", "distill", "evaluate", "tests", "bench"))
def test_nothing_imports_the_stages_under_their_generic_top_level_names(folder: str):
    """They install as distinit.pipeline, distinit.extract, ...: a bare `import evaluate` would find another
    distribution's package (Hugging Face's `evaluate`) or nothing."""
    bare = [f"{path.relative_to(REPOSITORY)}:{line} imports {module}"
            for path in sorted((REPOSITORY / folder).rglob("*.py"))
            for line, module in imported_modules(path) if module.split(".")[0] in GENERIC]
    assert bare == []
