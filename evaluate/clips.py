"""Clips of labeled videos (HMDB-51 / UCF-101 records) for finetuning and for testing.

Training, one clip per video per epoch (pytorchvideo-style sample dicts):
    {"video": (T, crop, crop, 3) uint8 or (3, T, crop, crop) float32, "flipped": bool, "label": int,
     "video_index": int, "clip_start": seconds}
a random start anywhere in the video, a random crop of the frames resized to `short_side`, a random
left-right flip (unless `flip=False`, for classes a mirror changes: pan left / pan right). The init's
normalisation (evaluate.initialization: the video mean/std of stage two for distilled and scratch
trunks, the 2D model's own for inflated ones) is applied where `normalisation` says: with None the clips
stay uint8 RGB bytes as decoded, (T, H, W, 3), a view of the crop that collating copies once, which
finetuning mirrors where "flipped" says and normalises on the device (pipeline.clips.views.video_to_device); with
a Normalisation (the default: the video mean/std) they come out float32 (3, T, H, W), mirrored and normalised
here, ready for a network. Randomness is a function of (seed, epoch, index) only, so any number of DataLoader
workers gives the same clips; a key is an (index, epoch) pair as pipeline.clips.sampler.ResumableSampler yields
them, so persistent workers draw each epoch's clips (a plain index takes the epoch of `set_epoch`).

Testing, one sample per video holding all of its views (uint8 or float32, as for training; uint8 views are
THWC in memory, a channels_last_3d view of one copy of the crops):
    {"video": (clips x crops, 3, T, crop, crop), "label": int, "video_index": int, "failed": str | None}
`clips_per_video` starts spaced uniformly from the first frame to the last possible start; each clip is
centre-cropped, or with `three_crop` cropped at the start, centre and end of the long side (left/centre/
right for landscape video, top/centre/bottom for portrait). All of a video's frames come from one decode.
A test video that fails to decode comes back with zero views and `failed` set to the reason.
With `temporal_ablations` the sample also holds "ablations": {name: views of the same shape}, the same
views reordered in time (evaluate.ablations), made from the same decoded frames.

A clip running past the end of a short video repeats its last frame (as `pipeline.video.read_clip` does).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from distinit.evaluate.ablations import ablated_views
from distinit.pipeline.clips.normalisation import VIDEO_NORMALISATION, Normalisation, rgb_to_tensor
from distinit.pipeline.clips.sampler import sample_key
from distinit.pipeline.clips.spec import ClipSpec
from distinit.pipeline.clips.views import FLIP_PROBABILITY, crop_box, crop_frames, flip_frames, rgb_clip_tensor
from distinit.pipeline.datasets import VideoRecord
from distinit.pipeline.errors import DistinitError, VideoError
from distinit.pipeline.video.skipping import DecodeFailures, sample_skipping_failures
from distinit.pipeline.video import read_clip, read_frames
from distinit.pipeline.video.backends import resolve_decoder
from distinit.pipeline.video.layout_record import layout_from_record, layout_record
from distinit.pipeline.video.probe import FrameLayout, probe_layout

logger = logging.getLogger(__name__)


def last_start(frame_count: int, span_frames: int) -> int:
    """The latest first frame whose clip still ends inside the video (0 for a video shorter than a clip)."""
    return max(0, frame_count - 1 - span_frames)


def clip_starts(frame_count: int, span_frames: int, count: int) -> list[int]:
    """`count` first frames spaced uniformly over [0, last_start]; one clip sits in the middle."""
    latest = last_start(frame_count, span_frames)
    if count == 1:
        return [latest // 2]
    return [int(round(value)) for value in np.linspace(0, latest, count)]


def crop_offsets(height: int, width: int, crop: int, three_crop: bool) -> list[tuple[int, int]]:
    """(top, left) of each test crop: the centre, or start / centre / end along the long side."""
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} does not fit a {width}x{height} frame")
    top, left = (height - crop) // 2, (width - crop) // 2
    if not three_crop:
        return [(top, left)]
    if width >= height:
        return [(top, 0), (top, left), (top, width - crop)]
    return [(0, left), (top, left), (height - crop, left)]


class VideoLayouts:
    """Each video's file and layout, looked up once per process: its prepared copy with the layout `prepare`
    stored (`prepared`: pipeline.prepared.prepared_videos of the labeled dataset), else the original, probed."""

    def __init__(self, prepared: dict[str, tuple[Path, dict[str, Any]]] | None = None):
        self.prepared = prepared
        self.records: dict[str, dict[str, Any]] = {}  # probed layouts, as compact records (rebuilt per read)

    def get(self, record: VideoRecord) -> tuple[Path, FrameLayout]:
        if self.prepared is None:
            path, stored = Path(record.path), self.records.get(record.id)
        elif record.id in self.prepared:
            path, stored = self.prepared[record.id]
            stored = self.records.get(record.id, stored)
        else:
            raise VideoError(record.path, "has no prepared copy (prepare skipped it: its manifest says why)")
        layout = layout_from_record(path, stored)
        if layout is None:
            layout = probe_layout(path)
            if layout.info.frame_count < 1 or layout.info.fps <= 0:
                raise VideoError(path, "no frames or no frame rate")
            self.records[record.id] = layout_record(layout)
        return path, layout


def clip_views(clips: np.ndarray, offsets: list[tuple[int, int]], crop: int,
               normalisation: Normalisation | None) -> torch.Tensor:
    """(clips, T, H, W, 3) uint8 -> each clip's crop at each (top, left) of `offsets`, as (clips x crops, 3, T, crop,
    crop): uint8 without a normalisation (one copy of the crops, a channels_last_3d view of it), else float32
    normalised with it."""
    views = [crop_frames(clip, top, left, crop) for clip in clips for top, left in offsets]
    if normalisation is None:
        return torch.from_numpy(np.stack(views)).permute(0, 4, 1, 2, 3)
    return torch.stack([rgb_to_tensor(view, normalisation) for view in views])


def _check_records(records: Sequence[VideoRecord], what: str) -> list[VideoRecord]:
    records = list(records)
    if not records:
        raise DistinitError(f"no videos to make {what} clips from")
    unlabeled = [record for record in records if record.label is None]
    if unlabeled:
        raise DistinitError(f"{unlabeled[0].path}: video has no label; eval needs a labeled dataset (hmdb51, ucf101)")
    return records


class TrainingClips(torch.utils.data.Dataset):
    """One random clip of each video per epoch (see the module docstring)."""

    def __init__(self, records: Sequence[VideoRecord], clip: ClipSpec, *, seed: int, flip: bool = True,
                 max_decode_failures: int = 50, normalisation: Normalisation | None = VIDEO_NORMALISATION,
                 prepared: dict[str, tuple[Path, dict[str, Any]]] | None = None, decoder: str = "auto",
                 decode_device: str = "cpu"):
        self.records = _check_records(records, "training")
        self.clip, self.seed, self.epoch, self.flip = clip, int(seed), 0, bool(flip)
        self.normalisation = normalisation
        self.max_decode_failures = int(max_decode_failures)
        self.videos = VideoLayouts(prepared)
        self.decoder, self.decode_device = decoder, decode_device
        resolve_decoder(decoder, decode_device, resizing=True)  # not installed: one line here, not in a worker
        self.failures = DecodeFailures(self.max_decode_failures, (
            f"{{path}}: more than {self.max_decode_failures} training videos failed to decode, the last with "
            "{reason}; check the videos or raise --set max_decode_failures=N"))

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """The epoch of plain integer keys (the sampler's (index, epoch) keys carry their own)."""
        self.epoch = int(epoch)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = sample_key(key, self.epoch)
        return sample_skipping_failures(
            index, len(self), video_of=lambda candidate: candidate,
            describe=lambda candidate: f"training video {self.records[candidate].path}",
            sample=lambda candidate: self._sample(candidate, epoch),
            failures=self.failures,
            none_decodes=f"none of the {len(self)} training videos decodes (e.g. {self.records[0].path}); check --root",
        )

    def _sample(self, index: int, epoch: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, epoch, index])
        record = self.records[index]
        path, layout = self.videos.get(record)
        fps, frame_count = layout.info.fps, layout.info.frame_count
        start = int(rng.integers(last_start(frame_count, self.clip.span_frames) + 1))
        frames = read_clip(path, start / fps, self.clip.frames, stride=self.clip.stride, short_side=self.clip.short_side,
                           threads=1, decoder=self.decoder, layout=layout, decode_device=self.decode_device)  # (T, H, W, 3)
        top, left = crop_box(frames.shape[1], frames.shape[2], self.clip.crop, rng)
        frames = crop_frames(frames, top, left, self.clip.crop)
        # Drawn either way: flip=False keeps the crops.
        flipped = bool(rng.random() < FLIP_PROBABILITY and self.flip)
        if self.normalisation is None:
            video = rgb_clip_tensor(frames)  # (T, H, W, 3), a view; mirrored on the device when flipped
        else:
            video = rgb_to_tensor(flip_frames(frames) if flipped else frames, self.normalisation)
        return {"video": video, "flipped": flipped, "label": int(record.label), "video_index": index,
                "clip_start": start / fps}


class EvaluationClips(torch.utils.data.Dataset):
    """Every view of one test video per sample (see the module docstring); use with batch_size=None."""

    def __init__(self, records: Sequence[VideoRecord], clip: ClipSpec, *, clips_per_video: int, three_crop: bool,
                 normalisation: Normalisation | None = VIDEO_NORMALISATION, temporal_ablations: bool = False,
                 prepared: dict[str, tuple[Path, dict[str, Any]]] | None = None, decoder: str = "auto",
                 decode_device: str = "cpu"):
        if clips_per_video < 1:
            raise DistinitError(f"test clips per video must be >= 1, got {clips_per_video}")
        self.records = _check_records(records, "test")
        self.clip, self.clips_per_video, self.three_crop = clip, int(clips_per_video), bool(three_crop)
        self.normalisation, self.temporal_ablations = normalisation, bool(temporal_ablations)
        self.videos = VideoLayouts(prepared)
        self.decoder, self.decode_device = decoder, decode_device
        resolve_decoder(decoder, decode_device, resizing=True)  # not installed: one line here, not in a worker

    @property
    def crops_per_clip(self) -> int:
        return 3 if self.three_crop else 1

    @property
    def views_per_video(self) -> int:
        return self.clips_per_video * self.crops_per_clip

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        sample = {"label": int(record.label), "video_index": index, "failed": None}
        try:
            frames = self._frames(record)  # (clips, T, H, W, 3)
        except VideoError as error:
            logger.warning("test video %s does not decode: %s", record.path, error.reason)
            dtype = torch.uint8 if self.normalisation is None else torch.float32
            views = torch.zeros((0, 3, self.clip.frames, self.clip.crop, self.clip.crop), dtype=dtype)
            sample["failed"] = error.reason
        else:
            offsets = crop_offsets(frames.shape[2], frames.shape[3], self.clip.crop, self.three_crop)
            views = clip_views(frames, offsets, self.clip.crop, self.normalisation)  # (clips x crops, 3, T, crop, crop)
        sample["video"] = views
        if self.temporal_ablations:
            sample["ablations"] = ablated_views(views, index, self.crops_per_clip)
        return sample

    def _frames(self, record: VideoRecord) -> np.ndarray:
        path, layout = self.videos.get(record)
        fps, frame_count = layout.info.fps, layout.info.frame_count
        starts = clip_starts(frame_count, self.clip.span_frames, self.clips_per_video)
        indices = [min(start + step * self.clip.stride, frame_count - 1)
                   for start in starts for step in range(self.clip.frames)]
        frames = read_frames(path, [frame / fps for frame in indices], short_side=self.clip.short_side, threads=1,
                             decoder=self.decoder, layout=layout, decode_device=self.decode_device)
        return frames.reshape(len(starts), self.clip.frames, *frames.shape[1:])
