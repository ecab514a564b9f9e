"""3D students: a registered video trunk plus one head per teacher output.

    heads = head_specs_from_teachers(TargetStore(...).teachers)
    student = create_student("r2plus1d_18", heads, width="full", in_channels=3)
    outputs = student(clips)  # clips (B, C, T, H, W) -> {"<teacher>/<output>": logits}

Registered names follow torchvision.models.video (`r2plus1d_18` default, `r3d_18`, `mc3_18`, `s3d`), plus
inflated 2D ImageNet networks: `resnet18_3d` (ResNet-18 in 3D, distill/trunk_resnet18_3d.py, the network
`inflated:resnet18` fits exactly) and `efficientnet_lite0_3d`.
Weights start random (nothing is ever downloaded). `in_channels=2` gives the optical-flow student.
A checkpoint stores `student.architecture()`; `DistillStudent.from_architecture` rebuilds the model.
The architecture records the input normalisation the weights expect (`input_normalisation`, mean/std
of [0, 1] RGB): the video mean/std the distilled students are trained with, an inflated 2D network's
own ImageNet normalisation, None for an optical-flow trunk (flow has its own scaling, distill.flow).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from distinit.distill.heads import HeadSpec, build_head, head_module_name
from distinit.distill.trunks import WIDTHS, mc3_18_trunk, r2plus1d_18_trunk, r3d_18_trunk, s3d_trunk
from distinit.pipeline.clips.normalisation import VIDEO_NORMALISATION, Normalisation
from distinit.pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

TrunkBuilder = Callable[[str, int], nn.Module]  # (width, in_channels) -> trunk returning TrunkOutput


@dataclass(frozen=True)
class StudentEntry:
    build_trunk: TrunkBuilder
    torchvision_classifier: str  # the torchvision model's classifier prefix, absent from the trunk: "fc" / "classifier"
    min_frames: int = 1  # shortest clip the trunk accepts
    min_size: int = 1  # smallest crop (pixels) the trunk accepts


STUDENTS: dict[str, StudentEntry] = {}


def register_student(
    name: str, *, torchvision_classifier: str = "fc", min_frames: int = 1, min_size: int = 1
) -> Callable[[TrunkBuilder], TrunkBuilder]:
    """Decorator registering a trunk builder under `name` (timm's register_model)."""

    def register(build_trunk: TrunkBuilder) -> TrunkBuilder:
        if name in STUDENTS and STUDENTS[name].build_trunk is not build_trunk:
            raise ValueError(f"student name {name!r} is already registered")
        STUDENTS[name] = StudentEntry(build_trunk, torchvision_classifier, min_frames, min_size)
        return build_trunk

    return register


def list_students() -> list[str]:
    return sorted(STUDENTS)


def student_entry(name: str) -> StudentEntry:
    if name not in STUDENTS:
        raise ConfigError(f"unknown student {name!r}; known students: {', '.join(list_students())}")
    return STUDENTS[name]


register_student("r2plus1d_18")(r2plus1d_18_trunk)
register_student("r3d_18")(r3d_18_trunk)
register_student("mc3_18")(mc3_18_trunk)
register_student("s3d", torchvision_classifier="classifier", min_frames=5, min_size=17)(s3d_trunk)


class DistillStudent(nn.Module):
    """A trunk plus named heads. `heads` is the list of HeadSpecs; the modules live in `head_modules`."""

    def __init__(
        self, name: str, trunk: nn.Module, heads: Sequence[HeadSpec], *, width: str, in_channels: int, dropout: float,
        input_normalisation: Normalisation | None = None,
    ):
        super().__init__()
        self.name = name
        self.width = width
        self.in_channels = in_channels
        self.dropout = dropout
        self.input_normalisation = input_normalisation
        self.trunk = trunk
        self.feature_dim = int(trunk.feature_dim)
        self.heads = list(heads)
        self.head_modules = nn.ModuleDict()
        for spec in self.heads:
            module_name = head_module_name(spec.key)
            if module_name in self.head_modules:
                raise ConfigError(f"student head {spec.key!r} appears twice (or clashes with another head's name)")
            self.head_modules[module_name] = build_head(spec, self.feature_dim, dropout)

    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        """clips (B, C, T, H, W) -> {head key: logits}; heatmap heads give (B, K, G, G) logits."""
        self._check_clips(clips)
        trunk_output = self.trunk(clips)
        predictions = {}
        for spec in self.heads:
            head = self.head_modules[head_module_name(spec.key)]
            head_input = trunk_output.feature_map if spec.kind == "heatmaps" else trunk_output.pooled
            predictions[spec.key] = head(head_input)
        return predictions

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features (B, feature_dim) — what stage three finetunes from."""
        self._check_clips(clips)
        return self.trunk(clips).pooled

    def architecture(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (JSON-ready); saved in checkpoints."""
        return {
            "name": self.name,
            "width": self.width,
            "in_channels": self.in_channels,
            "heads": [spec.to_dict() for spec in self.heads],
            "dropout": self.dropout,
            "input_normalisation": None if self.input_normalisation is None else self.input_normalisation.to_dict(),
        }

    @classmethod
    def from_architecture(cls, architecture: dict[str, Any]) -> "DistillStudent":
        """Rebuild from `architecture()`; one written before `input_normalisation` was recorded gets the default
        (the video mean/std every student was then trained with)."""
        expected = {"name", "width", "in_channels", "heads", "dropout"}
        if set(architecture) - {"input_normalisation"} != expected:
            raise ConfigError(
                f"student architecture has keys {sorted(architecture)}; expected {sorted(expected)} "
                "and input_normalisation (a checkpoint from another version?)"
            )
        return create_student(
            architecture["name"],
            [HeadSpec(**head) for head in architecture["heads"]],
            width=architecture["width"],
            in_channels=int(architecture["in_channels"]),
            dropout=float(architecture["dropout"]),
            input_normalisation=recorded_normalisation(architecture),
        )

    def trunk_state_dict(self) -> dict[str, torch.Tensor]:
        """The trunk's weights under torchvision's key names (no classifier); see distill/export.py."""
        return dict(self.trunk.state_dict())

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The heads' weights, keyed `<module name>.<parameter>` as in `head_modules`."""
        return dict(self.head_modules.state_dict())

    def check_clip_shape(self, frames: int, size: int) -> None:
        """Refuse clip shapes the trunk cannot take (S3D needs >= 5 frames of >= 17 pixels)."""
        entry = student_entry(self.name)
        if frames < entry.min_frames or size < entry.min_size:
            raise ConfigError(
                f"student {self.name} needs clips of at least {entry.min_frames} frames and {entry.min_size} pixels; "
                f"got {frames} frames of {size} pixels (raise --frames / --crop)"
            )

    def _check_clips(self, clips: torch.Tensor) -> None:
        if clips.dim() != 5 or clips.shape[1] != self.in_channels:
            raise ValueError(
                f"student {self.name} expects clips (B, {self.in_channels}, T, H, W); got shape {tuple(clips.shape)}"
            )


def recorded_normalisation(architecture: dict[str, Any]) -> Normalisation | None:
    """The input normalisation an `architecture()` dict records; for RGB the video mean/std when it predates the
    field (every student was trained on it then)."""
    if "input_normalisation" not in architecture:
        return VIDEO_NORMALISATION if int(architecture.get("in_channels", 3)) == 3 else None
    recorded = architecture["input_normalisation"]
    return None if recorded is None else Normalisation.from_dict(recorded)


def create_student(
    name: str = "r2plus1d_18",
    heads: Sequence[HeadSpec] = (),
    *,
    width: str = "full",
    in_channels: int = 3,
    dropout: float = 0.0,
    input_normalisation: Normalisation | None = None,
) -> DistillStudent:
    """Build the registered student `name` with one head per spec (random weights, nothing downloaded).

    `input_normalisation` defaults to the video mean/std for RGB (3 channels), None otherwise."""
    entry = student_entry(name)
    if width not in WIDTHS:
        raise ConfigError(f"student width {width!r} is unknown; use one of {', '.join(WIDTHS)}")
    if int(in_channels) < 1:
        raise ConfigError(f"student in_channels must be >= 1 (3 for RGB, 2 for optical flow); got {in_channels}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"student dropout must be in [0, 1); got {dropout}")
    if input_normalisation is None and int(in_channels) == 3:
        input_normalisation = VIDEO_NORMALISATION
    elif input_normalisation is not None and int(in_channels) != 3:
        raise ConfigError(f"student input_normalisation is for RGB input; a {in_channels}-channel student takes none")
    trunk = entry.build_trunk(width, int(in_channels))
    student = DistillStudent(name, trunk, heads, width=width, in_channels=int(in_channels), dropout=float(dropout),
                             input_normalisation=input_normalisation)
    parameter_count = sum(parameter.numel() for parameter in student.parameters())
    logger.info(
        "student %s (%s, %d input channels): %d heads, %.2fM parameters",
        name, width, in_channels, len(student.heads), parameter_count / 1e6,
    )
    return student

import distinit.distill.trunk_efficientnet3d  # noqa: E402,F401  (registers the efficientnet_lite0_3d student)
import distinit.distill.trunk_resnet18_3d  # noqa: E402,F401  (registers the resnet18_3d student)
