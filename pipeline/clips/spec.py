"""What a network sees of a video: a clip of `frames` frames every `stride`-th, resized and cropped (`ClipSpec`), the
same shape for distillation and finetuning. Where a clip starts is each stage's own: stage two places it over
teacher frames (distill.windows), stage three anywhere in a labeled video (evaluate.clips)."""

from __future__ import annotations

from dataclasses import dataclass

from distinit.pipeline.errors import ConfigError

MODALITIES = ("rgb", "flow")
FLOW_METHODS = ("farneback", "tvl1")


@dataclass(frozen=True)
class ClipSpec:
    """What the student sees: `frames` frames every `stride`-th, resized so the short side is
    `short_side`, cropped to `crop` x `crop`; RGB, or optical flow computed from frames + 1 RGB frames."""

    frames: int = 8
    stride: int = 2
    short_side: int = 128
    crop: int = 112
    modality: str = "rgb"
    flow_method: str = "farneback"

    def __post_init__(self) -> None:
        for name in ("frames", "stride", "short_side", "crop"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"clip {name} must be a positive integer, got {value!r}")
        if self.crop > self.short_side:
            raise ConfigError(f"clip crop {self.crop} is larger than short_side {self.short_side}; lower --crop or raise --short-side")
        if self.modality not in MODALITIES:
            raise ConfigError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.flow_method not in FLOW_METHODS:
            raise ConfigError(f"flow method must be one of {FLOW_METHODS}, got {self.flow_method!r}")

    @property
    def decoded_frames(self) -> int:
        """RGB frames decoded per clip: T frames of flow need T + 1 images."""
        return self.frames + 1 if self.modality == "flow" else self.frames

    @property
    def span_frames(self) -> int:
        """Video frames from the clip's first decoded frame to its last."""
        return (self.decoded_frames - 1) * self.stride

    @property
    def start_grid(self) -> int:
        """Starts are multiples of this: the stride, or 1 for a one-frame clip (whose stride means nothing)."""
        return self.stride if self.decoded_frames > 1 else 1
