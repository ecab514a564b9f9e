"""The targets clip dataset: a clip window of a video plus its teachers' aggregated targets, as a dict.

Sample `index` is clip `index // len(video_ids)` of video `video_ids[index % len(video_ids)]`:

    {"video": (T, crop, crop, 3) uint8 or (2, T, crop, crop) float32, "flipped": bool,
     "targets": {"<teacher>/<output>": (*shape) float32, ...}, "video_id": str, "target_video_id": str,
     "clip_start": seconds, "index": int, "num_teacher_frames": int,
     "crop_in_view": the fraction of the crop's area inside the teachers' view}

The crop keeps at least `crop_in_teacher_view` of its area inside the intersection of the view boxes (the part
of the frame each teacher saw, stored by stage one) of the teachers that feed the loss (a head, a weight > 0);
0 draws it anywhere (pipeline.clips.views.crop_box).

"targets" holds the outputs the student's heads learn and their masks' flags (`target_reads`; `target_outputs`
names others, e.g. every output of the store), and only the window's rows of them are read; a pose teacher's
stored keypoints arrive as "<teacher>/heatmaps" (K, G, G) drawn over this sample's crop, and its person_present
says whether a person was seen inside the crop (distill.keypoint_heatmaps). Per-video facts (rows and their
times, view boxes, files, layouts) come from one distill.clip_videos.ClipVideos, which the trainer builds once per
rank and shares between its sets; samples address videos by its table positions. "target_video_id" is the video whose teacher rows gave the targets: `video_id`, or with
`shuffle_targets` another video's (distill.shuffled_targets, the control that trains on wrong targets).
"video" is RGB bytes as decoded, (T, H, W, 3) uint8 (a view of the crop: the DataLoader's collate makes the one
host copy), which the trainer mirrors where "flipped" says and normalises on the device with the student's input
normalisation (pipeline.clips.views.video_to_device); or flow x, y in [-1, 1], (2, T, H, W) float32, mirrored here.
"flipped": the sample is mirrored left-right (its targets already are). "index" is the sample actually
returned: when a video fails to decode, the next sample stands in (see __getitem__).
Window placement and aggregation: distill.windows; crop/flip: pipeline.clips.views (of view boxes and targets:
distill.augment); keypoint heatmaps: distill.keypoint_heatmaps; flow: distill.flow; `cache_clips`: distill.clip_cache.

Randomness is a function of (seed, epoch, index) only, never of the worker or of the order samples are
drawn in, so any number of DataLoader workers yields the same samples. A key is an (index, epoch) pair, as
pipeline.clips.sampler.ResumableSampler yields them, so persistent workers (whose copy of the dataset never sees
the main process's set_epoch) draw each epoch's samples; a plain index takes the epoch of `set_epoch`.

Nothing that cannot cross a fork or a pickle is held open: the TargetStore reopens its HDF5 files per
process, probe results and the decode-failure count are per process (kept for the whole run by the
trainer's persistent workers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from distinit.distill import augment, flow
from distinit.distill.clip_cache import ClipCache
from distinit.distill.heads import head_specs_from_teachers
from distinit.distill.keypoint_heatmaps import KeypointTarget, keypoint_targets, render_window, rendered_teachers
from distinit.distill.losses import resolve_loss_weights
from distinit.distill.shuffled_targets import donor_rows_in_window, target_donors
from distinit.distill.windows import (
    TARGET_AGGREGATIONS, aggregate_targets, eval_window_start, frames_in_window, heatmap_flags,
    teacher_frame_indices, train_window_start,
)
from distinit.distill.clip_videos import ClipVideos, build_clip_videos, table_positions, video_files, video_paths, video_sizes
from distinit.pipeline.clips import views
from distinit.pipeline.clips.sampler import sample_key
from distinit.pipeline.clips.spec import ClipSpec
from distinit.pipeline.errors import ConfigError, DistinitError, VideoError
from distinit.pipeline.shards import ShardError, TargetStore, verify
from distinit.pipeline.shards.header import output_keys
from distinit.pipeline.video import read_clip
from distinit.pipeline.video.backends import resolve_decoder
from distinit.pipeline.video.probe import FrameLayout, probe_layout
from distinit.pipeline.video.skipping import DecodeFailures, sample_skipping_failures

logger = logging.getLogger(__name__)

__all__ = ["ClipSpec", "ClipVideos", "TargetClipDataset", "build_clip_videos", "open_targets", "split_videos",
           "video_files", "video_paths", "video_sizes"]


def open_targets(targets_dir: str | os.PathLike, *, full_verify: bool = False) -> TargetStore:
    """The stage-one cache, refused with a one-line ShardError naming the shard when the manifest is missing
    or the shards' row counts disagree with it; `full_verify` also runs `distinit verify` (reads every byte)."""
    if full_verify:
        problems = verify(targets_dir)
        if problems:
            raise ShardError(f"{problems[0]} ({len(problems)} problems; `distinit verify {targets_dir}` lists them)")
    store = TargetStore(targets_dir)
    if len(store) == 0:
        raise ShardError(f"{targets_dir}: the target cache has no rows (every video skipped?); check `distinit inspect {targets_dir}`")
    return store


def split_videos(video_ids: Sequence[str], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train ids, held-out ids), each sorted. A video is held out when a hash of (seed, id) falls below
    val_fraction, so it keeps its side when other videos come or go; at least one video is held out
    (and one kept) whenever there are two or more videos and val_fraction > 0."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    unique = sorted(set(video_ids))

    def position(video_id: str) -> float:
        digest = hashlib.sha256(f"{seed}:{video_id}".encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    ordered = sorted(unique, key=position)
    held_out = {video_id for video_id in ordered if position(video_id) < val_fraction}
    if val_fraction > 0 and len(ordered) >= 2:
        if not held_out:
            held_out = {ordered[0]}
        if len(held_out) == len(ordered):
            held_out.discard(ordered[-1])
    return [video_id for video_id in unique if video_id not in held_out], sorted(held_out)


def loss_teachers(teachers: Sequence[dict[str, Any]], loss_weights: Mapping[str, float] | None = None) -> list[str]:
    """The teachers (`describe()` dicts) whose targets feed the loss: a student head on one of their outputs and a
    loss weight above 0 (weights resolved as the loss resolves them); their view boxes bound the crop."""
    with_heads = list(dict.fromkeys(spec.teacher for spec in head_specs_from_teachers(list(teachers))))
    weights = resolve_loss_weights(dict(loss_weights or {}), with_heads)
    return [name for name in with_heads if weights.get(name, 1.0) > 0]


def target_reads(teachers: Sequence[dict[str, Any]], keypoints: Sequence[KeypointTarget]) -> list[str]:
    """The stored outputs a clip's targets are made from: each student head's output (a heatmaps head's: the
    keypoints it is drawn from) and its mask's flag, in the store's order."""
    drawn_from = {target.heatmaps_key: target.keypoints_key for target in keypoints}
    wanted = set()
    for spec in head_specs_from_teachers(list(teachers)):
        wanted.add(drawn_from.get(spec.key, spec.key))
        if spec.mask_key is not None:
            wanted.add(spec.mask_key)
    return [key for key in output_keys(teachers) if key in wanted]


def rendered_names(read_names: Sequence[str], keypoints: Sequence[KeypointTarget]) -> set[str]:
    """The target keys a clip has once its keypoints are drawn as heatmaps (distill.keypoint_heatmaps.render_window)."""
    names = set(read_names)
    for target in keypoints:
        if target.keypoints_key in names:
            names.discard(target.keypoints_key)
            names.add(target.heatmaps_key)
    return names


def video_view_boxes(boxes: Mapping[str, np.ndarray], teachers: Sequence[str]) -> np.ndarray:
    """(videos, 4): per video, the intersection of `teachers`' view boxes (distill.augment.intersect_view_boxes,
    for every video at once); the whole frame for no teacher."""
    if not teachers:
        count = len(next(iter(boxes.values()))) if boxes else 0
        return np.tile(np.array(augment.WHOLE_FRAME, dtype=np.float64), (count, 1))
    stacked = np.stack([np.asarray(boxes[teacher], dtype=np.float64) for teacher in teachers])  # (teachers, videos, 4)
    return augment.box_intersection(stacked, axis=0)


class TargetClipDataset(torch.utils.data.Dataset):
    """Clips of `video_ids` with their aggregated teacher targets (see the module docstring)."""

    def __init__(
        self, targets_dir: str | os.PathLike, video_ids: Sequence[str], clip: ClipSpec, *, train: bool,
        target_agg: str = "mean", clips_per_video: int = 1, seed: int = 0, cache_clips: str | os.PathLike | None = None,
        videos_root: str | os.PathLike | None = None, max_decode_failures: int = 50, decode_threads: int | None = 1,
        flow_method: str | None = None, temperature: float = 1.0, shuffle_targets: bool = False,
        prepared: str | os.PathLike | None = None, decoder: str = "auto", decode_device: str = "cpu",
        crop_in_teacher_view: float = 0.8, loss_weights: Mapping[str, float] | None = None,
        videos: ClipVideos | None = None, target_outputs: Sequence[str] | None = None,
    ):
        if flow_method is not None:  # a shorthand for ClipSpec.flow_method, as a CLI passes it
            clip = dataclasses.replace(clip, flow_method=flow_method)
        if target_agg not in TARGET_AGGREGATIONS:
            raise ConfigError(f"target aggregation must be one of {TARGET_AGGREGATIONS}, got {target_agg!r}")
        if clips_per_video < 1:
            raise ConfigError(f"clips_per_video must be >= 1, got {clips_per_video}")
        if not 0.0 <= crop_in_teacher_view <= 1.0:
            raise ConfigError(f"crop_in_teacher_view={crop_in_teacher_view!r} must lie in [0, 1] (the fraction of the "
                              "crop inside the teachers' view; 0 draws it anywhere)")
        self.crop_in_teacher_view = float(crop_in_teacher_view)
        self.clip, self.train, self.target_agg = clip, bool(train), target_agg
        self.temperature = float(temperature)  # the loss's: a window's classifier target mixes probabilities at it
        self.clips_per_video, self.seed, self.epoch = int(clips_per_video), int(seed), 0
        self.max_decode_failures, self.decode_threads = int(max_decode_failures), decode_threads
        self.decoder, self.decode_device = decoder, decode_device
        if videos is None:
            videos = build_clip_videos(open_targets(targets_dir), videos_root=videos_root, prepared=prepared,
                                       short_side=clip.short_side)
        self.videos, self.store = videos, videos.store
        self.targets_dir = self.store.targets_dir
        video_ids = list(video_ids)
        # Table positions of the videos clips come from: an int array, so workers share it (distill.clip_videos).
        self.positions = table_positions(videos, video_ids, self.targets_dir)
        if len(self.positions) == 0:
            raise DistinitError(f"{self.targets_dir}: no videos to make clips from" + (
                f" (all {len(video_ids)} given are missing or unprepared)" if video_ids else ""))
        # Targets as the loss sees them: keypoints drawn as heatmaps over each sample's crop.
        self.keypoint_targets = keypoint_targets(self.store.teachers)
        target_teachers = rendered_teachers(self.store.teachers)
        every_kind = {
            f"{teacher['name']}/{output['name']}": output.get("kind", "") for teacher in target_teachers
            for output in teacher["outputs"]
        }
        # Only the outputs the student's heads learn (and their masks) are read: a clip reads one or two rows of each.
        self.read_names = target_reads(self.store.teachers, self.keypoint_targets) if target_outputs is None \
            else list(target_outputs)
        rendered = rendered_names(self.read_names, self.keypoint_targets)
        self.output_kinds = {key: kind for key, kind in every_kind.items() if key in rendered}
        self.heatmap_masks = heatmap_flags(target_teachers)
        self.flip_plan = augment.heatmap_flip_plan(target_teachers)
        self.view_teachers = loss_teachers(self.store.teachers, loss_weights)
        self.view_boxes = video_view_boxes(videos.view_boxes, self.view_teachers)  # (videos, 4), by table position
        # Table position -> the position whose targets it takes (the shuffled control); None: its own.
        self.donors = None
        if shuffle_targets:
            every_video = videos.rows.ids.tolist()  # table order: position i is every_video[i]
            donors, table = target_donors(self.video_ids, self.seed, every_video), videos.rows.positions()
            self.donors = np.full(len(videos), -1, dtype=np.int64)
            for video_id, donor in donors.items():
                self.donors[table[video_id]] = table[donor]
        self.cache = None if cache_clips is None else ClipCache(
            cache_clips, short_side=clip.short_side, grid=clip.start_grid, decode_threads=decode_threads,
            flow_method=clip.flow_method if clip.modality == "flow" else None,
        )
        # Per process: the layouts of videos without a usable stored one, probed on first use.
        self._probed: dict[int, FrameLayout] = {}
        resolve_decoder(decoder, decode_device, resizing=True)  # not installed: one line here, not in a worker
        self.failures = DecodeFailures(self.max_decode_failures, (
            f"{{path}}: more than {self.max_decode_failures} videos failed to decode in one worker, the last with "
            "{reason}; check the videos or raise --max-decode-failures"))

    # ------------------------------------------------------------------ description
    def __len__(self) -> int:
        return len(self.positions) * self.clips_per_video

    @property
    def video_ids(self) -> list[str]:
        """The ids of the videos clips come from, in sample order (built on each call: not for the hot path)."""
        return [self.videos.rows.ids[position] for position in self.positions]

    @property
    def teachers(self) -> list[dict[str, Any]]:
        """The store's teacher `describe()` dicts (outputs with name, shape, kind, class_names, ...)."""
        return self.store.teachers

    @property
    def output_names(self) -> list[str]:
        return self.store.output_names

    def set_epoch(self, epoch: int) -> None:
        """The epoch of plain integer keys (the sampler's (index, epoch) keys carry their own; module docstring)."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ samples
    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = sample_key(key, self.epoch)
        return sample_skipping_failures(
            index, len(self), video_of=self._video_of,
            describe=lambda candidate: f"video {self.videos.rows.ids[self._video_of(candidate)]}",
            sample=lambda candidate: self._sample(candidate, epoch), failures=self.failures,
            none_decodes=f"{self.targets_dir}: none of the {len(self.positions)} videos decodes; check --videos",
        )

    def _video_of(self, index: int) -> int:
        """The table position of sample `index`'s video."""
        return int(self.positions[index % len(self.positions)])

    @property
    def donor_ids(self) -> dict[str, str] | None:
        """video id -> the id whose targets it takes under shuffle_targets (None without it), for reports and tests."""
        if self.donors is None:
            return None
        ids = self.videos.rows.ids
        return {ids[position]: ids[int(self.donors[position])] for position in self.positions}

    def path_of(self, video_id: str) -> Path:
        """The file `video_id`'s clips come from (for tools and tests; samples go by table position)."""
        return Path(self.videos.paths[self.videos.rows.positions()[video_id]])

    @property
    def decode_failures(self) -> int:
        return self.failures.count

    @property
    def failed_videos(self) -> set[str]:
        return {self.videos.rows.ids[position] for position in self.failures.videos}

    def _rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch if self.train else 0, index, int(self.train)])

    def _sample(self, index: int, epoch: int) -> dict[str, Any]:
        rng = self._rng(index, epoch)
        position = self._video_of(index)
        video_id = self.videos.rows.ids[position]
        fps, frame_count, cached, layout = self._video(position, video_id)
        times = self.videos.rows.times(position)  # in memory: only the window's rows are read
        teacher_frames = teacher_frame_indices(times, fps, frame_count)
        span, grid = self.clip.span_frames, self.clip.start_grid
        if self.train:
            start = train_window_start(teacher_frames, frame_count, span, grid, rng)
        else:
            clip_number = index // len(self.positions)
            start = eval_window_start(teacher_frames, frame_count, span, grid, clip_number, self.clips_per_video)
        target_position, stored_rows, window_length = self._window_rows(position, times, teacher_frames, start, fps)
        pixels = self._pixels(position, start, fps, cached, layout)  # (T, H, W, 3) uint8 RGB or (T, H, W, 2) float16 flow
        height, width = pixels.shape[1:3]
        view = self._view_box(position)  # of the video whose pixels these are, also when its targets are another's
        top, left = views.crop_box(height, width, self.clip.crop, rng if self.train else None, view_box=view,
                                     min_inside=self.crop_in_teacher_view)
        pixels = views.crop_frames(pixels, top, left, self.clip.crop)
        flipped = self.train and rng.random() < views.FLIP_PROBABILITY
        # Keypoints -> heatmaps over this crop, in pixels of the frame at the clip's short side.
        window_rows = render_window(stored_rows, self.keypoint_targets, height, width, top, left, self.clip.crop)
        targets = aggregate_targets(
            window_rows, self.output_kinds, self.target_agg, rng, self.heatmap_masks, self.temperature,
        )
        if self.clip.modality == "rgb":
            video = views.rgb_clip_tensor(pixels)  # (T, H, W, 3), a view; mirrored on the device when flipped
        else:
            # Mirroring the flow (not recomputing it on mirrored frames) keeps a flip exact.
            video = flow.flow_to_tensor(flow.flip_flow(pixels) if flipped else pixels)
        if flipped:
            targets = augment.flip_targets(targets, self.flip_plan)
        return {
            "video": video,
            "flipped": bool(flipped),
            "targets": {key: torch.from_numpy(np.array(value, dtype=np.float32)) for key, value in targets.items()},
            "video_id": video_id,
            "target_video_id": self.videos.rows.ids[target_position],
            "clip_start": start / fps,
            "index": index,
            "num_teacher_frames": window_length,
            "crop_in_view": views.inside_fraction(top, left, self.clip.crop, height, width, view),
        }

    def _view_box(self, position: int) -> augment.ViewBox:
        """The part of the video's frame every teacher feeding the loss saw (over all its rows: one frame size)."""
        return tuple(float(value) for value in self.view_boxes[position])

    def _window_rows(self, position: int, times: np.ndarray, teacher_frames: np.ndarray, start: int, fps: float):
        """(the table position of the video whose rows give the targets, its rows for the window starting at frame
        `start`: only the outputs in read_names, only the window's rows, how many rows that is)."""
        if self.donors is None:
            source, chosen = position, frames_in_window(teacher_frames, start, self.clip.span_frames)
        else:
            source = int(self.donors[position])
            chosen = donor_rows_in_window(self.videos.rows.times(source), times, fps, start, self.clip.span_frames)
        inside = np.flatnonzero(chosen)
        # The rows of a window are consecutive (times ascend): one slice, so one read per output.
        rows = slice(int(inside[0]), int(inside[-1]) + 1) if len(inside) == inside[-1] - inside[0] + 1 else inside
        try:
            return source, self.store.read_video_rows(source, rows, self.read_names), len(inside)
        except OSError as error:  # a fletcher32 checksum failure inside a shard
            raise ShardError(f"{self.targets_dir}: reading the rows of {self.videos.rows.ids[source]!r} failed ({error}); "
                             f"run `distinit verify {self.targets_dir}`") from None

    def _video(self, position: int, video_id: str):
        """(fps, frame_count, cache entry or None, layout or None): from the clip cache when there is one, else
        from the video's layout (looked up once per sample)."""
        if self.cache is not None:
            cached = self.cache.get(video_id, Path(self.videos.paths[position]))
            if cached is not None:
                return cached.fps, cached.frame_count, cached, None
        layout = self._layout(position)
        return layout.info.fps, layout.info.frame_count, None, layout

    def _layout(self, position: int) -> FrameLayout:
        """The video's layout: its stored record (stage one's, or prepare's, checked against the file's size when
        the table was built), else a probe, at most once per video per process."""
        path = self.videos.paths[position]
        if self.videos.layouts.has(position):
            return self.videos.layouts.layout(position, path)
        layout = self._probed.get(position)
        if layout is None:
            layout = probe_layout(path)
            if layout.info.frame_count < 1 or layout.info.fps <= 0:
                raise VideoError(path, "no frames or no frame rate")
            self._probed[position] = layout
        return layout

    def _pixels(self, position: int, start: int, fps: float, cached, layout: FrameLayout | None) -> np.ndarray:
        """The clip's frames at the short side, uncropped: RGB, or the flow between consecutive frames."""
        length = self.clip.frames if self.clip.modality == "flow" else self.clip.decoded_frames
        if cached is not None:
            return cached.read_clip(start, length, self.clip.stride)
        frames = read_clip(
            self.videos.paths[position], start / fps, self.clip.decoded_frames, stride=self.clip.stride,
            short_side=self.clip.short_side, threads=self.decode_threads, decoder=self.decoder,
            layout=layout, decode_device=self.decode_device,
        )
        return frames if self.clip.modality == "rgb" else flow.clip_flow(frames, self.clip.flow_method)
