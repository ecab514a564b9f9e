"""The embedded demo data: HMDB-51 layout, parseable splits, byte-identical rebuilds, decodable videos,
and camera-motion classes that really move the way their names say."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage

from distinit.pipeline.config import load_config
from distinit.pipeline.demo_data import DemoDataConfig, build_demo_data
from distinit.pipeline.demo_data import layout
from distinit.pipeline.demo_data.motion import MotionSpeeds, action_path, place_camera, pool_path, POOL_MOTION_KINDS
from distinit.pipeline.demo_data.sources import SourceVideo, clips_per_source
from distinit.pipeline.errors import ConfigError, DistinitError
from distinit.pipeline.video.binary import ffmpeg_binary

REPOSITORY = Path(__file__).resolve().parent.parent
SPLIT_LINE = re.compile(r"^(?P<video>[^\s]+\.avi) (?P<code>[012]) $")

TINY = DemoDataConfig(
    pool_clips_from_videos=2,
    pool_clips_from_photos=2,
    pool_clip_seconds=1.0,
    short_side=64,
    fps=10,
    gop=5,
    videos_per_class=3,
    unused_per_class=0,
    action_clip_seconds=1.0,
    action_short_side=96,
    action_fps=12,
    workers=2,
)


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    summary = build_demo_data(out, TINY)
    assert not summary.up_to_date
    assert summary.pool_clips == 4 and summary.action_videos == 18
    return out


def read_sources(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "sources.csv", newline="") as stream:
        return {row["path"]: row for row in csv.DictReader(stream)}


def decode_grey(path: Path, width: int, height: int) -> np.ndarray:
    """All frames as (T, H, W) float32 grey levels, decoded by ffmpeg."""
    done = subprocess.run(
        [ffmpeg_binary(), "-v", "error", "-nostdin", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert len(done.stdout) % (width * height) == 0, path
    return np.frombuffer(done.stdout, np.uint8).reshape(-1, height, width).astype(np.float32)


def codec_line(path: Path) -> str:
    text = subprocess.run([ffmpeg_binary(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    return re.search(r"Stream #.*Video: .*", text).group(0)


def tree_digests(out: Path) -> dict[str, str]:
    return {
        str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*"))
        if path.is_file()
    }


# ----------------------------------------------------------------------------- layout and splits


def test_tree_is_laid_out_like_hmdb51_plus_a_pool(tiny_build):
    pool = sorted(path.name for path in (tiny_build / "pool").iterdir())
    assert len(pool) == 4 and all(name.endswith(".mp4") for name in pool)
    for class_name in TINY.action_classes:
        videos = sorted((tiny_build / "actions" / "videos" / class_name).iterdir())
        assert len(videos) == 3
        for video in videos:
            assert video.suffix == ".avi" and " " not in video.name
            assert re.fullmatch(rf"({'|'.join(TINY.action_photos)})_{class_name}_\d\d\.avi", video.name)
        for split in (1, 2, 3):
            split_file = tiny_build / "actions" / "testTrainMulti_7030_splits" / f"{class_name}_test_split{split}.txt"
            assert split_file.is_file()
    for name in ("README.txt", "config.yaml", "provenance.json", "sources.csv", ".complete"):
        assert (tiny_build / name).is_file(), name
    assert not list(tiny_build.parent.glob(".demo.*")), "staging folders must be cleaned up"


def test_split_files_parse_and_list_every_video_once(tiny_build):
    splits_folder = tiny_build / "actions" / "testTrainMulti_7030_splits"
    assert len(list(splits_folder.iterdir())) == 3 * len(TINY.action_classes)
    for class_name in TINY.action_classes:
        on_disk = {path.name for path in (tiny_build / "actions" / "videos" / class_name).iterdir()}
        for split in (1, 2, 3):
            text = (splits_folder / f"{class_name}_test_split{split}.txt").read_text()
            lines = text.splitlines()
            matches = [SPLIT_LINE.match(line) for line in lines]
            assert all(matches), lines  # `name.avi 1 `, trailing space like the official files
            codes = {match["video"]: int(match["code"]) for match in matches}
            assert set(codes) == on_disk and len(codes) == len(lines)
            assert 1 in codes.values() and 2 in codes.values()


def test_hmdb51_adapter_reads_the_action_set(tiny_build):
    datasets = pytest.importorskip("distinit.pipeline.datasets")
    listing = datasets.load_dataset("hmdb51", tiny_build / "actions" / "videos")
    assert sorted(listing.class_names) == sorted(TINY.action_classes)
    assert len(listing.records) == 18


def test_split_codes_counts_and_per_split_shuffles():
    names = [f"v{index:02d}.avi" for index in range(20)]
    by_split = [layout.split_codes(names, 6, 2, seed=0, class_index=1, split=split) for split in (1, 2, 3)]
    for codes in by_split:
        counts = [list(codes.values()).count(code) for code in (0, 1, 2)]
        assert counts == [2, 12, 6]
    assert by_split[0] != by_split[1] != by_split[2]
    assert layout.split_codes(names, 6, 2, 0, 1, 1) == by_split[0]
    assert layout.split_file_text({"b.avi": 2, "a.avi": 1}) == "a.avi 1 \nb.avi 2 \n"


# ----------------------------------------------------------------------------- determinism and re-runs


def test_two_builds_are_byte_identical(tiny_build, tmp_path):
    other = tmp_path / "demo"
    build_demo_data(other, dataclasses.replace(TINY, workers=1))  # thread count must not matter
    first, second = tree_digests(tiny_build), tree_digests(other)
    different = sorted(name for name in first if first[name] != second.get(name))
    # config.yaml records `workers`; every video, split file and README must match byte for byte.
    assert set(first) == set(second) and different == ["config.yaml"]


def test_rerun_is_a_no_op_and_a_changed_option_rebuilds(tmp_path):
    config = dataclasses.replace(TINY, pool_clips_from_videos=1, pool_clips_from_photos=1,
                                 action_classes=("zoom_in", "zoom_out"), videos_per_class=2)  # fmt: skip
    out = tmp_path / "demo"
    build_demo_data(out, config)
    video = next((out / "pool").iterdir())
    stamp_before = (out / ".complete").read_text()
    modified = video.stat().st_mtime_ns
    again = build_demo_data(out, dataclasses.replace(config, workers=1))
    assert again.up_to_date and video.stat().st_mtime_ns == modified
    assert any("nothing rebuilt" in line for line in again.lines())
    changed = build_demo_data(out, dataclasses.replace(config, seed=1))
    assert not changed.up_to_date and (out / ".complete").read_text() != stamp_before
    # A damaged file (wrong size) also triggers a rebuild.
    next((out / "pool").iterdir()).write_bytes(b"broken")
    assert not build_demo_data(out, dataclasses.replace(config, seed=1)).up_to_date


def test_refuses_to_replace_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DistinitError, match="mine: folder holds other files"):
        build_demo_data(tmp_path / "mine", TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- videos decode


def test_every_video_decodes_with_its_recorded_size_and_frame_count(tiny_build):
    sources = read_sources(tiny_build)
    assert len(sources) == 4 + 18
    for relative_path, row in sources.items():
        path = tiny_build / relative_path
        frames = decode_grey(path, int(row["width"]), int(row["height"]))
        assert len(frames) == int(row["frames"]), relative_path
        assert min(int(row["width"]), int(row["height"])) == (64 if relative_path.startswith("pool/") else 96)
        if relative_path.startswith("pool/"):
            assert "Video: h264" in codec_line(path) and "yuv420p" in codec_line(path)
        else:
            assert "Video: mpeg4" in codec_line(path) and "XVID" in codec_line(path)
        assert frames.std() > 5, f"{relative_path} looks blank"


def test_pool_keyframes_follow_the_gop(tiny_build):
    probe = pytest.importorskip("distinit.pipeline.video.probe")
    for path in sorted((tiny_build / "pool").iterdir()):
        keyframes = probe.probe_layout(path).keyframe_indices
        assert list(keyframes) == list(range(0, len(keyframes) * TINY.gop, TINY.gop)), path.name


# ----------------------------------------------------------------------------- motion is what the class says


def _best(candidates, error) -> float:
    return min(candidates, key=error)


def _centre_error(reference: np.ndarray, warped: np.ndarray) -> float:
    height, width = reference.shape
    top, left = height // 4, width // 4
    return float(np.mean(np.abs(reference[top:-top, left:-left] - warped[top:-top, left:-left])))


def _warp_about_centre(frame: np.ndarray, scale: float, angle: float) -> np.ndarray:
    """The frame as seen after the content grew by `scale` and turned by `angle` (radians, clockwise on
    screen, y down) about the frame centre."""
    centre = (np.array(frame.shape) - 1) / 2  # (row, col)
    cosine, sine = math.cos(angle), math.sin(angle)
    # output (row, col) -> input: inverse rotation, then inverse scale; matrix acts on (row, col).
    matrix = np.array([[cosine, -sine], [sine, cosine]]) / scale
    return scipy.ndimage.affine_transform(frame, matrix, offset=centre - matrix @ centre, order=1, mode="nearest")


def measured_motion(path: Path, width: int, height: int, later_index: int) -> tuple[float, float, float]:
    """(horizontal shift in px, scale factor, rotation in degrees) of the content from the first frame
    to frame `later_index`, each found by brute force on the decoded frames."""
    frames = decode_grey(path, width, height)
    first, later = frames[0], frames[later_index]
    shifts = range(-40, 41)
    shift = _best(shifts, lambda dx: _centre_error(later, np.roll(first, dx, axis=1)))
    scale = _best(np.exp(np.linspace(-0.4, 0.4, 41)), lambda s: _centre_error(later, _warp_about_centre(first, s, 0.0)))
    angle = _best(np.radians(np.arange(-30, 31)), lambda a: _centre_error(later, _warp_about_centre(first, 1.0, a)))
    return float(shift), float(scale), math.degrees(angle)


def test_motion_classes_move_the_way_their_names_say(tiny_build):
    """Camera conventions: pan_left slides the scene right, zoom_in makes it grow, rotate_cw rolls the
    camera clockwise so the scene turns counter-clockwise on screen."""
    sources = read_sources(tiny_build)
    for relative_path, row in sources.items():
        if not relative_path.startswith("actions/"):
            continue
        half_a_second = round(0.5 * TINY.action_fps)
        shift, scale, angle = measured_motion(
            tiny_build / relative_path, int(row["width"]), int(row["height"]), half_a_second
        )
        class_name = relative_path.split("/")[2]
        expected = {
            "pan_left": shift >= 3,
            "pan_right": shift <= -3,
            "zoom_in": scale > 1.04,
            "zoom_out": scale < 1 / 1.04,
            "rotate_cw": angle <= -3,
            "rotate_ccw": angle >= 3,
        }[class_name]
        assert expected, f"{relative_path}: shift {shift}, scale {scale:.3f}, angle {angle:.1f}"


def test_camera_placement_keeps_every_view_inside_the_photo():
    speeds = MotionSpeeds(pan=(0.15, 0.35), zoom=(0.2, 0.4), rotation=(15.0, 35.0))
    rng = np.random.default_rng(0)
    width, height, photo_width, photo_height = 160, 120, 451, 300
    paths = [action_path(name, 40, 2.0, width, height, speeds, rng) for name in TINY.action_classes]
    paths += [pool_path(kind, 40, 4.0, width, height, speeds, rng) for kind in POOL_MOTION_KINDS]
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) * [(width - 1) / 2, (height - 1) / 2]
    for path in paths:
        placement = place_camera(path, photo_width, photo_height, width, height, 1.0, rng)
        for t in range(path.frame_count):
            step = placement.scale * math.exp(path.log_zoom[t])
            rotation = np.array([[math.cos(path.angle[t]), -math.sin(path.angle[t])],
                                 [math.sin(path.angle[t]), math.cos(path.angle[t])]])  # fmt: skip
            centre = np.array([placement.center_x, placement.center_y]) + placement.scale * np.array(
                [path.offset_x[t], path.offset_y[t]]
            )
            points = centre + step * corners @ rotation.T
            assert points.min() >= -1e-6 and points[:, 0].max() <= photo_width - 1 + 1e-6
            assert points[:, 1].max() <= photo_height - 1 + 1e-6


# ----------------------------------------------------------------------------- config


def test_yaml_defaults_match_the_dataclass_and_name_every_option():
    path = REPOSITORY / "configs" / "demo-data.yaml"
    assert load_config(DemoDataConfig, path) == DemoDataConfig()
    import yaml

    assert set(yaml.safe_load(path.read_text())) == {field.name for field in dataclasses.fields(DemoDataConfig)}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"action_photos": ("chelsea", "astronaut")}, "both pool_photos and action_photos"),
        ({"action_classes": ("pan_up", "zoom_in")}, "unknown name"),
        ({"action_classes": ("zoom_in",)}, "at least 2 classes"),
        ({"videos_per_class": 2, "unused_per_class": 1}, "fewer than 2 videos"),
        ({"pan_speed_range": (0.3, 0.1)}, "pan_speed_range"),
        ({"short_side": 63}, "even number"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        DemoDataConfig(**options)


def test_clips_are_shared_out_by_source_duration():
    def source(name, seconds):
        return SourceVideo(name, Path(name), seconds, 100, 100, 1.0)

    sources = [source("long", 10.0), source("mid", 5.3), source("short", 4.0)]
    assert clips_per_source(sources, 15) == [8, 4, 3]
    assert sum(clips_per_source(sources, 7)) == 7
    assert clips_per_source(sources, 0) == [0, 0, 0]
