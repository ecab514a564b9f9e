"""Run every teacher over a group of decoded videos and lay the outputs out as shard rows."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from distinit.extract.decode_worker import DecodedVideo
from distinit.pipeline.shards import output_key
from distinit.pipeline.shards.format import VIEW_BOX_DTYPE, VIEW_BOX_SHAPE, view_box_key


def teach(teachers: Sequence[Any], videos: Sequence[DecodedVideo]) -> dict[str, Any]:
    """Rows for `videos` (in order, frames in time order): video_id, t_seconds, frame_index,
    `<teacher>/<output>` arrays and `<teacher>/view_box`, the part of each frame the teacher saw (its
    `view_box` of the frame size it was given: decoded frames cover the whole video frame). Frames of equal
    size are batched together across videos; videos of different sizes go through the teachers in separate
    calls (a teacher call takes one frame size)."""
    counts = [len(video.frames) for video in videos]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    rows: dict[str, Any] = {
        "video_id": [video.video_id for video, count in zip(videos, counts) for _ in range(count)],
        "t_seconds": np.concatenate([video.t_seconds for video in videos]),
        "frame_index": np.concatenate([video.frame_index for video in videos]),
    }
    groups: dict[tuple[int, ...], list[int]] = {}
    for position, video in enumerate(videos):
        groups.setdefault(video.frames.shape[1:], []).append(position)
    for teacher in teachers:
        columns = {
            spec.name: np.zeros((total, *spec.shape), dtype=spec.returned_dtype()) for spec in teacher.outputs
        }
        boxes = np.zeros((total, *VIEW_BOX_SHAPE), dtype=VIEW_BOX_DTYPE)
        for (height, width, _), positions in groups.items():
            frames = np.concatenate([videos[position].frames for position in positions])  # (N, H, W, 3)
            outputs = teacher(frames)
            box = teacher.view_box(height, width)
            start = 0
            for position in positions:
                count = counts[position]
                for name, values in outputs.items():
                    columns[name][offsets[position] : offsets[position] + count] = values[start : start + count]
                boxes[offsets[position] : offsets[position] + count] = box
                start += count
        for name, values in columns.items():
            rows[output_key(teacher.name, name)] = values
        rows[view_box_key(teacher.name)] = boxes
    return rows
