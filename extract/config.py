"""The stage-one config: which videos, which teachers, how frames are sampled, how the work is split."""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.datasets.selection import normalise_splits
from pipeline.errors import ConfigError

# Bump when a change to stage one's code changes the targets it writes (it is part of the stage key).
# 2: keypoints stored as frame-relative coordinates, not heatmaps. 3: videos cut short (holding clearly less
# than their header declares) are skipped, and each video's probed layout is stored (layouts.jsonl). 4: teachers
# are named instances of a kind; keypoint outputs carry their flip index; embedding outputs.
CODE_VERSION = "extract-4"


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    data: str = "demo"
    root: str = "data/demo"
    splits_dir: str | None = None
    annotations: str | None = None
    teachers: tuple[str, ...] = ("imagenet-efficientnet-lite0",)
    # {teacher name: {option: value}}; weights files go here too as {"weights": "path.pth"}.
    teacher_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    frames_per_second: float = 2.0
    max_frames_per_video: int = 64
    shard_count: int = 16
    # Frames per teacher call; None: 8 on CPU (measured fastest for EfficientNet-Lite0 on 2 cores: 94 frames/s
    # at 8 against 36 at 32 — cache effects), 64 on CUDA. Speed only: the stage key does not include it.
    batch_size: int | None = None
    workers: int = 2
    device: str = "auto"
    out: str = "targets"
    max_failure_rate: float = 0.05
    decode_timeout_seconds: float = 120.0
    limit: int | None = None
    # Labeled datasets (hmdb51, ucf101, kinetics): extract only the videos whose role is one of split_roles in
    # every split listed here, so pretraining never sees the videos it is scored on. `split: 1` keeps split 1's
    # train list (right for an evaluation on split 1 alone); `split: [1, 2, 3]` with split_roles [train, unused]
    # keeps the videos in no test list (the 3-split protocol). None: every listed video.
    split: int | tuple[int, ...] | None = None
    split_roles: tuple[str, ...] = ("train",)

    def __post_init__(self):
        positive = {
            "frames_per_second": self.frames_per_second, "max_frames_per_video": self.max_frames_per_video,
            "shard_count": self.shard_count, "batch_size": 1 if self.batch_size is None else self.batch_size,
            "decode_timeout_seconds": self.decode_timeout_seconds,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"option {name} must be > 0, got {value}")
        if self.workers < 0:
            raise ConfigError(f"option workers must be >= 0 (0 decodes in the main process), got {self.workers}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ConfigError(f"option max_failure_rate must be in [0, 1], got {self.max_failure_rate}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"option limit must be >= 1, got {self.limit}")
        normalise_splits(self.split)  # refuses anything but null, a split number >= 1 or a list of them
        if not self.teachers:
            raise ConfigError("option teachers is empty; name at least one (see `distinit teachers`)")
        unknown = sorted(set(self.teacher_options) - set(self.teachers))
        if unknown:
            raise ConfigError(f"teacher_options name teachers not in teachers: {', '.join(unknown)}")


def parse_shard_part(text: str | None) -> tuple[int, int]:
    """`--shard i/N` -> (i, N): this process writes the shards whose index is i modulo N."""
    if text is None:
        return 0, 1
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError(f"--shard {text!r} is not of the form i/N (e.g. 0/4)") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text}: need 0 <= i < N (e.g. 0/{max(count, 1)} ... {max(count, 1) - 1}/{max(count, 1)})")
    return index, count
