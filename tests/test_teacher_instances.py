"""Several teachers of one kind in one run, as named instances (`teachers: [r18=imagenet-torchvision, ...]`):
config parsing, then one extract (through the CLI) and one distill with two torchvision classifiers of random
weights, each with its own HDF5 group, student head and loss weight."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from distinit.distill.config import DistillConfig
from distinit.distill.data import TargetClipDataset
from distinit.distill.heads import head_specs_from_teachers
from distinit.distill.losses import DistillationLoss, parse_loss_weights
from distinit.distill.students import create_student
from distinit.distill.train import train
from distinit.extract.config import ExtractConfig, TeacherInstance
from distinit.extract.run import prepare
from distinit.extract.teachers import create_teacher
from distinit.pipeline.cli import main
from distinit.pipeline.clips.normalisation import normalise_video
from distinit.pipeline.clips.spec import ClipSpec
from distinit.pipeline.config import load_config, parse_overrides
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.shards import TargetStore, verify
from distinit.pipeline.shards.header import open_read_only
from distinit.pipeline.stages.graph import PipelineSpec, extract_inputs
from distinit.pipeline.video.binary import ffmpeg_binary

KIND = "imagenet-torchvision"
# Two small torchvision classifiers of one kind, told apart only by their instance names and options.
MODELS = {"r18": "resnet18", "small": "mobilenet_v3_small"}
LOSS_WEIGHTS = "r18=0.5,small=2"


# ---------------------------------------------------------------- config


def test_entries_are_kinds_or_named_instances():
    config = ExtractConfig(teachers=("imagenet-efficientnet-lite0", f"r18={KIND}", f" r50 = {KIND} "))
    assert config.teacher_instances == (
        TeacherInstance("imagenet-efficientnet-lite0", "imagenet-efficientnet-lite0"),
        TeacherInstance("r18", KIND), TeacherInstance("r50", KIND),
    )
    assert config.teachers == ("imagenet-efficientnet-lite0", f"r18={KIND}", f"r50={KIND}")
    # An instance named after its kind is the bare kind: one spelling, so one stage key.
    assert ExtractConfig(teachers=(f"{KIND}={KIND}",)).teachers == (KIND,)
    assert ExtractConfig(teachers=(f"a.b_c-1={KIND}",)).teacher_instances[0].name == "a.b_c-1"


@pytest.mark.parametrize("teachers, message", [
    ((KIND, KIND), f"teachers lists {KIND} twice; name each instance"),
    ((f"r18={KIND}", "r18=imagenet-efficientnet-lite0"), "name the instance 'r18' twice"),
    ((f"{KIND}", f"{KIND}={KIND}"), f"lists {KIND} twice"),
    ((f"a.b={KIND}", f"a_b={KIND}"), "'a.b' and 'a_b' differ only in"),
    ((f"r/18={KIND}",), "instance name 'r/18' must start with a letter or digit"),
    ((f"_r18={KIND}",), "instance name '_r18' must start"),
    ((f"={KIND}",), "instance name '' must start"),
    (("r18=",), "kind '' must start"),
    ((f"a=b={KIND}",), "instance name 'a=b'"),
    ((f"video_id={KIND}",), "'video_id' names a shard's own dataset"),
    ((), "option teachers is empty"),
])
def test_bad_entries_are_one_line_errors(teachers, message):
    with pytest.raises(ConfigError, match=message) as raised:
        ExtractConfig(teachers=teachers)
    assert "\n" not in str(raised.value)


def test_teacher_options_are_keyed_by_instance():
    config = ExtractConfig(teachers=(f"r18={KIND}", f"r50={KIND}"),
                           teacher_options={"r18": {"model": "resnet18"}, "r50": {"model": "resnet50"}})
    assert config.teacher_options["r50"] == {"model": "resnet50"}
    with pytest.raises(ConfigError, match=f"teacher_options name {KIND}, not a teacher instance.*are: r18, r50"):
        ExtractConfig(teachers=(f"r18={KIND}", f"r50={KIND}"), teacher_options={KIND: {"model": "resnet18"}})
    with pytest.raises(ConfigError, match="teacher_options for r18: expected a mapping"):
        ExtractConfig(teachers=(f"r18={KIND}",), teacher_options={"r18": "resnet18"})
    # A bare kind's instance is named after the kind, so today's configs read the same.
    assert ExtractConfig(teachers=(KIND,), teacher_options={KIND: {"model": "resnet18"}}).teacher_instances[0].name == KIND


def test_yaml_and_make_overrides_take_instances():
    # make TEACHERS=a,b passes teachers=[a,b]; a config file or --set teacher_options keys options by instance.
    overrides = parse_overrides([f"teachers=[r18={KIND},small={KIND}]", "teacher_options={r18: {model: resnet18}}"])
    config = load_config(ExtractConfig, None, overrides)
    assert [instance.name for instance in config.teacher_instances] == ["r18", "small"]
    assert config.teacher_options == {"r18": {"model": "resnet18"}}


def test_an_unknown_kind_names_the_known_ones_before_listing_videos(tmp_path):
    config = ExtractConfig(data="folder", root=str(tmp_path / "no-such-folder"), teachers=("r18=imagenet-vgg",))
    with pytest.raises(ConfigError, match=f"unknown teacher 'imagenet-vgg'; known teachers: .*{KIND}"):
        prepare(config)


def test_create_teacher_names_the_instance_and_keeps_the_kind():
    teacher = create_teacher(KIND, name="r18", model="resnet18", weights="random")
    described = teacher.describe()
    assert (teacher.name, teacher.kind) == ("r18", KIND) and (described["name"], described["kind"]) == ("r18", KIND)
    assert create_teacher(KIND, model="resnet18", weights="random").describe()["name"] == KIND
    with pytest.raises(ConfigError, match=f"teacher r18 \\({KIND}\\) has no option depth"):
        create_teacher(KIND, name="r18", depth=18)


def test_stage_key_holds_instances_and_their_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "r18.pth"
    weights.write_bytes(b"one")

    def extract_key(*extract_set: str) -> str:
        return extract_inputs(PipelineSpec(stamps_dir="stamps", extract_config=None, extract_set=extract_set), "demo").key

    named = extract_key(f"teachers=[r18={KIND}]", f"teacher_options={{r18: {{weights: {weights}}}}}")
    assert named != extract_key(f"teachers=[r50={KIND}]", f"teacher_options={{r50: {{weights: {weights}}}}}")
    assert extract_key(f"teachers=[{KIND}]") == extract_key(f"teachers=[{KIND}={KIND}]")
    weights.write_bytes(b"two")  # an instance's weights file is keyed by its content
    assert named != extract_key(f"teachers=[r18={KIND}]", f"teacher_options={{r18: {{weights: {weights}}}}}")


# ---------------------------------------------------------------- one extract, one distill


@pytest.fixture(scope="module")
def two_instance_targets(tmp_path_factory) -> Path:
    """6 tiny videos (2 s, 10 fps) extracted once through `distinit extract` with two imagenet-torchvision
    instances of random weights."""
    root = tmp_path_factory.mktemp("videos")
    for number, pattern in enumerate(("testsrc", "testsrc2", "smptebars", "rgbtestsrc", "smptehdbars", "yuvtestsrc")):
        command = [
            ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size=48x32:rate=10", "-t", "2",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "5", "-threads", "1", str(root / f"video_{number}.mp4"),
        ]
        subprocess.run(command, check=True, timeout=60)
    out = tmp_path_factory.mktemp("targets")
    arguments = [
        "extract", "--data", "folder", "--root", str(root), "--out", str(out), "--shard-count", "2", "--workers", "0",
        "--batch-size", "8", "--device", "cpu", "--no-progress", "--teachers", ",".join(f"{name}={KIND}" for name in MODELS),
    ]
    for name, model in MODELS.items():
        arguments += ["--teacher-option", f"{name}.model={model}", "--weights", f"{name}=random"]
    torch.manual_seed(0)  # the teachers' random weights (a module fixture runs before the per-test seeding)
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    return next((out / "folder").glob("*/manifest.json")).parent


@pytest.mark.slow
def test_each_instance_has_its_own_group_and_description(two_instance_targets):
    assert verify(two_instance_targets) == []
    store = TargetStore(two_instance_targets)
    described = {teacher["name"]: teacher for teacher in store.teachers}
    assert list(described) == list(MODELS)
    for name, model in MODELS.items():
        assert described[name]["kind"] == KIND and described[name]["config"]["model"] == model
    shard = next(two_instance_targets.glob("shard-*.h5"))
    with open_read_only(shard) as opened:
        assert {"r18", "small"} <= set(opened) and opened["r18/logits"].shape[1:] == (1000,)
    rows = store.rows_for_video("video_0")
    assert rows["r18/logits"].shape == rows["small/logits"].shape == (4, 1000)
    assert not torch.equal(torch.from_numpy(rows["r18/logits"]), torch.from_numpy(rows["small/logits"]))


@pytest.mark.slow
def test_one_distill_learns_a_head_per_instance_with_its_loss_weight(two_instance_targets, tmp_path):
    weights = parse_loss_weights(LOSS_WEIGHTS)  # what `distinit distill --loss-weights r18=0.5,small=2` passes
    config = DistillConfig(
        targets=str(two_instance_targets), out=str(tmp_path), student="r2plus1d_18", width="tiny", frames=4, stride=2,
        short_side=32, crop=32, batch_size=2, epochs=1, val_fraction=0.2, workers=0, optimizer="adamw", lr=2e-3,
        warmup_steps=2, save_every_steps=100, deterministic=True, seed=3, loss_weights=weights,
    )
    result = train(config, show_progress=False)
    checkpoint = torch.load(result.run_dir / "checkpoint-last.pt", weights_only=False)
    assert [head["key"] for head in checkpoint["architecture"]["heads"]] == ["r18/logits", "small/logits"]
    record = json.loads((result.run_dir / "log.jsonl").read_text().splitlines()[-1])
    terms = {"r18": record["train_kd/r18/logits"], "small": record["train_kd/small/logits"]}
    assert record["train_loss"] == pytest.approx(0.5 * terms["r18"] + 2.0 * terms["small"], rel=1e-5)

    # One batch through a student with these heads: the total sums the instances' terms, each with its own weight.
    store = TargetStore(two_instance_targets)
    heads = head_specs_from_teachers(store.teachers)
    loss_fn = DistillationLoss(heads, weights=weights)
    assert loss_fn.teacher_weights == {"r18": 0.5, "small": 2.0}
    dataset = TargetClipDataset(two_instance_targets, ["video_0", "video_1"], ClipSpec(4, 2, 32, 32), train=False)
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    student = create_student("r2plus1d_18", heads, width="tiny")
    with torch.no_grad():
        step = loss_fn(student(normalise_video(batch["video"], student.input_normalisation)), batch["targets"])
    assert set(step) == {"loss", "kd/r18/logits", "kd/small/logits"}
    torch.testing.assert_close(step["loss"], 0.5 * step["kd/r18/logits"] + 2.0 * step["kd/small/logits"])


def test_the_logged_agreement_follows_the_kind_not_the_instance_name():
    from distinit.distill.heads import HeadSpec
    from distinit.distill.train import agreement_key

    heads = [HeadSpec(key="places/logits", kind="logits", shape=(365,)),
             HeadSpec(key="objects/logits", kind="logits", shape=(1000,))]
    teachers = [{"name": "places", "kind": "places365"}, {"name": "objects", "kind": "imagenet-torchvision"}]
    assert agreement_key(heads, teachers) == "objects/logits"
    assert agreement_key(heads[:1], teachers) == "places/logits"  # no ImageNet teacher: the first classifier


def test_a_constructor_error_names_the_instance(tmp_path):
    from distinit.pipeline.weights.files import MissingWeightsError

    with pytest.raises(MissingWeightsError, match=r"^teacher r50 \(imagenet-torchvision\): weights file .* does not exist"):
        create_teacher("imagenet-torchvision", name="r50", weights=str(tmp_path / "missing.pth"))


def test_inspect_names_an_instance_with_its_kind():
    from distinit.pipeline.shards.inspect_targets import _teacher_line

    named = {"name": "scenes", "kind": "places365", "backend": "torchvision", "weights_sha256": "ab" * 32}
    assert _teacher_line(named).startswith("teacher scenes (places365): backend torchvision")
    assert _teacher_line({**named, "name": "places365"}).startswith("teacher places365: backend")
