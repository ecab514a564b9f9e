"""The list of demo videos to make: for each, its path, a seeded recipe, and a sources.csv row.

Every video draws its random numbers from its own seed stream (seed, kind, index), so the bytes of
one video do not depend on how many others there are, their order, or which thread made them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable

import numpy as np

from distinit.pipeline.demo_data import layout
from distinit.pipeline.demo_data.config import KNOWN_ACTION_CLASSES, DemoDataConfig
from distinit.pipeline.demo_data.encode import CutSpec, H264Settings, Mpeg4AviSettings, cut_clip, encode_frames
from distinit.pipeline.demo_data.motion import (
    POOL_MOTION_KINDS,
    MotionSpeeds,
    action_path,
    augment_photo,
    place_camera,
    pool_path,
    render,
)
from distinit.pipeline.demo_data.sources import SourceVideo, clips_per_source, find_source_video, load_photo


@dataclasses.dataclass(frozen=True)
class VideoJob:
    relative_path: str  # inside the output folder, e.g. "pool/000_bikes.mp4"
    source: str  # the clip or photo it is made from
    frame_count: int
    width: int
    height: int
    details: str  # the rest of the recipe, for sources.csv
    make: Callable[[Path], None]  # writes the video to the given path


def even(value: float) -> int:
    """Nearest even integer >= 2 (yuv420p needs even frame sizes)."""
    return max(2, 2 * round(value / 2))


def frame_size(short_side: int, aspect_ratio: float) -> tuple[int, int]:
    """(width, height) with the short side `short_side` and the given width/height ratio."""
    if aspect_ratio >= 1:
        return even(short_side * aspect_ratio), short_side
    return short_side, even(short_side / aspect_ratio)


def motion_speeds(config: DemoDataConfig) -> MotionSpeeds:
    return MotionSpeeds(
        pan=tuple(config.pan_speed_range),
        zoom=tuple(config.zoom_rate_range),
        rotation=tuple(config.rotation_speed_range),
    )


def pool_video_jobs(config: DemoDataConfig) -> list[VideoJob]:
    """Cuts of the real clips, shared out over the sources by duration."""
    sources = [find_source_video(name, config.ffmpeg_timeout_seconds) for name in config.source_videos]
    settings = H264Settings(gop=config.gop, crf=config.crf, preset=config.x264_preset)
    jobs = []
    counts = clips_per_source(sources, config.pool_clips_from_videos)
    for source in [source for source, count in zip(sources, counts) for _ in range(count)]:
        index = len(jobs)
        cut = plan_cut(source, config, np.random.default_rng([config.seed, layout.STREAM_POOL_VIDEO, index]))
        make = functools.partial(
            cut_clip, source.path, cut, fps=config.fps, settings=settings, timeout_seconds=config.ffmpeg_timeout_seconds
        )
        details = (
            f"start={cut.start_seconds:.3f}s crop={cut.crop_width}x{cut.crop_height}+{cut.crop_left}+{cut.crop_top}"
            f" mirror={int(cut.mirror)}"
        )
        relative_path = f"{layout.POOL_FOLDER}/{index:03d}_{source.name}.mp4"
        jobs.append(
            VideoJob(relative_path, source.name, cut.frame_count, cut.out_width, cut.out_height, details, make)
        )
    return jobs


def plan_cut(source: SourceVideo, config: DemoDataConfig, rng: np.random.Generator) -> CutSpec:
    """A frame-aligned random start, a random crop with the source's aspect, maybe mirrored."""
    frame_count = round(config.pool_clip_seconds * config.fps)
    # Keep a margin before the end: the last frames of a stream are not always decodable to the tick.
    spare_seconds = source.duration_seconds - 0.1 - frame_count / config.fps
    if spare_seconds < 0:
        frame_count, spare_seconds = math.floor((source.duration_seconds - 0.1) * config.fps), 0.0
    start_seconds = round(rng.uniform(0.0, spare_seconds) * config.fps) / config.fps
    fraction = rng.uniform(config.pool_min_crop_fraction, 1.0)
    crop_width = min(source.width, even(source.width * fraction))
    crop_height = min(source.height, even(source.height * fraction))
    crop_left = int(rng.integers(0, source.width - crop_width + 1))
    crop_top = int(rng.integers(0, source.height - crop_height + 1))
    mirror = bool(rng.random() < 0.5)
    out_width, out_height = frame_size(config.short_side, crop_width * source.sample_aspect_ratio / crop_height)
    return CutSpec(
        start_seconds, frame_count, crop_width, crop_height, crop_left, crop_top, mirror, out_width, out_height
    )


def pool_photo_jobs(config: DemoDataConfig) -> list[VideoJob]:
    """Random smooth camera paths (pan / zoom / rotate and their mixes) over the pool photos."""
    width, height = frame_size(config.short_side, config.photo_aspect_ratio)
    frame_count = round(config.pool_clip_seconds * config.fps)
    settings = H264Settings(gop=config.gop, crf=config.crf, preset=config.x264_preset)
    jobs = []
    for number in range(config.pool_clips_from_photos):
        seed = [config.seed, layout.STREAM_POOL_PHOTO, number]
        # Photos and motion kinds cycle with different periods, so pairs vary.
        photo = config.pool_photos[number % len(config.pool_photos)]
        kind = POOL_MOTION_KINDS[number % len(POOL_MOTION_KINDS)]
        index = config.pool_clips_from_videos + number
        make = functools.partial(
            _render_to, photo=photo, seed=seed, width=width, height=height, frame_count=frame_count, fps=config.fps,
            config=config, settings=settings, path_maker=functools.partial(pool_path, kind),
            min_crop_fraction=config.pool_min_crop_fraction, noise_std=config.pool_noise_std,
        )  # fmt: skip
        relative_path = f"{layout.POOL_FOLDER}/{index:03d}_{photo}_{kind}.mp4"
        jobs.append(VideoJob(relative_path, photo, frame_count, width, height, f"motion={kind}", make))
    return jobs


def action_jobs(config: DemoDataConfig) -> dict[str, list[VideoJob]]:
    """{class: jobs}: each class's videos cycle through the held-out photos."""
    width, height = frame_size(config.action_short_side, config.action_aspect_ratio)
    frame_count = round(config.action_clip_seconds * config.action_fps)
    settings = Mpeg4AviSettings(qscale=config.action_qscale, gop=config.action_fps)
    jobs: dict[str, list[VideoJob]] = {}
    for class_name in config.action_classes:
        class_id = KNOWN_ACTION_CLASSES.index(class_name)  # stable if classes are reordered or dropped
        jobs[class_name] = []
        for index in range(config.videos_per_class):
            photo = config.action_photos[index % len(config.action_photos)]
            make = functools.partial(
                _render_to, photo=photo, seed=[config.seed, layout.STREAM_ACTION, class_id, index], width=width,
                height=height, frame_count=frame_count, fps=config.action_fps, config=config, settings=settings,
                path_maker=functools.partial(action_path, class_name),
                min_crop_fraction=config.action_min_crop_fraction, noise_std=config.action_noise_std,
            )  # fmt: skip
            name = layout.action_video_name(photo, class_name, index)
            relative_path = f"{layout.ACTION_VIDEOS_FOLDER}/{class_name}/{name}"
            jobs[class_name].append(
                VideoJob(relative_path, photo, frame_count, width, height, f"motion={class_name}", make)
            )
    return jobs


def _render_to(
    target: Path, *, photo: str, seed: list[int], width: int, height: int, frame_count: int, fps: int,
    config: DemoDataConfig, settings, path_maker, min_crop_fraction: float, noise_std: float,
) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    picture = augment_photo(load_photo(photo), min_crop_fraction, rng)
    seconds = frame_count / fps
    path = path_maker(frame_count, seconds, width, height, motion_speeds(config), rng)
    coverage = rng.uniform(0.75, 1.0)
    placement = place_camera(path, picture.shape[1], picture.shape[0], width, height, coverage, rng)
    frames = render(picture, path, placement, width, height, noise_std, rng)
    encode_frames(frames, target, fps, settings, config.ffmpeg_timeout_seconds)
