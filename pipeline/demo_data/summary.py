"""What a demo-data build made, as human-readable lines for the CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from distinit.pipeline.demo_data import layout


@dataclasses.dataclass(frozen=True)
class DemoDataSummary:
    out: Path
    up_to_date: bool  # True when an existing build already matched and nothing was written
    seconds: float  # wall time of this call
    record: dict[str, Any]  # the numbers `build.generate` returned (also kept in the .complete stamp)

    @classmethod
    def from_record(cls, out: Path, record: dict[str, Any], up_to_date: bool, seconds: float) -> DemoDataSummary:
        return cls(out=Path(out), up_to_date=up_to_date, seconds=seconds, record=dict(record))

    @property
    def pool_clips(self) -> int:
        return sum(self.record["pool_clips_from_videos"].values()) + self.record["pool_clips_from_photos"]

    @property
    def action_videos(self) -> int:
        return len(self.record["action_classes"]) * self.record["videos_per_class"]

    def lines(self) -> list[str]:
        record, out = self.record, self.out
        if self.up_to_date:
            head = f"demo data in {out} is already complete for these options; nothing rebuilt ({self.seconds:.1f} s)"
        else:
            head = f"demo data written to {out} in {self.seconds:.1f} s"
        from_videos = ", ".join(f"{name} {count}" for name, count in record["pool_clips_from_videos"].items())
        splits = record["split_counts"]
        classes = record["action_classes"]
        return [
            head,
            f"pool: {self.pool_clips} unlabeled H.264 clips in {out / layout.POOL_FOLDER}, "
            f"{_megabytes(record['pool_bytes'])}",
            f"  {record['pool_seconds']:.1f} s of video at {record['fps']} fps, keyframe every {record['gop']} "
            f"frames, frame sizes {record['pool_frame_sizes']}",
            f"  cut from real clips: {from_videos or 'none'}; camera motion over photos: "
            f"{record['pool_clips_from_photos']}",
            f"actions (HMDB-51 layout): {len(classes)} classes x {record['videos_per_class']} videos = "
            f"{self.action_videos} .avi in {out / layout.ACTION_VIDEOS_FOLDER}, {_megabytes(record['action_bytes'])}",
            f"  {record['action_clip_seconds']:g} s each, {record['action_frame_size']} at {record['action_fps']} fps; "
            f"classes: {', '.join(classes)}",
            f"  splits 1-3 in {out / layout.SPLITS_FOLDER}: per class {splits['train']} train, "
            f"{splits['test']} test, {splits['unused']} unused",
            f"  rendered over photos held out of the pool: {', '.join(record['held_out_photos'])}",
        ]


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
