"""The targets clip dataset: a clip window of a video plus its teachers' aggregated targets, as a dict.

Sample `index` is clip `index // len(video_ids)` of video `video_ids[index % len(video_ids)]`:

    {"video": (T, crop, crop, 3) uint8 or (2, T, crop, crop) float32, "flipped": bool,
     "targets": {"<teacher>/<output>": (*shape) float32, ...}, "video_id": str, "target_video_id": str,
     "clip_start": seconds, "index": int, "num_teacher_frames": int,
     "crop_in_view": the fraction of the crop's area inside the teachers' view}

The crop keeps at least `crop_in_teacher_view` of its area inside the intersection of the view boxes (the part
of the frame each teacher saw, stored by stage one) of the teachers that feed the loss (a head, a weight > 0);
0 draws it anywhere (distill.augment.crop_box).

Every output of the store is in "targets" (flags and counts too), except that a pose teacher's stored
keypoints arrive as "<teacher>/heatmaps" (K, G, G) drawn over this sample's crop, and its person_present
says whether a person was seen inside the crop (distill.keypoint_heatmaps); the trainer picks what its
heads need. "target_video_id" is the video whose teacher rows gave the targets: `video_id`, or with
`shuffle_targets` another video's (distill.shuffled_targets, the control that trains on wrong targets).
"video" is RGB bytes as decoded, (T, H, W, 3) uint8 (a view of the crop: the DataLoader's collate makes the one
host copy), which the trainer mirrors where "flipped" says and normalises on the device with the student's input
normalisation (distill.augment.video_to_device); or flow x, y in [-1, 1], (2, T, H, W) float32, mirrored here.
"flipped": the sample is mirrored left-right (its targets already are). "index" is the sample actually
returned: when a video fails to decode, the next sample stands in (see __getitem__).
Window placement and aggregation: distill.windows; crop/flip: distill.augment; keypoint heatmaps:
distill.keypoint_heatmaps; flow: distill.flow; `cache_clips`: distill.clip_cache.

Randomness is a function of (seed, epoch, index) only, never of the worker or of the order samples are
drawn in, so any number of DataLoader workers yields the same samples. A key is an (index, epoch) pair, as
distill.sampler.ResumableSampler yields them, so persistent workers (whose copy of the dataset never sees
the main process's set_epoch) draw each epoch's samples; a plain index takes the epoch of `set_epoch`.

Nothing that cannot cross a fork or a pickle is held open: the TargetStore reopens its HDF5 files per
process, probe results and the decode-failure count are per process (kept for the whole run by the
trainer's persistent workers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from distill import augment, flow
from distill.clip_cache import ClipCache
from distill.heads import head_specs_from_teachers
from distill.keypoint_heatmaps import keypoint_targets, render_window, rendered_teachers
from distill.losses import resolve_loss_weights
from distill.sampler import sample_key
from distill.shuffled_targets import donor_rows_in_window, target_donors
from distill.windows import (
    TARGET_AGGREGATIONS, ClipSpec, aggregate_targets, eval_window_start, frames_in_window, heatmap_flags,
    teacher_frame_indices, train_window_start,
)
from pipeline.datasets import read_manifest
from pipeline.errors import ConfigError, DistinitError, VideoError
from pipeline.shards import ShardError, TargetStore, verify
from pipeline.video.skipping import DecodeFailures, sample_skipping_failures
from pipeline.prepared import prepared_videos
from pipeline.shards import stored_layouts
from pipeline.video import read_clip
from pipeline.video.backends import resolve_decoder
from pipeline.video.layout_record import layout_from_record, layout_record
from pipeline.video.probe import FrameLayout, probe_layout

logger = logging.getLogger(__name__)

__all__ = ["ClipSpec", "TargetClipDataset", "open_targets", "split_videos", "video_paths"]


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


MOVED_VIDEOS_HINT = "pass --videos <folder> (make: DISTILL_ARGS='--videos <folder>')"


def video_paths(store: TargetStore, videos_root: str | os.PathLike | None = None) -> dict[str, Path]:
    """video id -> file, from the targets folder's videos manifest, under `videos_root` (default: the root
    stage one was given, as its manifest recorded; a relative one is taken from the current folder)."""
    extra = store.manifest.get("extra") or {}
    manifest_name = extra.get("videos_manifest", "videos.jsonl")
    root = videos_root if videos_root is not None else extra.get("videos_root")
    manifest_file = store.targets_dir / manifest_name
    if root is None:
        raise DistinitError(f"{store.targets_dir}: the manifest does not say where the videos are; {MOVED_VIDEOS_HINT}")
    if not Path(root).is_dir():
        named_by = "--videos" if videos_root is not None else "the targets manifest"
        looked_from = "" if Path(root).is_absolute() else f", looked for from {Path.cwd()}"
        raise DistinitError(f"{root}: the videos folder {named_by} names is not there{looked_from}; {MOVED_VIDEOS_HINT}")
    if not manifest_file.is_file():
        raise DistinitError(f"{manifest_file}: the list of videos is missing; re-run `distinit extract --finalize` on {store.targets_dir}")
    return {record.id: Path(record.path) for record in read_manifest(manifest_file, root)}


def video_sizes(store: TargetStore) -> dict[str, int | None]:
    """video id -> its file size when stage one listed it (the videos manifest's rows)."""
    manifest_name = (store.manifest.get("extra") or {}).get("videos_manifest", "videos.jsonl")
    try:
        lines = (store.targets_dir / manifest_name).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    rows = [json.loads(line) for line in lines if line.strip()]
    return {row["id"]: row.get("size") for row in rows}


class TargetClipDataset(torch.utils.data.Dataset):
    """Clips of `video_ids` with their aggregated teacher targets (see the module docstring)."""

    def __init__(
        self, targets_dir: str | os.PathLike, video_ids: Sequence[str], clip: ClipSpec, *, train: bool,
        target_agg: str = "mean", clips_per_video: int = 1, seed: int = 0, cache_clips: str | os.PathLike | None = None,
        videos_root: str | os.PathLike | None = None, max_decode_failures: int = 50, decode_threads: int | None = 1,
        flow_method: str | None = None, temperature: float = 1.0, shuffle_targets: bool = False,
        prepared: str | os.PathLike | None = None, decoder: str = "auto", decode_device: str = "cpu",
        crop_in_teacher_view: float = 0.8, loss_weights: Mapping[str, float] | None = None,
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
        self.store = open_targets(targets_dir)
        self.targets_dir = self.store.targets_dir
        self.video_ids = list(video_ids)
        if not self.video_ids:
            raise DistinitError(f"{self.targets_dir}: no videos to make clips from")
        known = set(self.store.video_ids())  # builds the row index once; workers inherit it
        unknown = [video_id for video_id in self.video_ids if video_id not in known]
        if unknown:
            raise DistinitError(f"{self.targets_dir}: {len(unknown)} videos have no target rows, e.g. {unknown[0]!r}")
        self.paths, self.layout_records = self._resolve_paths(videos_root, prepared)
        # Targets as the loss sees them: keypoints drawn as heatmaps over each sample's crop.
        self.keypoint_targets = keypoint_targets(self.store.teachers)
        target_teachers = rendered_teachers(self.store.teachers)
        self.output_kinds = {
            f"{teacher['name']}/{output['name']}": output.get("kind", "") for teacher in target_teachers
            for output in teacher["outputs"]
        }
        self.heatmap_masks = heatmap_flags(target_teachers)
        self.flip_plan = augment.heatmap_flip_plan(target_teachers)
        self.view_teachers = loss_teachers(self.store.teachers, loss_weights)
        self._view_boxes: dict[str, augment.ViewBox] = {}  # per process, one box per video
        # video -> the video whose targets it takes; None trains on each video's own targets.
        self.donors = target_donors(self.video_ids, self.seed, sorted(known)) if shuffle_targets else None
        self.store.close()  # the parent's HDF5 handles must not be shared with forked workers
        self.cache = None if cache_clips is None else ClipCache(
            cache_clips, short_side=clip.short_side, grid=clip.start_grid, decode_threads=decode_threads,
            flow_method=clip.flow_method if clip.modality == "flow" else None,
        )
        # Per process: each video's layout as its compact record (a Kinetics-size run would hold ~0.6 GB of frame
        # times per worker as FrameLayouts), rebuilt per clip (microseconds); a probe's record joins on first use.
        self._probed: dict[str, dict[str, Any]] = {}
        resolve_decoder(decoder, decode_device, resizing=True)  # not installed: one line here, not in a worker
        self.failures = DecodeFailures(self.max_decode_failures, (
            f"{{path}}: more than {self.max_decode_failures} videos failed to decode in one worker, the last with "
            "{reason}; check the videos or raise --max-decode-failures"))

    def _resolve_paths(self, videos_root, prepared) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
        """(video id -> the file clips come from, video id -> its stored layout record): the originals with stage
        one's layouts, or `prepare`'s copies with theirs (a video prepare skipped has none: skipped like a
        missing file)."""
        if prepared is not None:
            copies = prepared_videos(prepared, short_side=self.clip.short_side, sources=video_sizes(self.store))
            every_path = {video_id: path for video_id, (path, _) in copies.items()}
            records = {video_id: record for video_id, (_, record) in copies.items()}
            for video_id in self.video_ids:
                every_path.setdefault(video_id, Path(prepared) / "not-prepared" / video_id)
        else:
            every_path, records = video_paths(self.store, videos_root), stored_layouts(self.targets_dir)
        missing_ids = [video_id for video_id in self.video_ids if video_id not in every_path]
        if missing_ids:
            raise DistinitError(f"{self.targets_dir}: video {missing_ids[0]!r} is not in the videos manifest ({len(missing_ids)} missing)")
        paths = {video_id: every_path[video_id] for video_id in self.video_ids}
        absent = [path for path in paths.values() if not path.exists()]
        if len(absent) == len(paths):
            raise DistinitError(f"{absent[0]}: none of the {len(paths)} videos exist there; if they moved, {MOVED_VIDEOS_HINT}")
        if absent:
            logger.warning("%d of %d videos are missing (e.g. %s); their clips will be skipped", len(absent), len(paths), absent[0])
        return paths, {video_id: records[video_id] for video_id in self.video_ids if video_id in records}

    # ------------------------------------------------------------------ description
    def __len__(self) -> int:
        return len(self.video_ids) * self.clips_per_video

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
            index, len(self), video_of=self._video_of, describe=lambda candidate: f"video {self._video_of(candidate)}",
            sample=lambda candidate: self._sample(candidate, epoch), failures=self.failures,
            none_decodes=f"{self.targets_dir}: none of the {len(self.video_ids)} videos decodes; check --videos",
        )

    def _video_of(self, index: int) -> str:
        return self.video_ids[index % len(self.video_ids)]

    @property
    def decode_failures(self) -> int:
        return self.failures.count

    @property
    def failed_videos(self) -> set:
        return self.failures.videos

    def _rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch if self.train else 0, index, int(self.train)])

    def _sample(self, index: int, epoch: int) -> dict[str, Any]:
        rng = self._rng(index, epoch)
        video_id = self.video_ids[index % len(self.video_ids)]
        fps, frame_count, cached, layout = self._video(video_id)
        rows = self._rows(video_id)
        teacher_frames = teacher_frame_indices(rows["t_seconds"], fps, frame_count)
        span, grid = self.clip.span_frames, self.clip.start_grid
        if self.train:
            start = train_window_start(teacher_frames, frame_count, span, grid, rng)
        else:
            clip_number = index // len(self.video_ids)
            start = eval_window_start(teacher_frames, frame_count, span, grid, clip_number, self.clips_per_video)
        target_video_id, stored_rows = self._window_rows(video_id, rows, teacher_frames, start, fps)
        pixels = self._pixels(video_id, start, fps, cached, layout)  # (T, H, W, 3) uint8 RGB or (T, H, W, 2) float16 flow
        height, width = pixels.shape[1:3]
        view = self._view_box(video_id)  # of the video whose pixels these are, also when its targets are another's
        top, left = augment.crop_box(height, width, self.clip.crop, rng if self.train else None, view_box=view,
                                     min_inside=self.crop_in_teacher_view)
        pixels = augment.crop_frames(pixels, top, left, self.clip.crop)
        flipped = self.train and rng.random() < augment.FLIP_PROBABILITY
        # Keypoints -> heatmaps over this crop, in pixels of the frame at the clip's short side.
        window_rows = render_window(stored_rows, self.keypoint_targets, height, width, top, left, self.clip.crop)
        targets = aggregate_targets(
            window_rows, self.output_kinds, self.target_agg, rng, self.heatmap_masks, self.temperature,
        )
        if self.clip.modality == "rgb":
            video = augment.rgb_clip_tensor(pixels)  # (T, H, W, 3), a view; mirrored on the device when flipped
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
            "target_video_id": target_video_id,
            "clip_start": start / fps,
            "index": index,
            "num_teacher_frames": len(stored_rows[self.output_names[0]]),
            "crop_in_view": augment.inside_fraction(top, left, self.clip.crop, height, width, view),
        }

    def _view_box(self, video_id: str) -> augment.ViewBox:
        """The part of the video's frame every teacher feeding the loss saw (over all its rows: one frame size)."""
        box = self._view_boxes.get(video_id)
        if box is None:
            try:
                boxes = self.store.view_boxes_for_video(video_id)
            except OSError as error:  # a fletcher32 checksum or decompression failure inside a shard
                raise ShardError(f"{self.targets_dir}: reading the view boxes of {video_id!r} failed ({error}); run "
                                 f"`distinit verify {self.targets_dir}`") from None
            box = self._view_boxes[video_id] = augment.intersect_view_boxes(
                [boxes[teacher] for teacher in self.view_teachers])
        return box

    def _window_rows(self, video_id: str, rows: dict[str, Any], teacher_frames: np.ndarray, start: int, fps: float):
        """(the video whose rows give the targets, its rows for the window starting at frame `start`)."""
        if self.donors is None:
            inside = frames_in_window(teacher_frames, start, self.clip.span_frames)
            return video_id, {key: rows[key][inside] for key in self.output_names}
        donor = self.donors[video_id]
        donor_rows = self._rows(donor)
        chosen = donor_rows_in_window(donor_rows["t_seconds"], rows["t_seconds"], fps, start, self.clip.span_frames)
        return donor, {key: donor_rows[key][chosen] for key in self.output_names}

    def _rows(self, video_id: str) -> dict[str, Any]:
        try:
            return self.store.rows_for_video(video_id)
        except OSError as error:  # a fletcher32 checksum or decompression failure inside a shard
            raise ShardError(
                f"{self.targets_dir}: reading the rows of {video_id!r} failed ({error}); run `distinit verify {self.targets_dir}`"
            ) from None

    def _video(self, video_id: str):
        """(fps, frame_count, cache entry or None, layout or None): from the clip cache when there is one, else
        from the video's layout (looked up once per sample)."""
        path = self.paths[video_id]
        if self.cache is not None:
            cached = self.cache.get(video_id, path)
            if cached is not None:
                return cached.fps, cached.frame_count, cached, None
        layout = self._layout(video_id)
        return layout.info.fps, layout.info.frame_count, None, layout

    def _layout(self, video_id: str) -> FrameLayout:
        """The video's layout: its stored record (stage one's, or prepare's), else a probe (no record, or the file's
        size changed since it was stored), probed at most once per video per process."""
        path = self.paths[video_id]
        record = self._probed.get(video_id) or self.layout_records.get(video_id)
        layout = layout_from_record(path, record)
        if layout is None:
            layout = probe_layout(path)
            if layout.info.frame_count < 1 or layout.info.fps <= 0:
                raise VideoError(path, "no frames or no frame rate")
            self._probed[video_id] = layout_record(layout)
        return layout

    def _pixels(self, video_id: str, start: int, fps: float, cached, layout: FrameLayout | None) -> np.ndarray:
        """The clip's frames at the short side, uncropped: RGB, or the flow between consecutive frames."""
        length = self.clip.frames if self.clip.modality == "flow" else self.clip.decoded_frames
        if cached is not None:
            return cached.read_clip(start, length, self.clip.stride)
        frames = read_clip(
            self.paths[video_id], start / fps, self.clip.decoded_frames, stride=self.clip.stride,
            short_side=self.clip.short_side, threads=self.decode_threads, decoder=self.decoder,
            layout=layout, decode_device=self.decode_device,
        )
        return frames if self.clip.modality == "rgb" else flow.clip_flow(frames, self.clip.flow_method)
