"""The stage-one config: which videos, which teachers, how frames are sampled, how the work is split."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable

from distinit.pipeline.datasets.selection import check_labeled_selection, normalise_splits
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.shards.format import ROW_COLUMNS, VIDEO_LAYOUTS

# Bump when a change to stage one's code changes the targets it writes (it is part of the stage key).
# 2: keypoints stored as frame-relative coordinates, not heatmaps. 3: videos cut short (holding clearly less
# than their header declares) are skipped, and each video's probed layout is stored (layouts.jsonl). 4: teachers
# are named instances of a kind; keypoint outputs carry their flip index; embedding outputs.
# 5: the region of the frame each teacher saw (view boxes) and each video's content hash (sha256) are stored.
CODE_VERSION = "extract-6"  # 6: shard format 5 (teacher outputs uncompressed)


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    data: str = "demo"
    root: str = "data/demo"
    splits_dir: str | None = None
    annotations: str | None = None
    # Each entry KIND (the instance named KIND) or INSTANCE=KIND: `[r18=imagenet-torchvision, r50=imagenet-torchvision]`
    # runs two torchvision classifiers, each with its own HDF5 group, student head and loss weight.
    teachers: tuple[str, ...] = ("imagenet-efficientnet-lite0",)
    # {instance name: {option: value}}; weights files go here too as {"weights": "path.pth"}.
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
    # keeps the videos in no test list (the 3-split protocol). None: every listed video, which hmdb51 and ucf101
    # refuse unless allow_labeled_test_videos (pipeline.datasets.selection.check_labeled_selection).
    split: int | tuple[int, ...] | None = None
    split_roles: tuple[str, ...] = ("train",)
    # true: extract every video of hmdb51/ucf101, test videos included (eval then refuses the student unless
    # allow_test_overlap). Changes nothing else; like every option, it enters the stage key.
    allow_labeled_test_videos: bool = False

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
        check_labeled_selection(self.data, self.split, self.allow_labeled_test_videos)
        instances = parse_teacher_entries(self.teachers)
        # One spelling per instance (`lite0=lite0` is `lite0`), so configs that mean the same read the same.
        object.__setattr__(self, "teachers", tuple(instance.entry for instance in instances))
        check_teacher_options(self.teacher_options, [instance.name for instance in instances])

    @property
    def teacher_instances(self) -> tuple["TeacherInstance", ...]:
        return parse_teacher_entries(self.teachers)


# An instance name is an HDF5 group, the first half of a `<teacher>/<output>` key and a student head's name.
INSTANCE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
INSTANCE_EXAMPLE = "r18=imagenet-torchvision,r50=imagenet-torchvision"


@dataclasses.dataclass(frozen=True)
class TeacherInstance:
    name: str  # what the shards, heads and loss weights key on
    kind: str  # the registered teacher (`distinit teachers`)

    @property
    def entry(self) -> str:
        return self.kind if self.name == self.kind else f"{self.name}={self.kind}"


def parse_teacher_entries(entries: Iterable[str]) -> tuple[TeacherInstance, ...]:
    """`teachers` entries (KIND or INSTANCE=KIND) -> their instances; one-line ConfigError on a bad name, a name
    given twice, or two unnamed entries of one kind. Kinds are checked against the registry when teachers are
    built (extract.run.prepare): importing every teacher here would cost each config (and `make`) seconds."""
    if isinstance(entries, str) or not all(isinstance(entry, str) for entry in entries):
        raise ConfigError(f"option teachers must be a list of KIND or INSTANCE=KIND entries; got {entries!r}")
    instances = []
    for entry in entries:
        name, separator, kind = entry.strip().rpartition("=")
        instance = TeacherInstance(name=(name if separator else kind).strip(), kind=kind.strip())
        for text, what in ((instance.name, "instance name"), (instance.kind, "kind")):
            if not INSTANCE_NAME_PATTERN.fullmatch(text):
                raise ConfigError(
                    f"teachers entry {entry!r}: {what} {text!r} must start with a letter or digit and hold only "
                    f"letters, digits, '_', '.' and '-'; write KIND or INSTANCE=KIND (e.g. {INSTANCE_EXAMPLE})"
                )
        if instance.name in (*ROW_COLUMNS, VIDEO_LAYOUTS):
            raise ConfigError(
                f"teachers entry {entry!r}: {instance.name!r} names a shard's own dataset; choose another name"
            )
        instances.append(instance)
    if not instances:
        raise ConfigError("option teachers is empty; name at least one (see `distinit teachers`)")
    _check_names_distinct(instances)
    return tuple(instances)


def _check_names_distinct(instances: list[TeacherInstance]) -> None:
    seen: dict[str, TeacherInstance] = {}
    for instance in instances:
        # Stage two names a head after its key with every character outside [A-Za-z0-9_] made '_'.
        head_name = re.sub(r"[^0-9A-Za-z_]", "_", instance.name)
        earlier = seen.get(head_name)
        if earlier is not None and earlier.name == instance.name == instance.kind == earlier.kind:
            raise ConfigError(
                f"teachers lists {instance.kind} twice; name each instance, e.g. "
                f"{instance.kind}-a={instance.kind},{instance.kind}-b={instance.kind}"
            )
        if earlier is not None and earlier.name == instance.name:
            raise ConfigError(f"teachers name the instance {instance.name!r} twice; give each instance its own name")
        if earlier is not None:
            raise ConfigError(
                f"teacher instances {earlier.name!r} and {instance.name!r} differ only in '_', '.' or '-', so their "
                f"student heads would clash; rename one"
            )
        seen[head_name] = instance


def check_teacher_options(teacher_options: Any, instance_names: list[str]) -> None:
    """teacher_options is keyed by instance name (a bare KIND entry's instance is named KIND)."""
    if not isinstance(teacher_options, dict):
        raise ConfigError(
            f"option teacher_options must map an instance name to its options; got {teacher_options!r}"
        )
    unknown = sorted(set(teacher_options) - set(instance_names))
    if unknown:
        raise ConfigError(
            f"teacher_options name {', '.join(map(str, unknown))}, not a teacher instance of this run; "
            f"the instances are: {', '.join(instance_names)}"
        )
    for name, options in teacher_options.items():
        if not isinstance(options, dict):
            raise ConfigError(f"teacher_options for {name}: expected a mapping of option: value, got {options!r}")


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
