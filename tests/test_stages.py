"""Stage keys, stamps and `distinit status`: exactly the right stages are stale after each kind of change."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dataset_fixtures import make_hmdb51, make_kinetics, write_video

from distinit.pipeline.errors import ConfigError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.stages.graph import PipelineSpec, StageInputs, distill_process_count, full_plan, stage_plan
from distinit.pipeline.stages.stamps import done_path, key_path, read_stamp, stage_status, update_stamps, write_stage_record

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("demo-data.yaml", "extract.yaml", "demo-distill.yaml", "demo-eval.yaml", "distill.yaml", "eval.yaml")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with copies of the shipped configs, as the working directory (stage paths are relative)."""
    (tmp_path / "configs").mkdir()
    for name in CONFIGS:
        shutil.copy2(REPO / "configs" / name, tmp_path / "configs" / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def demo_spec(**changes) -> PipelineSpec:
    spec = PipelineSpec(
        stamps_dir=".stamps/demo", distill_config="configs/demo-distill.yaml", eval_config="configs/demo-eval.yaml",
        eval_root="data/demo/actions/videos", inits=("scratch", "runs/demo/distill"), init="runs/demo/distill",
        seeds=(0, 1, 2),
    )
    return dataclasses.replace(spec, **changes)


def keys(spec: PipelineSpec) -> dict[str, str]:
    """Every stage the spec sets up (eval-ucf needs UCF_ROOT, which the demo has not)."""
    return {stage.stage: stage.key for stage in full_plan(spec) if isinstance(stage, StageInputs)}


def changed_stages(before: PipelineSpec, after: PipelineSpec) -> set[str]:
    old, new = keys(before), keys(after)
    return {stage for stage in new if old.get(stage) != new[stage]}


DOWNSTREAM_OF_DISTILL = {"distill", "compare", "eval-hmdb"}


def test_a_distill_hyperparameter_changes_distill_and_eval_only(workdir):
    assert changed_stages(demo_spec(), demo_spec(distill_set=("lr=0.01",))) == DOWNSTREAM_OF_DISTILL


def without_global_batch(workdir: Path) -> None:
    """configs/free-distill.yaml: the demo's distill config without global_batch (batch_size x processes)."""
    demo = (workdir / "configs" / "demo-distill.yaml").read_text()
    free = "".join(line for line in demo.splitlines(keepends=True) if not line.startswith("global_batch:"))
    assert free != demo
    (workdir / "configs" / "free-distill.yaml").write_text(free)


def test_the_number_of_distill_processes_changes_distill_and_eval_only(workdir):
    # Without global_batch, batch_size x NPROC is the global batch: NPROC changes the schedule, so the key.
    without_global_batch(workdir)
    free = {"distill_config": "configs/free-distill.yaml"}
    assert changed_stages(demo_spec(**free), demo_spec(**free, distill_processes=8)) == DOWNSTREAM_OF_DISTILL
    assert changed_stages(demo_spec(**free, distill_processes=8), demo_spec(**free, distill_processes=4)) == DOWNSTREAM_OF_DISTILL
    assert changed_stages(demo_spec(**free), demo_spec(**free, distill_processes=1)) == set()
    # With it (the demo's config sets 8), a run is its global batch: 1 process, 2 of batch 4, 8 nodes are one run.
    assert changed_stages(demo_spec(), demo_spec(distill_processes=8)) == set()
    assert changed_stages(demo_spec(), demo_spec(distill_processes="gpu x 4 nodes")) == set()
    # A global batch the processes cannot make up is refused before anything runs, in one line.
    with pytest.raises(ConfigError, match="global_batch=8 is not a multiple of batch_size=8 x 2 processes"):
        stage_plan(demo_spec(distill_processes=2), until="distill")
    # batch_size 8 x 8 processes is the same global batch as global_batch=64 on one process.
    assert changed_stages(demo_spec(**free, distill_processes=8), demo_spec(**free, distill_set=("global_batch=64",))) == set()
    assert distill_process_count(None) == distill_process_count("1", "") == 1
    assert distill_process_count("8") == distill_process_count("4", "--nnodes 2 --rdzv-endpoint host:29500") == 8
    assert distill_process_count("4", "--rdzv-backend c10d --nnodes=3") == 12
    assert distill_process_count("4", "--nnodes 1:4") == 4  # an elastic range: the count is not known ahead
    assert distill_process_count("gpu", "--nnodes 2") == "gpu x 2 nodes"
    assert distill_process_count("4", "--nproc_per_node 2 --nnodes 2") == 4  # torchrun takes the later value


def test_the_teachers_change_extract_distill_and_eval(workdir):
    after = demo_spec(extract_set=("teachers=[imagenet-torchvision]",))
    assert changed_stages(demo_spec(), after) == {"extract"} | DOWNSTREAM_OF_DISTILL


def test_an_eval_option_changes_eval_only(workdir):
    assert changed_stages(demo_spec(), demo_spec(eval_set=("epochs=3",))) == {"compare", "eval-hmdb"}
    assert changed_stages(demo_spec(), demo_spec(seeds=(0,))) == {"compare", "eval-hmdb"}
    assert changed_stages(demo_spec(), demo_spec(inits=("scratch",))) == {"compare"}
    assert changed_stages(demo_spec(), demo_spec(init="scratch")) == {"eval-hmdb"}


def test_demo_data_options_change_every_stage(workdir):
    assert changed_stages(demo_spec(), demo_spec(demo_set=("videos_per_class=6",))) == {
        "demo-data", "extract"} | DOWNSTREAM_OF_DISTILL


def test_touching_or_reformatting_a_config_changes_nothing(workdir):
    before = keys(demo_spec())
    distill_yaml = workdir / "configs" / "demo-distill.yaml"
    os.utime(distill_yaml, (1e9, 1e9))
    distill_yaml.write_text("# a new comment\n" + distill_yaml.read_text())
    assert keys(demo_spec()) == before


def test_speed_only_options_change_nothing(workdir):
    after = demo_spec(extract_set=("workers=7", "batch_size=3"), distill_set=("workers=0", "device=cpu"),
                      eval_set=("threads=2", "workers=1"))
    assert changed_stages(demo_spec(), after) == set()


def test_eval_without_the_distilled_init_does_not_depend_on_distill(workdir):
    spec = demo_spec(inits=("scratch",), init="inflated:efficientnet_lite0")
    assert changed_stages(spec, dataclasses.replace(spec, distill_set=("lr=0.01",))) == {"distill"}
    assert [stage.stage for stage in stage_plan(spec, until="eval-hmdb")] == ["demo-data", "eval-hmdb"]
    assert [stage.stage for stage in stage_plan(spec, until="compare")] == ["demo-data", "compare"]


def test_a_real_dataset_is_keyed_by_its_content_not_its_mtimes(workdir):
    videos = workdir / "videos"
    for name in ("a", "b"):
        write_video(videos / f"{name}.mp4")  # adapters list files and sizes; they never decode them
    spec = PipelineSpec(stamps_dir=".stamps/folder", data="folder", root=str(videos))
    before = stage_plan(spec, until="extract")[-1].key
    os.utime(videos / "a.mp4", (1e9, 1e9))
    assert stage_plan(spec, until="extract")[-1].key == before
    write_video(videos / "c.mp4")
    assert stage_plan(spec, until="extract")[-1].key != before


def test_a_weights_file_is_keyed_by_its_content(workdir):
    weights = workdir / "resnet.pth"
    weights.write_bytes(b"one")
    spec = demo_spec(extract_set=("teachers=[imagenet-torchvision]", f"teacher_options={{imagenet-torchvision: {{weights: {weights}}}}}"))
    before = keys(spec)
    weights.write_bytes(b"two")
    assert keys(spec)["extract"] != before["extract"]


def test_a_moved_dataset_keeps_every_key(workdir):
    # Where a dataset lives is not what it is: moving Kinetics and passing the new ROOT must not re-run days of work.
    kinetics = make_kinetics(workdir / "data").root
    hmdb = make_hmdb51(workdir / "labeled").root
    spec = PipelineSpec(stamps_dir=".stamps/kinetics", data="kinetics", root=str(kinetics.relative_to(workdir)),
                        eval_root=str(hmdb), inits=("scratch", "runs/distill"), init="runs/distill")
    shutil.copytree(kinetics, workdir / "moved" / "kinetics-400")
    shutil.copytree(hmdb.parent, workdir / "mounted")
    moved = dataclasses.replace(spec, root=str(workdir / "moved" / "kinetics-400"), targets_root="/tmp/other-targets",
                                eval_root=str(workdir / "mounted" / hmdb.name))
    assert keys(spec) == keys(moved) and set(keys(spec)) == {"extract", "distill", "compare", "eval-hmdb"}
    # Its lists named explicitly, relative or absolute, and a teacher's weights file moved: the same keys too.
    weights = workdir / "r50.pth"
    weights.write_bytes(b"weights")
    shutil.copy(weights, workdir / "moved" / "r50.pth")
    teacher = "teachers=[imagenet-torchvision]"
    listed = dataclasses.replace(spec, extract_set=(f"annotations={kinetics.relative_to(workdir)}/annotations", teacher,
                                                    f"teacher_options={{imagenet-torchvision: {{weights: r50.pth}}}}"))
    listed_moved = dataclasses.replace(moved, extract_set=(
        f"annotations={workdir}/moved/kinetics-400/annotations", teacher,
        f"teacher_options={{imagenet-torchvision: {{weights: {workdir}/moved/r50.pth}}}}"))
    assert keys(listed) == keys(listed_moved) and keys(listed)["extract"] != keys(spec)["extract"]
    assert stage_plan(moved, "extract")[0].output == Path("/tmp/other-targets/kinetics/latest")  # missing: re-run there
    (workdir / "moved" / "kinetics-400" / "annotations" / "train.csv").unlink()  # what it holds does count
    assert keys(moved)["extract"] != keys(spec)["extract"]


def test_an_eval_init_is_keyed_by_its_weights(workdir):
    weights = workdir / "lite0.pth"
    weights.write_bytes(b"one")
    before = keys(demo_spec(init=f"inflated:efficientnet_lite0@{weights}"))["eval-hmdb"]
    assert keys(demo_spec(init=f"inflated:efficientnet_lite0@{weights}"))["eval-hmdb"] == before
    weights.write_bytes(b"two")
    assert keys(demo_spec(init=f"inflated:efficientnet_lite0@{weights}"))["eval-hmdb"] != before
    # A checkpoint outside the pipeline's distill output: its file's sha256; no distill stage upstream.
    checkpoint = workdir / "elsewhere" / "model.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    plan = stage_plan(demo_spec(init=str(checkpoint)), until="eval-hmdb")
    assert [stage.stage for stage in plan] == ["demo-data", "eval-hmdb"]
    assert plan[-1].inputs["config"]["init"] == {"kind": "checkpoint", "sha256": sha256_file(checkpoint)}
    # A run folder or checkpoint inside the distill output is a fixed file too: switching to it is a change.
    best = workdir / "runs" / "demo" / "distill" / "0123" / "checkpoint-best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"best")
    plan = stage_plan(demo_spec(init=str(best)), until="eval-hmdb")
    assert [stage.stage for stage in plan] == ["demo-data", "eval-hmdb"]
    assert plan[-1].inputs["config"]["init"] == {"kind": "checkpoint", "sha256": sha256_file(best)}
    # The pipeline's own distill output (its runs root, however spelled): distill's key, and distill runs first.
    assert keys(demo_spec(init="./runs/demo/distill/")) == keys(demo_spec(init=str(workdir / "runs/demo/distill")))
    plan = stage_plan(demo_spec(), until="eval-hmdb")
    assert [stage.stage for stage in plan] == ["demo-data", "extract", "distill", "eval-hmdb"]
    assert plan[-1].needs == ("demo-data", "distill") and plan[-1].inputs["upstream"]["distill"] == plan[2].key


def test_default_inflated_weights_are_identified_without_torch():
    import torchvision

    from distinit.pipeline.weights.lite0 import packaged_lite0_weights_path
    from distinit.pipeline.init_sources import RESNET18_IMAGENET_FILE, inflated_weights

    assert RESNET18_IMAGENET_FILE == Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name
    # torchvision's file by its published name (downloaded on first use: its bytes would change the key then).
    assert inflated_weights("resnet18") == f"torchvision {RESNET18_IMAGENET_FILE}"
    assert inflated_weights("efficientnet_lite0") == sha256_file(packaged_lite0_weights_path())
    assert inflated_weights("resnet18:random") == "random"
    assert inflated_weights("resnet18@/nowhere/r18.pth") == "missing: /nowhere/r18.pth"


def test_each_eval_stage_names_the_variable_it_misses(workdir):
    kinetics = PipelineSpec(stamps_dir=".stamps/kinetics", data="kinetics", init="runs/distill",
                            inits=("scratch", "runs/distill"))
    with pytest.raises(ConfigError, match="set HMDB_ROOT="):
        stage_plan(kinetics, until="eval-hmdb")
    with pytest.raises(ConfigError, match="set UCF_ROOT="):
        stage_plan(dataclasses.replace(kinetics, eval_root="data/demo/actions/videos"), until="eval-ucf")
    with pytest.raises(ConfigError, match="ROOT=<folder>"):  # the init is the distill output: extract needs ROOT
        stage_plan(dataclasses.replace(kinetics, eval_root="data/demo/actions/videos"), until="eval-hmdb")
    with pytest.raises(ConfigError, match="set INITS="):
        stage_plan(dataclasses.replace(kinetics, inits=()), until="compare")
    # scratch needs no pretraining: no ROOT, no extract, no distill.
    hmdb = make_hmdb51(workdir).root
    plan = stage_plan(dataclasses.replace(kinetics, init="scratch", eval_root=str(hmdb)), until="eval-hmdb")
    assert [stage.stage for stage in plan] == ["eval-hmdb"] and plan[0].inputs["data"]


def test_stamps_of_a_stage_this_version_has_not_are_removed(workdir):
    Path(".stamps/demo").mkdir(parents=True)
    for suffix in (".key", ".done"):
        Path(f".stamps/demo/eval{suffix}").write_text("{}\n")  # the comparison's stage before it was `compare`
    update_stamps(stage_plan(demo_spec()), ".stamps/demo")
    assert sorted(path.name for path in Path(".stamps/demo").iterdir() if path.stem == "eval") == []


def test_a_real_dataset_needs_its_root(workdir):
    with pytest.raises(ConfigError, match="ROOT"):
        stage_plan(PipelineSpec(stamps_dir=".stamps/kinetics", data="kinetics"), until="extract")


def test_stamps_are_rewritten_only_when_the_key_changes(workdir):
    plan = stage_plan(demo_spec())
    assert update_stamps(plan, ".stamps/demo") == ["demo-data", "extract", "distill", "compare"]
    mtimes = {stage.stage: key_path(".stamps/demo", stage.stage).stat().st_mtime_ns for stage in plan}
    assert update_stamps(stage_plan(demo_spec()), ".stamps/demo") == []
    assert update_stamps(stage_plan(demo_spec(distill_set=("lr=0.01",))), ".stamps/demo") == ["distill", "compare"]
    for stage in ("demo-data", "extract"):
        assert key_path(".stamps/demo", stage).stat().st_mtime_ns == mtimes[stage]


def fake_finished_run(plan) -> None:
    """What a finished pipeline leaves: every output exists and every .done is a copy of its .key."""
    update_stamps(plan, ".stamps/demo")
    for stage in plan:
        stage.output.parent.mkdir(parents=True, exist_ok=True)
        stage.output.write_text("done\n")
        shutil.copy(key_path(".stamps/demo", stage.stage), done_path(".stamps/demo", stage.stage))


def test_status_says_what_changed(workdir):
    assert {entry.state for entry in stage_status(stage_plan(demo_spec()), ".stamps/demo")} == {"missing"}
    fake_finished_run(stage_plan(demo_spec()))
    assert {entry.state for entry in stage_status(stage_plan(demo_spec()), ".stamps/demo")} == {"up to date"}
    statuses = {entry.stage: entry for entry in stage_status(stage_plan(demo_spec(distill_set=("lr=0.01",))), ".stamps/demo")}
    assert [statuses[stage].state for stage in ("demo-data", "extract")] == ["up to date", "up to date"]
    assert statuses["distill"].state == "stale" and "option lr: 0.003 -> 0.01" in statuses["distill"].reasons
    assert statuses["compare"].state == "stale" and any("upstream distill changed" in why for why in statuses["compare"].reasons)


NEEDS_MAKE = pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / ".installed").exists(),
                                reason="needs make and the project's .venv (make setup)")


def copy_make_files(workdir: Path) -> None:
    for name in ("Makefile", "requirements.txt", "requirements-pose.txt", "requirements-detectron2.txt", "pyproject.toml"):
        shutil.copy2(REPO / name, workdir / name)  # copy2 keeps the old mtimes: setup stays done


@NEEDS_MAKE
def test_outputs_made_without_make_are_adopted_when_they_record_the_key_make_wants(workdir):
    """An sbatch array extract and a multi-node distill run without make: their sealed folders record the keys they
    were made under (write_stage_record), so `status` calls them up to date and `stamps` writes their .done, and make
    re-runs neither; a folder recording another key (other options) is not adopted."""
    copy_make_files(workdir)
    plan = {stage.stage: stage for stage in stage_plan(demo_spec(), until="distill")}
    fake_finished_run([plan["demo-data"]])
    for name in ("extract", "distill"):
        stage = plan[name]
        folder = stage.output.parent / f"made-by-slurm-{name}"
        folder.mkdir(parents=True)
        write_stage_record(folder, name, stage.inputs)
        stage.output.write_text(folder.name + "\n")
    statuses = {entry.stage: entry for entry in stage_status(list(plan.values()), ".stamps/demo")}
    assert statuses["distill"].state == "up to date" and "made outside make" in statuses["distill"].reasons[0]
    adopted: list[str] = []
    update_stamps(list(plan.values()), ".stamps/demo", adopted)
    assert adopted == ["extract", "distill"]
    assert read_stamp(done_path(".stamps/demo", "distill"))["key"] == plan["distill"].key
    assert stage_commands(make_dry_run(workdir, target="distill")) == set()
    # Another learning rate: the sealed run records another key; distill is stale, extract stays adopted.
    changed = {stage.stage: stage for stage in stage_plan(demo_spec(distill_set=("lr=0.01",)), until="distill")}
    later: list[str] = []
    update_stamps(list(changed.values()), ".stamps/demo", later)
    assert later == []
    assert stage_commands(make_dry_run(workdir, "DISTILL_SET=lr=0.01", target="distill")) == {"distill"}


def test_a_deleted_output_makes_its_stage_missing_and_the_next_ones_stale(workdir):
    plan = stage_plan(demo_spec())
    fake_finished_run(plan)
    shutil.rmtree("targets")
    statuses = {entry.stage: entry for entry in stage_status(plan, ".stamps/demo")}
    assert statuses["extract"].state == "missing" and "is gone" in statuses["extract"].reasons[0]
    assert statuses["distill"].state == "stale" and statuses["distill"].reasons == ("extract will re-run first",)
    update_stamps(plan, ".stamps/demo")
    assert not done_path(".stamps/demo", "extract").exists()
    assert done_path(".stamps/demo", "distill").exists()


def test_status_command_prints_one_line_per_stage(workdir):
    fake_finished_run(stage_plan(demo_spec()))
    without_global_batch(workdir)
    result = subprocess.run(
        [sys.executable, "-m", "distinit.pipeline", "status", "--eval-root", "data/demo/actions/videos",
         "--inits", "scratch,runs/demo/distill", "--distill-set", "epochs=3"],
        capture_output=True, text=True, check=True,
    )
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["demo-data", "extract", "distill", "compare", "eval-hmdb", "eval-ucf"]
    assert lines[4].split()[1] == "missing:" and "not set up: the eval-ucf stage needs" in lines[5] and "UCF_ROOT" in lines[5]
    assert "stale: option epochs: 12 -> 3" in lines[2]
    result = subprocess.run(
        [sys.executable, "-m", "distinit.pipeline", "status", "--eval-root", "data/demo/actions/videos",
         "--inits", "scratch,runs/demo/distill", "--distill-nproc", "2", "--distill-config", "configs/free-distill.yaml",
         "--torchrun-args", "--nnodes 2 --max-restarts 1"],
        capture_output=True, text=True, check=True,
    )
    lines = result.stdout.strip().splitlines()
    assert "stale: option global_batch: 8 -> 32" in lines[2] and lines[1].split()[1:3] == ["up", "to"]


# --- the Makefile: `make -n demo` lists exactly the stale stages' commands ---------------------------------


def make_dry_run(workdir: Path, *variables: str, target: str = "demo") -> str:
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "-o", str(REPO / ".venv" / ".installed"), target, f"VENV={REPO / '.venv'}",
         "INITS=scratch,runs/demo/distill",
         *variables], cwd=workdir, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def stage_commands(output: str) -> set[str]:
    names = {"demo-data": ("distinit demo-data",), "extract": ("distinit extract",),
             "distill": ("distinit distill", "-m distinit.pipeline distill"), "compare": ("distinit compare",),
             "eval-hmdb": ("distinit eval --config",)}
    return {stage for stage, commands in names.items() if any(command in output for command in commands)}


@NEEDS_MAKE
def test_make_dry_run_reruns_exactly_the_stale_stages(workdir):
    copy_make_files(workdir)
    assert stage_commands(make_dry_run(workdir)) == {"demo-data", "extract", "distill", "compare"}
    fake_finished_run(stage_plan(demo_spec()))
    assert stage_commands(make_dry_run(workdir)) == set()
    assert stage_commands(make_dry_run(workdir, "DISTILL_SET=lr=0.01")) == {"distill", "compare"}
    assert stage_commands(make_dry_run(workdir, "TEACHERS=imagenet-torchvision")) == {"extract", "distill", "compare"}
    # A YAML value with braces and a comma reaches distinit as one argument (bash would brace-expand it unquoted).
    both = 'EXTRACT_SET=teacher_options={"imagenet-efficientnet-lite0":{"outputs":"logits,embedding"}}'
    output = make_dry_run(workdir, both)
    assert stage_commands(output) == {"extract", "distill", "compare"}
    assert """--set 'teacher_options={"imagenet-efficientnet-lite0":{"outputs":"logits,embedding"}}'""" in output
    assert stage_commands(make_dry_run(workdir, "EVAL_SET=epochs=3")) == {"compare"}
    # The demo's global batch (8) is the run: NPROC=2 of batch 4 is batch_size's change alone, NPROC=1 none.
    assert stage_commands(make_dry_run(workdir, "NPROC=2", "DISTILL_SET=batch_size=4")) == {"distill", "compare"}
    assert stage_commands(make_dry_run(workdir, "NPROC=1")) == set()
    fake_finished_run(stage_plan(demo_spec()))
    os.utime(workdir / "configs" / "demo-distill.yaml")
    assert stage_commands(make_dry_run(workdir)) == set()


@pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / ".installed").exists(),
                    reason="needs make and the project's .venv (make setup)")
def test_make_eval_hmdb_brings_its_upstream_up_to_date(workdir):
    for name in ("Makefile", "requirements.txt", "requirements-pose.txt", "requirements-detectron2.txt", "pyproject.toml"):
        shutil.copy2(REPO / name, workdir / name)

    def dry_run(*variables):
        return stage_commands(make_dry_run(workdir, *variables, target="eval-hmdb"))

    assert dry_run() == {"demo-data", "extract", "distill", "eval-hmdb"}
    fake_finished_run(stage_plan(demo_spec(), until="eval-hmdb"))
    assert dry_run() == set()
    assert dry_run("DISTILL_SET=lr=0.01") == {"distill", "eval-hmdb"}
    assert dry_run("EVAL_SET=epochs=3") == {"eval-hmdb"}
    assert dry_run("INIT=scratch") == {"eval-hmdb"}
    assert dry_run("INIT=scratch", "DISTILL_SET=lr=0.01") == {"eval-hmdb"}  # scratch does not read distill
    assert (workdir / ".stamps" / "demo" / "eval-hmdb.needs").read_text() == "demo-data\n"
    assert dry_run() == set()  # back to the distilled init: its needs come back, and it ran with them


@pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / ".installed").exists(),
                    reason="needs make and the project's .venv (make setup)")
@pytest.mark.parametrize("target, variables, named", [
    ("eval-hmdb", ["DATA=kinetics", "HMDB_ROOT=hmdb"], "ROOT"),
    ("eval-hmdb", ["DATA=kinetics"], "HMDB_ROOT"),
    ("eval-ucf", ["DATA=kinetics", "ROOT=kinetics"], "UCF_ROOT"),
    ("distill", ["DATA=kinetics"], "ROOT"),
    ("extract", ["DATA=kinetics"], "ROOT"),
    ("compare", ["DATA=kinetics", "ROOT=kinetics"], "HMDB_ROOT"),
    ("eval-hmdb", ["DATA=kinetics", "HMDB_ROOT=hmdb", "INIT="], "INIT"),
    ("compare", ["DATA=kinetics", "HMDB_ROOT=hmdb", "INITS="], "INITS"),
])
def test_a_missing_make_variable_is_one_line_naming_it(workdir, target, variables, named):
    for name in ("Makefile", "requirements.txt", "requirements-pose.txt", "requirements-detectron2.txt", "pyproject.toml"):
        shutil.copy2(REPO / name, workdir / name)
    (workdir / "hmdb").mkdir()
    result = subprocess.run(["make", "--no-print-directory", "-o", str(REPO / ".venv" / ".installed"), target, f"VENV={REPO / '.venv'}",
                             *variables],
                            cwd=workdir, capture_output=True, text=True)
    assert result.returncode != 0
    message = [line for line in (result.stdout + result.stderr).splitlines() if not line.startswith(("make: ", "make["))]
    assert len(message) == 1 and re.search(rf"(?<![A-Z_]){named}=", message[0]), result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / ".installed").exists(),
                    reason="needs make and the project's .venv (make setup)")
def test_make_eval_hmdb_on_kinetics_runs_extract_then_distill_then_eval(workdir):
    for name in ("Makefile", "requirements.txt", "requirements-pose.txt", "requirements-detectron2.txt", "pyproject.toml"):
        shutil.copy2(REPO / name, workdir / name)
    kinetics, hmdb = make_kinetics(workdir / "data").root, make_hmdb51(workdir / "labeled").root
    variables = ["DATA=kinetics", f"ROOT={kinetics}", f"HMDB_ROOT={hmdb}"]
    output = make_dry_run(workdir, *variables, target="eval-hmdb")
    commands = [line for line in output.splitlines() if " extract " in line or " distill " in line or " eval " in line]
    assert ["extract" in commands[0], "distill" in commands[-2], " eval " in commands[-1]] == [True] * 3, output
    assert f"--videos {kinetics}" in commands[-2] and "--init runs/distill" in commands[-1]
    assert stage_commands(make_dry_run(workdir, *variables, "INIT=scratch", target="eval-hmdb")) == {"eval-hmdb"}


def test_prepared_copies_are_a_stage_distill_reads_only_with_prepare(workdir):
    shutil.copy2(REPO / "configs" / "prepare.yaml", workdir / "configs" / "prepare.yaml")
    prepared = demo_spec(prepare=True)
    assert [stage.stage for stage in stage_plan(prepared, until="distill")] == [
        "demo-data", "extract", "prepare", "distill"]
    assert changed_stages(demo_spec(), prepared) == {"prepare"} | DOWNSTREAM_OF_DISTILL  # other pixels: distill again
    crf = dataclasses.replace(prepared, prepare_set=("crf=23",))
    assert changed_stages(prepared, crf) == {"prepare"} | DOWNSTREAM_OF_DISTILL
    assert changed_stages(demo_spec(), demo_spec(prepare_set=("crf=23",))) == set()  # distill reads the originals
    # It prepares what extract extracts: extract's selection options are prepare's too.
    limited = dataclasses.replace(prepared, extract_set=("limit=3",))
    assert {"prepare", "extract"} <= changed_stages(prepared, limited)


@pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / ".installed").exists(),
                    reason="needs make and the project's .venv (make setup)")
def test_make_distill_with_prepare_runs_prepare_and_reads_its_copies(workdir):
    for name in ("Makefile", "requirements.txt", "requirements-pose.txt", "requirements-detectron2.txt", "pyproject.toml"):
        shutil.copy2(REPO / name, workdir / name)
    shutil.copy2(REPO / "configs" / "prepare.yaml", workdir / "configs" / "prepare.yaml")
    kinetics = make_kinetics(workdir / "data").root
    output = make_dry_run(workdir, "DATA=kinetics", f"ROOT={kinetics}", "PREPARE=1", "EXTRACT_SET=limit=2",
                          target="distill")
    prepare = [line for line in output.splitlines() if "distinit prepare" in line]
    distill = [line for line in output.splitlines() if "distinit distill" in line]
    assert len(prepare) == 1 and "--set 'limit=2'" in prepare[0] and "--prepared prepared/kinetics" in distill[0]
    assert "distinit prepare" not in make_dry_run(workdir, "DATA=kinetics", f"ROOT={kinetics}", target="distill")
