"""The places365 scene teacher on random checkpoints saved exactly as its authors saved theirs.

The authors' `<arch>_places365.pth.tar` is a PyTorch 0.2 training checkpoint: {'epoch', 'arch', 'state_dict',
'best_prec1'}, every key with DataParallel's `module.` prefix, no BatchNorm `num_batches_tracked`, and for
DenseNet-161 the old `norm.1` / `conv.1` layer names. The fixtures below write that format (the legacy,
non-zip serialisation) from random weights, so the real loading path runs without the real files.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import distinit.extract.teachers.places365 as places365_module
from dataset_fixtures import write_test_pattern_videos
from distinit.extract.teachers import MissingWeightsError, create_teacher
from distinit.extract.teachers.places365_networks import PLACES365_ARCHITECTURES, build_places365_network
from distinit.pipeline.cli import main
from distinit.pipeline.errors import ConfigError, DistinitError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.shards import TargetStore, verify

# A few of the real first lines (two-level names included), then stand-ins in the same format.
REAL_FIRST_LINES = (
    "/a/airfield", "/a/airplane_cabin", "/a/airport_terminal", "/a/alcove", "/a/alley", "/a/arena/hockey"
)
_NEW_DENSE_LAYER_KEY = re.compile(r"(denselayer\d+\.(?:norm|conv))([12])\.")


def category_lines(count: int = 365) -> list[str]:
    paths = [*REAL_FIRST_LINES, *(f"/s/scene_{index:03d}" for index in range(len(REAL_FIRST_LINES), count))]
    return [f"{path} {index}" for index, path in enumerate(paths[:count])]


@pytest.fixture
def categories_file(tmp_path) -> Path:
    path = tmp_path / "categories_places365.txt"
    path.write_text("\n".join(category_lines()) + "\n")
    return path


@pytest.fixture(autouse=True)
def _private_torch_hub(tmp_path, monkeypatch):
    """Every test gets an empty torch hub folder and no network: nothing outside tmp_path is read or written."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("DISTINIT_OFFLINE", "1")


def save_authors_checkpoint(network: torch.nn.Module, arch: str, path: Path) -> Path:
    """`network`'s weights as the authors' PyTorch 0.2 DataParallel checkpoint of `arch`."""
    state_dict = {}
    for key, value in network.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # PyTorch 0.2 had no such buffer
        if arch == "densenet161":
            key = _NEW_DENSE_LAYER_KEY.sub(r"\1.\2.", key)  # "denselayer1.norm1.weight" -> "denselayer1.norm.1.weight"
        state_dict[f"module.{key}"] = value.clone()
    checkpoint = {"epoch": 90, "arch": arch, "state_dict": state_dict, "best_prec1": 54.74}
    torch.save(checkpoint, path, pickle_protocol=2, _use_new_zipfile_serialization=False)  # as PyTorch 0.2 wrote it
    return path


def random_frames(count: int, height: int = 60, width: int = 80) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)


def assert_same_weights(teacher, network: torch.nn.Module) -> None:
    loaded = teacher.model.state_dict()
    for key, value in network.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[key], value), key


def test_resnet18_checkpoint_in_authors_format_gives_the_authors_evaluation(tmp_path, categories_file):
    network = build_places365_network("resnet18").eval()
    checkpoint = save_authors_checkpoint(network, "resnet18", tmp_path / "resnet18_places365.pth.tar")
    teacher = create_teacher("places365", weights=str(checkpoint), arch="resnet18", categories=str(categories_file))
    assert_same_weights(teacher, network)
    frames = random_frames(3)
    logits = teacher(frames)["logits"]
    assert logits.shape == (3, 365) and logits.dtype == np.float32 and np.isfinite(logits).all()
    # The authors' validation view by torchvision's own transforms: short side 256, centre 224, ImageNet mean/std.
    import torchvision.transforms.v2.functional as transforms

    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    images = transforms.center_crop(transforms.resize(images, [256], antialias=True), [224])
    images = transforms.normalize(images, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = network(images).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    described = teacher.describe()
    assert described["weights_sha256"] == sha256_file(checkpoint)
    assert described["kind"] == "places365" and described["config"]["arch"] == "resnet18"
    assert described["input_size"] == 224 and described["decode_short_side"] == 256
    names = described["outputs"][0]["class_names"]
    assert len(names) == 365 and names[:2] == ["airfield", "airplane_cabin"] and names[5] == "arena/hockey"
    assert described["outputs"][0]["shape"] == [365] and described["outputs"][0]["dtype"] == "float16"


SMALL_ARCHITECTURES = ("resnet18", "wideresnet18")  # resnet50 and densenet161 take seconds to build, save and run
ARCHITECTURE_CASES = [
    name if name in SMALL_ARCHITECTURES else pytest.param(name, marks=pytest.mark.slow) for name in PLACES365_ARCHITECTURES
]


@pytest.mark.parametrize("arch", ARCHITECTURE_CASES)
def test_every_architecture_loads_its_authors_checkpoint(tmp_path, categories_file, arch):
    network = build_places365_network(arch).eval()
    checkpoint = save_authors_checkpoint(network, arch, tmp_path / f"{arch}_places365.pth.tar")
    if arch == "densenet161":
        saved_keys = torch.load(checkpoint, weights_only=True)["state_dict"]
        assert "module.features.denseblock1.denselayer1.norm.1.weight" in saved_keys
    teacher = create_teacher(
        "places365", weights=str(checkpoint), arch=arch, categories=str(categories_file), batch_size=1
    )
    assert_same_weights(teacher, network)
    logits = teacher(random_frames(1))["logits"]
    assert logits.shape == (1, 365) and np.isfinite(logits).all()


def test_wideresnet18_is_resnet18_without_the_stem_pooling():
    """The authors' wideresnet.py: ResNet-18's parameters, a 14x14 last feature map on a 224 crop."""
    wide, narrow = build_places365_network("wideresnet18"), build_places365_network("resnet18")
    assert {key: value.shape for key, value in wide.state_dict().items()} == {
        key: value.shape for key, value in narrow.state_dict().items()
    }
    features = {}
    wide.layer4.register_forward_hook(lambda module, inputs, output: features.setdefault("layer4", output))
    with torch.no_grad():
        wide.eval()(torch.zeros(1, 3, 224, 224))
    assert features["layer4"].shape == (1, 512, 14, 14)


def test_checkpoint_that_does_not_fit_is_one_line(tmp_path, categories_file):
    network = build_places365_network("resnet18")
    checkpoint = save_authors_checkpoint(network, "resnet18", tmp_path / "broken.pth.tar")
    saved = torch.load(checkpoint, weights_only=True)
    del saved["state_dict"]["module.fc.bias"]
    torch.save(saved, checkpoint)
    with pytest.raises(DistinitError) as missing:
        create_teacher("places365", weights=str(checkpoint), arch="resnet18", categories=str(categories_file))
    message = str(missing.value)
    assert "\n" not in message and "1 missing: fc.bias" in message and "arch=resnet18" in message
    with pytest.raises(DistinitError) as wrong_arch:
        create_teacher("places365", weights=str(checkpoint), arch="resnet50", categories=str(categories_file))
    assert "\n" not in str(wrong_arch.value) and "wrong shape" in str(wrong_arch.value)


def test_categories_file_is_checked(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("\n".join(category_lines(364)) + "\n")
    with pytest.raises(ConfigError, match=r"lists 364 classes, not 365"):
        create_teacher("places365", weights="random", arch="resnet18", categories=str(short))
    shuffled = tmp_path / "shuffled.txt"
    lines = category_lines()
    shuffled.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(ConfigError, match=r"line 1 is '/a/airplane_cabin 1', not '/x/name 0'"):
        create_teacher("places365", weights="random", arch="resnet18", categories=str(shuffled))
    with pytest.raises(ConfigError, match=r"categories file .* does not exist"):
        create_teacher("places365", weights="random", arch="resnet18", categories=str(tmp_path / "nowhere.txt"))
    with pytest.raises(ConfigError, match=r"arch='resnet152' is unknown"):
        create_teacher("places365", weights="random", arch="resnet152")
    swapped = tmp_path / "resnet18_places365.pth.tar"  # the options swapped: a checkpoint given as categories
    swapped.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ConfigError, match=r"is not text; pass the authors' categories_places365.txt"):
        create_teacher("places365", weights="random", arch="resnet18", categories=str(swapped))


def test_a_missing_given_file_is_listed_as_missing_not_as_fetched_on_first_use(tmp_path):
    sources = places365_module.Places365Teacher.weights_sources(
        weights=str(tmp_path / "mine.pth.tar"), categories=str(tmp_path / "cats.txt")
    )
    assert [(source.origin, source.present) for source in sources] == [
        ("weights=FILE", False), ("categories=FILE", False)
    ]


def test_random_weights_without_categories_read_nothing():
    teacher = create_teacher("places365", weights="random", arch="resnet18")
    names = teacher.describe()["outputs"][0]["class_names"]
    assert names[0] == "places365-000" and names[-1] == "places365-364"
    assert teacher.describe()["weights_sha256"] == "random-init"
    assert places365_module.Places365Teacher.weights_sources(weights="random") == ()


def test_offline_without_the_files_names_them(tmp_path, categories_file):
    with pytest.raises(MissingWeightsError) as no_weights:
        create_teacher("places365", categories=str(categories_file))
    message = str(no_weights.value)
    assert "\n" not in message and "resnet50_places365.pth.tar" in message and "places2.csail.mit.edu" in message
    checkpoint = save_authors_checkpoint(build_places365_network("resnet18"), "resnet18", tmp_path / "r18.pth.tar")
    with pytest.raises(MissingWeightsError) as no_categories:
        create_teacher("places365", weights=str(checkpoint), arch="resnet18")
    message = str(no_categories.value)
    assert "\n" not in message and "no class names at" in message and "categories_places365.txt" in message
    assert "categories=FILE" in message and "weights=FILE" not in message


def test_downloads_both_files_into_torch_hub_and_lists_them(tmp_path, categories_file, monkeypatch):
    """With the network allowed, the checkpoint and the class names land in torch hub's checkpoints folder."""
    published = tmp_path / "published"
    published.mkdir()
    save_authors_checkpoint(build_places365_network("resnet18"), "resnet18", published / "resnet18_places365.pth.tar")
    (published / "categories_places365.txt").write_bytes(categories_file.read_bytes())
    monkeypatch.delenv("DISTINIT_OFFLINE")
    monkeypatch.setattr(places365_module, "PLACES365_WEIGHTS_BASE_URL", f"{published.as_uri()}/")
    monkeypatch.setattr(places365_module, "PLACES365_CATEGORIES_URL", f"{published.as_uri()}/categories_places365.txt")
    hub_checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    before = places365_module.Places365Teacher.weights_sources(arch="resnet18")
    assert [source.local_path for source in before] == [
        hub_checkpoints / "resnet18_places365.pth.tar", hub_checkpoints / "categories_places365.txt"
    ]
    assert not any(source.present for source in before) and before[0].origin.endswith("/resnet18_places365.pth.tar")
    teacher = create_teacher("places365", arch="resnet18")
    assert teacher.describe()["weights_sha256"] == sha256_file(published / "resnet18_places365.pth.tar")
    assert teacher.describe()["outputs"][0]["class_names"][5] == "arena/hockey"
    assert all(source.present for source in places365_module.Places365Teacher.weights_sources(arch="resnet18"))
    given = places365_module.Places365Teacher.weights_sources(weights=str(published / "resnet18_places365.pth.tar"))
    assert given[0].local_path == published / "resnet18_places365.pth.tar" and given[0].present


@pytest.mark.slow
def test_cli_extract_writes_places365_logits(tmp_path, categories_file):
    videos = tmp_path / "videos"
    write_test_pattern_videos(videos, seconds=1)
    checkpoint = save_authors_checkpoint(build_places365_network("resnet18"), "resnet18", tmp_path / "r18.pth.tar")
    result = CliRunner().invoke(main, [
        "extract", "--data", "folder", "--root", str(videos), "--out", str(tmp_path / "targets"), "--shard-count", "1",
        "--workers", "0", "--no-progress", "--teachers", "places365", "--weights", f"places365={checkpoint}",
        "--teacher-option", f"places365.categories={categories_file}", "--teacher-option", "places365.arch=resnet18",
        "--teacher-option", "places365.batch_size=4",
    ])
    assert result.exit_code == 0, result.output
    targets_dir = next((tmp_path / "targets" / "folder").glob("*/manifest.json")).parent
    assert verify(targets_dir) == []
    store = TargetStore(targets_dir)
    assert store.output_names == ["places365/logits"]
    spec = store.output_spec("places365/logits")
    assert spec["kind"] == "logits" and spec["shape"] == [365] and spec["class_names"][5] == "arena/hockey"
    logits = store.rows_for_video("video_0")["places365/logits"]
    assert logits.shape == (2, 365) and np.isfinite(logits).all()  # 1 s at 2 teacher frames per second
