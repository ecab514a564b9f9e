"""Stage keys, stamps and `distinit status`: exactly the right stages are stale after each kind of change."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dataset_fixtures import write_video

from pipeline.errors import ConfigError
from pipeline.stages import PipelineSpec, distill_process_count, stage_plan
from pipeline.stamps import done_path, key_path, stage_status, update_stamps

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
        eval_root="data/demo/actions/videos", inits=("scratch", "runs/demo/distill"), seeds=(0, 1, 2),
    )
    return dataclasses.replace(spec, **changes)


def keys(spec: PipelineSpec) -> dict[str, str]:
    return {stage.stage: stage.key for stage in stage_plan(spec)}


def changed_stages(before: PipelineSpec, after: PipelineSpec) -> set[str]:
    old, new = keys(before), keys(after)
    return {stage for stage in new if old.get(stage) != new[stage]}


def test_a_distill_hyperparameter_changes_distill_and_eval_only(workdir):
    assert changed_stages(demo_spec(), demo_spec(distill_set=("lr=0.01",))) == {"distill", "eval"}


def test_the_number_of_distill_processes_changes_distill_and_eval_only(workdir):
    # batch_size is per process: NPROC changes the global batch and the schedule, so it is part of the key.
    assert changed_stages(demo_spec(), demo_spec(distill_processes=8)) == {"distill", "eval"}
    assert changed_stages(demo_spec(distill_processes=8), demo_spec(distill_processes=4)) == {"distill", "eval"}
    assert changed_stages(demo_spec(), demo_spec(distill_processes=1)) == set()
    assert distill_process_count(None) == distill_process_count("1", "") == 1
    assert distill_process_count("8") == distill_process_count("4", "--nnodes 2 --rdzv-endpoint host:29500") == 8
    assert distill_process_count("4", "--rdzv-backend c10d --nnodes=3") == 12
    assert distill_process_count("4", "--nnodes 1:4") == 4  # an elastic range: the count is not known ahead
    assert distill_process_count("gpu", "--nnodes 2") == "gpu x 2 nodes"
    assert distill_process_count("4", "--nproc_per_node 2 --nnodes 2") == 4  # torchrun takes the later value


def test_the_teachers_change_extract_distill_and_eval(workdir):
    after = demo_spec(extract_set=("teachers=[imagenet-torchvision]",))
    assert changed_stages(demo_spec(), after) == {"extract", "distill", "eval"}


def test_an_eval_option_changes_eval_only(workdir):
    assert changed_stages(demo_spec(), demo_spec(eval_set=("epochs=3",))) == {"eval"}
    assert changed_stages(demo_spec(), demo_spec(seeds=(0,))) == {"eval"}


def test_demo_data_options_change_every_stage(workdir):
    assert changed_stages(demo_spec(), demo_spec(demo_set=("videos_per_class=6",))) == {
        "demo-data", "extract", "distill", "eval"}


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
    spec = demo_spec(inits=("scratch",))
    assert changed_stages(spec, dataclasses.replace(spec, distill_set=("lr=0.01",))) == {"distill"}


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


def test_a_real_dataset_needs_its_root(workdir):
    with pytest.raises(ConfigError, match="ROOT"):
        stage_plan(PipelineSpec(stamps_dir=".stamps/kinetics", data="kinetics"), until="extract")


def test_stamps_are_rewritten_only_when_the_key_changes(workdir):
    plan = stage_plan(demo_spec())
    assert update_stamps(plan, ".stamps/demo") == ["demo-data", "extract", "distill", "eval"]
    mtimes = {stage.stage: key_path(".stamps/demo", stage.stage).stat().st_mtime_ns for stage in plan}
    assert update_stamps(stage_plan(demo_spec()), ".stamps/demo") == []
    assert update_stamps(stage_plan(demo_spec(distill_set=("lr=0.01",))), ".stamps/demo") == ["distill", "eval"]
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
    assert statuses["eval"].state == "stale" and any("upstream distill changed" in why for why in statuses["eval"].reasons)


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
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "status", "--eval-root", "data/demo/actions/videos",
         "--inits", "scratch,runs/demo/distill", "--distill-set", "epochs=3"],
        capture_output=True, text=True, check=True,
    )
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["demo-data", "extract", "distill", "eval"]
    assert "stale: option epochs: 12 -> 3" in lines[2]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "status", "--eval-root", "data/demo/actions/videos",
         "--inits", "scratch,runs/demo/distill", "--distill-nproc", "2",
         "--torchrun-args", "--nnodes 2 --max-restarts 1"],
        capture_output=True, text=True, check=True,
    )
    lines = result.stdout.strip().splitlines()
    assert "stale: option processes: null -> 4" in lines[2] and lines[1].split()[1:3] == ["up", "to"]


# --- the Makefile: `make -n demo` lists exactly the stale stages' commands ---------------------------------


def make_dry_run(workdir: Path, *variables: str) -> str:
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "demo", f"VENV={REPO / '.venv'}", "INITS=scratch,runs/demo/distill",
         *variables], cwd=workdir, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def stage_commands(output: str) -> set[str]:
    names = {"demo-data": ("distinit demo-data",), "extract": ("distinit extract",),
             "distill": ("distinit distill", "-m pipeline distill"), "eval": ("distinit compare",)}
    return {stage for stage, commands in names.items() if any(command in output for command in commands)}


@pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / ".installed").exists(),
                    reason="needs make and the project's .venv (make setup)")
def test_make_dry_run_reruns_exactly_the_stale_stages(workdir):
    for name in ("Makefile", "requirements.txt", "requirements-pose.txt", "pyproject.toml"):
        shutil.copy2(REPO / name, workdir / name)  # copy2 keeps the old mtimes: setup stays done
    assert stage_commands(make_dry_run(workdir)) == {"demo-data", "extract", "distill", "eval"}
    fake_finished_run(stage_plan(demo_spec()))
    assert stage_commands(make_dry_run(workdir)) == set()
    assert stage_commands(make_dry_run(workdir, "DISTILL_SET=lr=0.01")) == {"distill", "eval"}
    assert stage_commands(make_dry_run(workdir, "TEACHERS=imagenet-torchvision")) == {"extract", "distill", "eval"}
    assert stage_commands(make_dry_run(workdir, "EVAL_SET=epochs=3")) == {"eval"}
    assert stage_commands(make_dry_run(workdir, "NPROC=2")) == {"distill", "eval"}
    assert stage_commands(make_dry_run(workdir, "NPROC=1")) == set()
    fake_finished_run(stage_plan(demo_spec()))
    os.utime(workdir / "configs" / "demo-distill.yaml")
    assert stage_commands(make_dry_run(workdir)) == set()
